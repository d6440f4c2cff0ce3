"""The whole study in one call: train each experiment, draw its figures, then write the report.

Run folders go to `out/<experiment>/` and the report to `out/`. Rerunning the same command
after an interruption reuses finished runs of the same config and resumes the one that was
training from its last finished epoch; a folder holding another config is refused.

With `repeats` K > 1 every experiment is trained with seeds seed, ..., seed + K - 1 into
`out/<experiment>/seed=<s>/`, as Ray tasks (`cifarlab.scale.ray_jobs`), and the report adds
each experiment's statistics across seeds. All figures are drawn for the first seed's runs;
the other seeds get those drawn from their files alone, so the images are loaded only once.

    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50 --repeats 5 --workers 2
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab import config as configs
from cifarlab import run_folder, training
from cifarlab.config import Config
from cifarlab.data import dataset
from cifarlab.data.dataset import Dataset
from cifarlab.errors import RunError, UserError
from cifarlab.report import build, run_figures
from cifarlab.scale.ray_jobs import RayOptions

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENTS = ("baseline", "augmented", "batchnorm")
PROJECTIONS = ("pca", "tsne")


@dataclass(frozen=True)
class StudyOptions:
    """Everything one study is asked to do; `None` leaves an experiment's own setting."""

    experiments: tuple[str, ...] | None = None  # None: the file's experiments, else the notebook's.
    experiments_file: Path | None = None  # A TOML file of the user's own experiments.
    model: str | None = None  # "package.module:function" replacing every experiment's network.
    out: Path = Path("runs")
    path: str | Path | None = None  # The data: None means `$CIFARLAB_DATA`, cache or download.
    epochs: int | None = None
    seed: int = 0
    precision: str | None = None
    projection: str = "pca"  # How the feature plot maps penultimate features to 2-D.
    quiet: bool = False
    repeats: int = 1  # Seeds per experiment; more than one runs them as Ray tasks.
    ray: RayOptions = field(default_factory=RayOptions)
    # Data settings: val_fraction, dataset, image_size, test_fraction (None: the default).
    data_settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise UserError(
                f"Unknown projection '{self.projection}'; choose {' or '.join(PROJECTIONS)}."
            )
        if self.repeats < 1:
            raise UserError(f"repeats must be a positive whole number, not {self.repeats}.")
        object.__setattr__(self, "out", Path(self.out))


def train_and_report(options: StudyOptions, data: Dataset | None = None) -> dict[str, Path]:
    """Train (or reuse) each experiment, draw its figures, write the report; return its files.

    `data` is an already loaded dataset (its split settings then apply); without it the data is
    read from `options.path`. With repeats each Ray task loads its own seed's split instead.
    """
    if options.repeats > 1 and data is not None:
        raise UserError(
            "With repeats each run loads its own seed's split, so give the data's path "
            "instead of loaded data."
        )
    study_configs = experiment_configs(options, data)
    if options.repeats > 1:
        return _train_repeated(study_configs, options)
    jobs = [(config, options.out / config.name) for config in study_configs]
    reusable = {run_dir for config, run_dir in jobs if run_folder.finished_with(run_dir, config)}
    # Every experiment shares the dataset, split and seed, so the images are read once.
    if data is None:
        data = dataset.load_for(study_configs[0], options.path, quiet=options.quiet)
    for config, run_dir in jobs:
        if run_dir in reusable:
            log.info("%s: finished run found in %s; reusing it.", config.name, run_dir)
        else:
            log.info("%s: training into %s (%d epochs).", config.name, run_dir, config.epochs)
            training.train_and_evaluate(config, run_dir, data, quiet=options.quiet)
        if run_dir not in reusable or run_figures.missing(run_dir):
            run_figures.draw_all(run_dir, data, options.projection)
    return build.write_report([run_dir for _, run_dir in jobs], options.out)


def _train_repeated(study_configs: list[Config], options: StudyOptions) -> dict[str, Path]:
    """Train each config with consecutive seeds as Ray tasks, then write the report."""
    from cifarlab.scale import ray_jobs

    jobs = [
        ray_jobs.Job(seeded, run_folder.seed_folder(options.out / seeded.name, seeded.seed))
        for config in study_configs
        for seeded in seeded_configs(config, options.repeats)
    ]
    outcome = ray_jobs.train_on_ray(jobs, options.path, options.ray, progress=not options.quiet)
    if outcome.failed:
        run_dir, reason = next(iter(outcome.failed.items()))
        raise RunError(
            f"{len(outcome.failed)} of {len(jobs)} runs failed (first: {run_dir}: {reason}); "
            "rerun the same command to retry them."
        )
    trained = {Path(run_dir).resolve() for run_dir in outcome.finished}
    data = None  # Only the first seed's split is loaded: it serves its runs' figures.
    for job in jobs:
        if job.config.seed != study_configs[0].seed:
            continue
        if job.out_dir.resolve() in trained or run_figures.missing(job.out_dir):
            if data is None:
                data = dataset.load_for(job.config, options.path, quiet=options.quiet)
            run_figures.draw_all(job.out_dir, data, options.projection)
    return build.write_report([job.out_dir for job in jobs], options.out)


def seeded_configs(config: Config, repeats: int) -> list[Config]:
    """`config` with seeds config.seed, config.seed + 1, ..., one per repeat."""
    return [configs.override(config, seed=config.seed + index) for index in range(repeats)]


def experiment_configs(options: StudyOptions, data: Dataset | None = None) -> list[Config]:
    """The study's experiments with its shared overrides; names must be distinct."""
    from cifarlab import experiments

    # The file is read once; its experiments are then resolved as configs, built-ins by name.
    declared = experiments.load_file(options.experiments_file) if options.experiments_file else {}
    if options.experiments:
        names = [name.strip() for name in options.experiments if name.strip()]
    elif declared:
        names = list(declared)
    else:
        names = list(DEFAULT_EXPERIMENTS)
    if not names:
        raise UserError("Name at least one experiment, e.g. --experiments baseline,batchnorm.")
    if data is not None:
        settings = data.split_settings
    else:
        settings = {"seed": options.seed, **options.data_settings}
    study_configs = [
        experiments.resolve(
            declared.get(name, name),
            epochs=options.epochs,
            precision=options.precision,
            model=options.model,
            **settings,
        )  # fmt: skip
        for name in names
    ]
    resolved = [config.name for config in study_configs]
    if len(set(resolved)) != len(resolved):
        raise UserError(f"Each experiment may appear once in a study, not {', '.join(resolved)}.")
    return study_configs
