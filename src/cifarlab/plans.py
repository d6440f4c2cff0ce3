"""What a study will run, resolved once: every experiment's complete `Config` (its data spec
included), the study folder, the repeats and where they run. The command line and the Python
API build a `StudyPlan` with `study_plan` and hand that one value down to `studies`; nothing
below decides a setting again.

Building a plan reads the experiment file (TOML) once and imports nothing heavy, so a typo is
refused before TensorFlow loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cifarlab import config as configs
from cifarlab import experiments as declared_experiments
from cifarlab.config import Config, DataSpec
from cifarlab.errors import UserError

DEFAULT_EXPERIMENTS = configs.NOTEBOOK_EXPERIMENTS
PROJECTIONS = ("pca", "tsne")


@dataclass(frozen=True)
class RayOptions:
    """Where repeated runs go and how much of a machine each one takes."""

    address: str | None = None  # An existing cluster ("HOST:6379"); None starts a local Ray.
    workers: int | None = None  # Runs at once; None fills whatever the cluster has free.
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_retries: int = 2  # Extra attempts for a task whose worker process died.


@dataclass(frozen=True)
class StudyPlan:
    """One study: the runs' configs, where they go, how often each is repeated, and how."""

    configs: tuple[Config, ...]
    out: Path = Path("runs")
    path: str | Path | None = None  # The data: None means `$CIFARLAB_DATA`, cache or download.
    repeats: int = 1  # Seeds per experiment; more than one runs them as Ray tasks.
    ray: RayOptions = field(default_factory=RayOptions)
    projection: str = "pca"  # How the feature plot maps penultimate features to 2-D.
    quiet: bool = False
    tensorboard: bool = False  # TensorBoard logs with HParams in each run folder.

    def __post_init__(self) -> None:
        if not self.configs:
            raise UserError("Name at least one experiment, e.g. --experiments baseline,batchnorm.")
        names = [config.name for config in self.configs]
        if len(set(names)) != len(names):
            raise UserError(f"Each experiment may appear once in a study, not {', '.join(names)}.")
        if self.projection not in PROJECTIONS:
            raise UserError(
                f"Unknown projection '{self.projection}'; choose {' or '.join(PROJECTIONS)}."
            )
        if self.repeats < 1:
            raise UserError(f"repeats must be a positive whole number, not {self.repeats}.")
        object.__setattr__(self, "out", Path(self.out))

    def data_specs(self) -> list[DataSpec]:
        """The distinct data specs of the study's configs, in order: one load each."""
        return list(dict.fromkeys(config.data_spec for config in self.configs))


def study_plan(
    experiments: tuple[str, ...] | list[str] | None = None,
    experiments_file: str | Path | None = None,
    out: str | Path = "runs",
    path: str | Path | None = None,
    repeats: int = 1,
    ray: RayOptions | None = None,
    projection: str = "pca",
    quiet: bool = False,
    tensorboard: bool = False,
    **overrides: object,
) -> StudyPlan:
    """The study of `experiments` (names; default: every experiment of `experiments_file`, a
    TOML file, else the notebook's three) with `overrides`, config fields applied to each
    (None leaves an experiment's own value, so a recipe's or the file's settings stand)."""
    declared = declared_experiments.load_file(experiments_file) if experiments_file else {}
    if experiments:
        names = [name.strip() for name in experiments if name.strip()]
    else:
        names = list(declared) or list(DEFAULT_EXPERIMENTS)
    study_configs = tuple(
        declared_experiments.resolve(declared.get(name, name), **overrides) for name in names
    )
    return StudyPlan(study_configs, Path(out), path, repeats, ray or RayOptions(), projection,
                     quiet, tensorboard)  # fmt: skip
