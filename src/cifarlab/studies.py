"""The whole study in one call: train each experiment of a `plans.StudyPlan`, draw its figures,
then write the report.

Run folders go to `out/<experiment>/` and the report to `out/`. Rerunning the same command
after an interruption reuses finished runs of the same config and resumes the one that was
training from its last finished epoch; a folder holding another config, or a run trained on
other data, is refused. Experiments that split the data alike share one load of it; one that
needs its own split (another `val_fraction`, `image_size`, ...) gets its own.

With `repeats` K > 1 every experiment is trained with seeds seed, ..., seed + K - 1 into
`out/<experiment>/seed=<s>/`, as Ray tasks (`cifarlab.scale.ray_jobs`), and the report adds
each experiment's statistics across seeds. All figures are drawn for the first seed's runs;
the other seeds get those drawn from their files alone, so the images are loaded only once.

    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50 --repeats 5 --workers 2
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import keras

from cifarlab import builders, run_folder, training
from cifarlab.config import Config, DataSpec
from cifarlab.data import dataset
from cifarlab.data.dataset import Dataset
from cifarlab.errors import RunError, UserError
from cifarlab.plans import StudyPlan
from cifarlab.report import build, run_figures

log = logging.getLogger(__name__)


def train_and_report(plan: StudyPlan, data: Dataset | None = None) -> dict[str, Path]:
    """Train (or reuse) each experiment, draw its figures, write the report; return its files.

    `data` is an already loaded dataset, which every config's data spec must match; without it
    each distinct spec is read from `plan.path` once. With repeats each Ray task loads its own
    seed's split instead.
    """
    study_configs = [builders.record_builder(config) for config in plan.configs]
    if plan.repeats > 1:
        if data is not None:
            raise UserError(
                "With repeats each run loads its own seed's split, so give the data's path "
                "instead of loaded data."
            )
        return _train_repeated(study_configs, plan)
    jobs = [(config, plan.out / config.name) for config in study_configs]
    for config, run_dir in jobs:  # Refused before any data is read.
        run_folder.check_same_config(run_dir, config)
    loaded = _load_each_spec(study_configs, plan, data)
    reusable = {
        run_dir for config, run_dir in jobs
        if run_folder.finished_with(run_dir, config, loaded[config.data_spec].record())
    }  # fmt: skip
    progress = StudyProgress([config for config, run_dir in jobs if run_dir not in reusable])
    for number, (config, run_dir) in enumerate(jobs, start=1):
        split = loaded[config.data_spec]
        where = f"{config.name} (experiment {number} of {len(jobs)})"
        if run_dir in reusable:
            log.info("%s: finished run found in %s; reusing it.", where, run_dir)
        else:
            log.info("%s: training into %s (%s).", where, run_dir, _epochs(config.epochs))
            progress.start(config, run_folder.count_history_rows(run_dir))
            training.train_and_evaluate(config, run_dir, split, quiet=plan.quiet,
                                        tensorboard=plan.tensorboard,
                                        callbacks=[progress])  # fmt: skip
        if run_dir not in reusable or run_figures.missing(run_dir):
            run_figures.draw_all(run_dir, split, plan.projection)
    return build.write_report([run_dir for _, run_dir in jobs], plan.out)


class StudyProgress(keras.callbacks.Callback):
    """After each epoch, one line: where the study is, in epochs of all it will train, and the
    time left, estimated from the epochs this study has measured so far."""

    def __init__(self, to_train: list[Config]):
        super().__init__()
        self.total = sum(config.epochs for config in to_train)
        self.done = 0  # Epochs finished (or found finished) among `total`.
        self.measured: list[float] = []  # Seconds of the epochs trained by this study.
        self.config: Config | None = None
        self.run_end = 0

    def start(self, config: Config, finished_epochs: int) -> None:
        """A run of `config` begins, `finished_epochs` of it done before (a resume)."""
        self.run_end = self.done + config.epochs  # `done` once this run has trained all.
        self.config, self.done = config, self.done + finished_epochs

    def on_epoch_end(self, epoch, logs=None):
        self.done += 1
        if logs and "seconds" in logs:
            self.measured.append(float(logs["seconds"]))
        left = (self.total - self.done) * sum(self.measured) / max(1, len(self.measured))
        log.info("%s: epoch %d of %d; study %d of %d epochs, about %s left.", self.config.name,
                 epoch + 1, self.config.epochs, self.done, self.total,
                 _duration(left))  # fmt: skip

    def on_train_end(self, logs=None):
        self.total -= self.run_end - self.done  # Epochs an early stop skipped are not waited for.


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{max(0, round(seconds))} s"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _load_each_spec(
    study_configs: list[Config], plan: StudyPlan, data: Dataset | None
) -> dict[DataSpec, Dataset]:
    """The study's data, once per distinct spec; `data` must be of the configs' one spec."""
    if data is None:
        return {spec: dataset.load_spec(plan.path, spec, plan.quiet) for spec in plan.data_specs()}
    for config in study_configs:
        if config.data_spec != data.spec:
            raise UserError(
                f"{config.name} needs the data split as {_spec_text(config.data_spec)}, but the "
                f"data given was split as {_spec_text(data.spec)}; give the data's path instead."
            )
    return {data.spec: data}


def _spec_text(spec: DataSpec) -> str:
    return ", ".join(f"{key} {value}" for key, value in spec.to_dict().items())


def _train_repeated(study_configs: list[Config], plan: StudyPlan) -> dict[str, Path]:
    """Train each config with consecutive seeds as Ray tasks, then write the report."""
    from cifarlab.scale import ray_jobs

    jobs = [
        ray_jobs.Job(seeded, run_folder.seed_folder(plan.out / seeded.name, seeded.seed),
                     plan.tensorboard)  # fmt: skip
        for config in study_configs
        for seeded in seeded_configs(config, plan.repeats)
    ]
    outcome = ray_jobs.train_on_ray(jobs, plan.path, plan.ray, progress=not plan.quiet)
    if outcome.failed:
        run_dir, reason = next(iter(outcome.failed.items()))
        raise RunError(
            f"{len(outcome.failed)} of {len(jobs)} runs failed (first: {run_dir}: {reason}); "
            "rerun the same command to retry them."
        )
    trained = {Path(run_dir).resolve() for run_dir in outcome.finished}
    loaded: dict[DataSpec, Dataset] = {}  # Only the first seed's splits: they serve its figures.
    for job in jobs:
        if job.config.seed != study_configs[0].seed:
            continue
        if job.out_dir.resolve() in trained or run_figures.missing(job.out_dir):
            spec = job.config.data_spec
            if spec not in loaded:
                loaded[spec] = dataset.load_spec(plan.path, spec, quiet=plan.quiet)
            run_figures.draw_all(job.out_dir, loaded[spec], plan.projection)
    return build.write_report([job.out_dir for job in jobs], plan.out)


def seeded_configs(config: Config, repeats: int) -> list[Config]:
    """`config` with seeds config.seed, config.seed + 1, ..., one per repeat."""
    return [replace(config, seed=config.seed + index) for index in range(repeats)]
