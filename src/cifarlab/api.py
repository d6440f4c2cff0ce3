"""The Python API: the functions the `cifarlab` command calls, for notebooks and scripts.

    import cifarlab
    data = cifarlab.load_data("cifar-10-python.tar.gz")
    run = cifarlab.train("batchnorm", data=data, epochs=5, out="runs/batchnorm")
    run.metrics["test"]["accuracy"]; run.plot_curves()

Nothing here keeps global state: every call says what it works on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cifarlab import config as configs
from cifarlab import run_folder
from cifarlab.data.dataset import Dataset
from cifarlab.data.dataset import load as load_data
from cifarlab.errors import UserError
from cifarlab.plans import RayOptions, StudyPlan
from cifarlab.scale.space import SearchSpace  # Reads TOML; imports nothing heavy.
from cifarlab.views import Run, Study

log = logging.getLogger(__name__)
__all__ = [
    "Run", "Study", "build_report", "evaluate", "experiment_config", "export", "load_data",
    "open_run", "predict", "search", "study", "train",
]  # fmt: skip


def experiment_config(
    experiment: str | configs.Config,
    experiments_file: str | Path | None = None,
    **overrides: object,
) -> configs.Config:
    """The named experiment with overrides: a built-in ("baseline", "augmented", "batchnorm",
    "modern", or A/B/C) or one declared in `experiments_file` (TOML).

    `model` may be a function `(config, input_shape, num_classes) -> keras.Model` or its import
    path "package.module:function"; the run then records the path and its source's SHA-256.
    """
    from cifarlab import builders, experiments

    return builders.record_builder(experiments.resolve(experiment, experiments_file, **overrides))


def train(
    experiment: str | configs.Config,
    data: Dataset | None = None,
    out: str | Path | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
    experiments_file: str | Path | None = None,
    callbacks: Sequence[object] = (),
    **overrides: object,
) -> Run:
    """Train one experiment into the run folder `out`, evaluate it and draw its figures.

    Without `out` the run goes to `runs/train/<name>`, or `runs/train/<name>-2`, ... when that
    holds a run of another config or data (`run_folder.train_folder`), never into a study's
    `runs/<name>`; the returned `Run`'s `path` says where.

    `overrides` replace config fields, e.g. `epochs=5, learning_rate=3e-3, seed=1`, or
    `model=build_fn` for your own network (see `experiment_config`). Without
    `data`, the dataset is loaded from `path` with the config's split settings; with it, the
    run records the split `data` was made with. An interrupted run in `out` resumes where it
    stopped, on the same data only. `callbacks` are Keras callbacks of your own, called after
    cifarlab's at every epoch.
    """
    from cifarlab import training
    from cifarlab.data import dataset
    from cifarlab.report import run_figures

    if data is not None:
        overrides = _with_data_settings(overrides, data)
    config = experiment_config(experiment, experiments_file, **overrides)
    if data is None:
        data = dataset.load_for(config, path, quiet=quiet)
    if out is None:
        out = run_folder.train_folder(config, data.record())
        log.info("%s: run folder %s (no --out given).", config.name, out)
    out = Path(out)
    training.train_and_evaluate(config, out, data, overwrite, quiet, tensorboard, callbacks)
    run_figures.draw_all(out, data)
    return Run(out)


def evaluate(run: Run | str | Path, data: Dataset | None = None, path=None) -> dict:
    """Evaluate a finished run's best checkpoint on every split again and return the metrics.

    The data must be what the run trained on (the same classes and, where the run recorded it,
    the same fingerprint). The scores go to the run's re-evaluation file
    (`run_folder.REEVALUATION`), beside its own metrics, which only training writes.
    """
    from cifarlab import evaluation
    from cifarlab.data import dataset

    run = open_run(run)
    with run_folder.exclusive(run.path):
        stored = run.finished_metrics()
        data = data if data is not None else dataset.load_for(run.config, path)
        expected = stored.get("class_names")
        if expected is not None and list(data.class_names) != list(expected):
            raise UserError(
                f"{run.path} was trained on the classes {', '.join(map(str, expected))}, not "
                f"{', '.join(data.class_names)}; pass the data it was trained on."
            )
        run_folder.check_same_data(run.path, data.record(), "pass the data it was trained on")
        metrics, _ = evaluation.score_run(run.path, data)
        run_folder.write_json(run.path / run_folder.REEVALUATION, metrics)
    return metrics


def export(run: Run | str | Path, format: str, out: str | Path, path=None):
    """Write a finished run's best checkpoint as `format` ("onnx", "saved_model", "litert") to
    `out`, checked in that format's runtime on the test images of the data the run trained on
    (loaded from `path` as `evaluate` does). Returns an `export.Export`."""
    from cifarlab import exports as exporting
    from cifarlab import prediction
    from cifarlab.data import dataset

    run = open_run(run)
    run.finished_metrics()
    data = dataset.load_for(run.config, path)
    run_folder.check_same_data(run.path, data.record(), "pass the data it was trained on")
    classifier = prediction.load_classifier(run.path)
    return exporting.export(classifier, data.x_test, format, Path(out))


def _with_data_settings(overrides: dict, data: Dataset) -> dict:
    """`overrides` with the settings `data` was split with: a run records the split it trains
    on. A different value asked for in `overrides` is refused."""
    for key, value in data.split_settings.items():
        if overrides.get(key) is not None and overrides[key] != value:
            raise UserError(
                f"The data was loaded with {key}={value} but the run asks for "
                f"{key}={overrides[key]}; load the data with the same {key}."
            )
    return {**overrides, **data.split_settings}


def open_run(run: Run | str | Path) -> Run:
    """A `Run` view of an existing run folder."""
    return run if isinstance(run, Run) else Run(Path(run))


def study(
    experiments: tuple[str, ...] | list[str] | None = None,
    data: Dataset | None = None,
    out: str | Path = "runs",
    path: str | Path | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    precision: str | None = None,
    projection: str = "pca",
    quiet: bool = False,
    repeats: int = 1,
    ray_address: str | None = None,
    workers: int | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    experiments_file: str | Path | None = None,
    model=None,
    plan: StudyPlan | None = None,
    **data_settings: object,
) -> Study:
    """Train (or reuse) each experiment under `out`, draw its figures, and write the report.

    `experiments` are names (default: every experiment of `experiments_file`, a TOML file of
    your own experiments, else the notebook's baseline, augmented and batchnorm); `model`
    replaces every experiment's network by your builder (see `experiment_config`). `epochs`,
    `seed`, `precision` and `data_settings` (`val_fraction`, `dataset`, `image_size`,
    `test_fraction`, `stratify`) override every experiment's own; None keeps each one's.

    Finished runs in `out` are reused and an interrupted one resumes, on the same data only.
    With `repeats` K > 1 each experiment is trained with K seeds as Ray tasks (a local Ray
    unless `ray_address` names a cluster; `workers` runs at once), each reading the data from
    `path` itself, and the report gives mean, spread and 95% intervals across seeds. `plan`,
    a `plans.StudyPlan` already resolved, replaces all of the above but `data`. In Jupyter the
    returned `Study` shows its results and diagnosis.
    """
    from cifarlab import plans, studies

    if plan is None:
        overrides = {"epochs": epochs, "seed": seed, "precision": precision, "model": model,
                     **data_settings}  # fmt: skip
        if data is not None:
            overrides = _with_data_settings(overrides, data)
        plan = plans.study_plan(
            experiments, experiments_file, out, path, repeats,
            plans.RayOptions(ray_address, workers, cpus_per_run, gpus_per_run), projection,
            quiet, **overrides,
        )  # fmt: skip
    studies.train_and_report(plan, data)
    return Study(plan.out)


def search(
    space: str | Path | SearchSpace,
    path: str | Path | None = None,
    trials: int = 10,
    out: str | Path = "runs/search",
    ray: RayOptions | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
    experiments_file: str | Path | None = None,
    **overrides: object,
):
    """Search the settings the TOML file `space` (or a `SearchSpace` already loaded) samples
    on Ray Tune (Optuna proposes, ASHA stops the trials that lag) with the data at `path`, into
    the search folder `out`, or resume the search there; the result names every trial, the best
    and its test accuracy (see `cifarlab.scale.search`). `overrides` are fixed settings
    (`epochs=5`), never sampled ones, and apply to a space read from a file."""
    from cifarlab import builders
    from cifarlab.scale import space as spaces

    try:
        from cifarlab.scale import search as searching
    except ModuleNotFoundError as error:
        raise UserError("Searching needs Ray Tune and Optuna; install them with: "
                        "pip install 'cifarlab[tune]'.") from error  # fmt: skip
    loaded = space if isinstance(space, spaces.SearchSpace) else (
        spaces.load_space(space, experiments_file, **overrides))  # fmt: skip
    loaded = replace(loaded, base=builders.record_builder(loaded.base))
    return searching.search(loaded, path, trials, out, ray, not quiet, tensorboard)


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """Rebuild the report (HTML, Markdown, CSV, JSON, figures) from finished run folders."""
    from cifarlab.report import build

    return build.write_report(run_dirs, out)


def predict(run: Run | str | Path, images: list[str | Path], top_k: int = 3) -> list:
    """The `top_k` classes of each image file (folders are walked) by a run's best model.

    Images of any size and format are centre-cropped to a square and resized to the model's
    input, as the training images were scaled. Files that cannot be read come back with `error`.
    """
    from cifarlab import prediction

    return prediction.predict(run.path if isinstance(run, Run) else run, images, top_k)
