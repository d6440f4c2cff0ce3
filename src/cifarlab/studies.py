"""The whole study in one call: train each experiment, draw its figures, then write the report.

Run folders go to `out_dir/<experiment>/` and the report to `out_dir/`. Rerunning the same
command after an interruption reuses finished runs as they are and resumes the one that was
training from its last finished epoch.

With `repeats` K > 1 every experiment is trained with seeds seed, ..., seed + K - 1 into
`out_dir/<experiment>/seed=<s>/`, as Ray tasks (`cifarlab.distributed`), and the report adds
each experiment's statistics across seeds. All figures are drawn for the first seed's runs;
the other seeds get those drawn from their files alone, so the images are loaded only once.

    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50 --repeats 5 --workers 2
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cifarlab import config as configs
from cifarlab import data as datasets
from cifarlab import diagnosis, figures, report, runs, training
from cifarlab.config import Config
from cifarlab.data import Dataset
from cifarlab.errors import RunError, UserError

if TYPE_CHECKING:  # Importing distributed imports Ray, which only repeated studies need.
    from cifarlab.distributed import RayOptions

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
    repeats: int = 1,
    ray_options: RayOptions | None = None,
    **data_settings: object,
) -> dict:
    """Train (or reuse) each experiment under `out_dir`, then build the report; return its paths.

    `data` is a loaded dataset (its split settings then apply); without it the dataset is read
    from `path` (None: `$CIFARLAB_DATA`, the cache, or the download) with `data_settings`
    (`dataset`, `image_size`, `test_fraction`). With `repeats` > 1 each run is a Ray task that
    reads `path` itself, so `data` cannot be used; `ray_options` is a `distributed.RayOptions`.
    """
    if projection not in PROJECTIONS:
        raise UserError(f"Unknown projection '{projection}'; choose {' or '.join(PROJECTIONS)}.")
    if repeats < 1:
        raise UserError(f"repeats must be a positive whole number, not {repeats}.")
    if repeats > 1 and data is not None:
        raise UserError(
            "With repeats each run loads its own seed's split, so give the data's path "
            "instead of loaded data."
        )
    settings = data.split_settings if data is not None else {"seed": seed, **data_settings}
    if data is None and val_fraction is not None:
        settings["val_fraction"] = val_fraction
    study_configs = experiment_configs(experiments, epochs, precision, **settings)
    if repeats > 1:
        return run_repeated(study_configs, repeats, Path(out_dir), path, quiet, projection,
                            ray_options)  # fmt: skip
    # Every experiment shares the dataset, split and seed, so the images are read once.
    dataset = data if data is not None else datasets.load_for(study_configs[0], path, quiet=quiet)
    out_dir = Path(out_dir)
    run_dirs = []
    for config in study_configs:
        run_dir = out_dir / config.name
        trained = train_or_reuse(config, run_dir, dataset, quiet)
        record_diagnosis(run_dir)
        if trained or figures.missing(run_dir):
            figures.write(run_dir, dataset, projection)
        run_dirs.append(run_dir)
    return report.build(run_dirs, out_dir)


def run_repeated(
    study_configs: list[Config],
    repeats: int,
    out_dir: Path,
    path: str | Path | None,
    quiet: bool,
    projection: str,
    ray_options: RayOptions | None,
) -> dict:
    """Train each config with `repeats` consecutive seeds as Ray tasks, then build the report."""
    from cifarlab import distributed

    jobs = [
        distributed.Job(seeded, seed_folder(out_dir, seeded))
        for config in study_configs
        for seeded in seeded_configs(config, repeats)
    ]
    for job in jobs:
        refuse_other_config(job.config, job.out_dir)
    outcome = distributed.run_all(jobs, path, ray_options, progress=not quiet)
    if outcome.failed:
        run_dir, reason = next(iter(outcome.failed.items()))
        raise RunError(
            f"{len(outcome.failed)} of {len(jobs)} runs failed (first: {run_dir}: {reason}); "
            "rerun the same command to retry them."
        )
    for job in jobs:
        record_diagnosis(job.out_dir)
    trained = {Path(run_dir).resolve() for run_dir in outcome.finished}
    dataset = None  # Only the first seed's split is loaded: it serves its runs' figures.
    for job in jobs:
        if job.config.seed != study_configs[0].seed:
            continue
        if job.out_dir.resolve() in trained or figures.missing(job.out_dir):
            if dataset is None:
                dataset = datasets.load_for(job.config, path, quiet=quiet)
            figures.write(job.out_dir, dataset, projection)
    return report.build([job.out_dir for job in jobs], out_dir)


def seeded_configs(config: Config, repeats: int) -> list[Config]:
    """`config` with seeds config.seed, config.seed + 1, ..., one per repeat."""
    return [configs.override(config, seed=config.seed + index) for index in range(repeats)]


def seed_folder(out_dir: Path, config: Config) -> Path:
    return out_dir / config.name / f"seed={config.seed}"


def refuse_other_config(config: Config, run_dir: Path) -> None:
    """Refuse before training anything if a run folder holds a different config."""
    config_path = run_dir / "config.json"
    if config_path.is_file() and Config.load(config_path) != config:
        raise UserError(
            f"{run_dir} holds a run with a different config; choose another --out or remove it."
        )


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


def record_diagnosis(run_dir: Path) -> dict:
    """Diagnose the run from its history and store the result in its `metrics.json`."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    num_classes = len(metrics["class_names"])
    result = diagnosis.diagnose(runs.read_history(run_dir / "history.csv"), num_classes)
    if metrics.get("diagnosis") != result:
        metrics["diagnosis"] = result
        # Write beside and rename, so an interruption never leaves a half-written metrics.json.
        partial = metrics_path.with_suffix(".json.part")
        partial.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(partial, metrics_path)
    return result
