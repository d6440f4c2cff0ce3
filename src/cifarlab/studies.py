"""The whole study in one call: train each experiment, draw its figures, then write the report.

Run folders go to `out_dir/<experiment>/` and the report to `out_dir/`. Rerunning the same
command after an interruption reuses finished runs as they are and resumes the one that was
training from its last finished epoch.

    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifarlab import config as configs
from cifarlab import data as datasets
from cifarlab import diagnosis, figures, report, training
from cifarlab.config import Config
from cifarlab.data import Dataset
from cifarlab.errors import UserError

DEFAULT_EXPERIMENTS = ("baseline", "augmented", "batchnorm")
PROJECTIONS = ("pca", "tsne")


def run(
    experiments: list[str] | tuple[str, ...] = DEFAULT_EXPERIMENTS,
    out_dir: str | Path = "runs",
    data: Dataset | None = None,
    path: str | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    precision: str | None = None,
    val_fraction: float | None = None,
    projection: str = "pca",
) -> dict:
    """Train (or reuse) each experiment under `out_dir`, then build the report; return its paths.

    `data` is a loaded dataset (its split settings then apply); without it the dataset is read
    from `path` (None: `$CIFARLAB_DATA`, the cache, or the download).
    """
    if projection not in PROJECTIONS:
        raise UserError(f"Unknown projection '{projection}'; choose {' or '.join(PROJECTIONS)}.")
    settings = data.split_settings if data is not None else {"seed": seed}
    if data is None and val_fraction is not None:
        settings["val_fraction"] = val_fraction
    study_configs = experiment_configs(experiments, epochs, precision, **settings)
    # Every experiment shares the dataset, split and seed, so the images are read once.
    dataset = data if data is not None else datasets.load_for(study_configs[0], path, quiet=quiet)
    out_dir = Path(out_dir)
    run_dirs = []
    for config in study_configs:
        run_dir = out_dir / config.name
        trained = train_or_reuse(config, run_dir, dataset, quiet)
        record_diagnosis(run_dir, dataset.num_classes)
        if trained or figures.missing(run_dir):
            figures.write(run_dir, dataset, projection)
        run_dirs.append(run_dir)
    return report.build(run_dirs, out_dir)


def experiment_configs(experiments, epochs, precision, **settings) -> list[Config]:
    """The named experiments with the study's shared overrides; names must be distinct."""
    names = [configs.experiment(name.strip()).name for name in experiments if name.strip()]
    if not names:
        raise UserError("Name at least one experiment, e.g. --experiments baseline,batchnorm.")
    if len(set(names)) != len(names):
        raise UserError(f"Each experiment may appear once in a study, not {', '.join(names)}.")
    return [
        configs.override(configs.experiment(name), epochs=epochs, precision=precision, **settings)
        for name in names
    ]


def is_finished(config: Config, run_dir: Path) -> bool:
    """True if `run_dir` holds an evaluated run of exactly `config`."""
    config_path = run_dir / "config.json"
    return (
        (run_dir / "metrics.json").is_file()
        and config_path.is_file()
        and Config.load(config_path) == config
    )


def train_or_reuse(config: Config, run_dir: Path, dataset, quiet: bool) -> bool:
    """Train `config` into `run_dir` unless it is finished there; True if it trained now.

    A partly trained folder resumes; one holding a different config is refused by `training.run`.
    """
    if is_finished(config, run_dir):
        if not quiet:
            print(f"{config.name}: finished run found in {run_dir}; reusing it.")
        return False
    if not quiet:
        print(f"{config.name}: training into {run_dir} ({config.epochs} epochs).")
    training.run(config, run_dir, dataset, quiet=quiet)
    return True


def record_diagnosis(run_dir: Path, num_classes: int) -> dict:
    """Diagnose the run from its history and store the result in its `metrics.json`."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    result = diagnosis.diagnose(training.read_history(run_dir / "history.csv"), num_classes)
    if metrics.get("diagnosis") != result:
        metrics["diagnosis"] = result
        # Write beside and rename, so an interruption never leaves a half-written metrics.json.
        partial = metrics_path.with_suffix(".json.part")
        partial.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(partial, metrics_path)
    return result
