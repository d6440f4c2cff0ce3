"""The run folder and the study folder: the one owner of their format.

Every file name, the atomic write, "finished", the same-config rule and the lock live here;
everything else asks this module.

    runs/baseline/                    one run folder
        config.json                   the resolved Config: the folder alone reproduces the run
        environment.json              backend, versions, hardware, precision
        summary.txt                   the model's layer table
        history.csv                   one row per finished epoch
        best.keras                    the checkpoint of lowest validation loss so far
        backup/                       Keras's BackupAndRestore state, while training
        metrics.json                  scores, per-class metrics and the diagnosis: "finished"
        test_probabilities.npy        test-set probabilities, for the figures
        curves.png ...                the run's figures
    runs/                             a study folder: results.csv/json, report.html/md, ...

A run is finished when `metrics.json` reads as JSON. A run folder is reused only for exactly
the config stored in it; any other config is refused with a sentence naming the difference.

    run = cifarlab.open_run("runs/baseline")
    run.metrics["test"]["accuracy"], run.history["val_loss"], run.plot_curves()
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cifarlab.config import Config, describe_differences
from cifarlab.errors import UserError
from cifarlab.files import atomic_path

# One run.
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
MODEL_SUMMARY = "summary.txt"
HISTORY = "history.csv"
BEST_MODEL = "best.keras"
BACKUP = "backup"
METRICS = "metrics.json"
TEST_PROBABILITIES = "test_probabilities.npy"
LOCK = ".run.lock"  # Held by the one process writing the run.
CURVES = "curves.png"
CONFUSION = "confusion.png"
PER_CLASS = "per_class.png"
ERRORS = "errors.png"
FEATURES = "features.png"
SAMPLES = "samples.png"
AUGMENTATION = "augmentation.png"
FILE_FIGURES = (CURVES, CONFUSION, PER_CLASS)  # Drawn from the folder's files alone.
IMAGE_FIGURES = (ERRORS, FEATURES)  # Also need the images and the model.
RUN_FIGURES = (*FILE_FIGURES, *IMAGE_FIGURES)
SEED_PREFIX = "seed="  # `<experiment>/seed=<s>/`: one of a study's or sweep's repeated runs.

# A study folder.
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
SEED_SUMMARY_CSV = "summary.csv"
SEED_SUMMARY_JSON = "summary.json"
COMPARISONS = "comparisons.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
COMPARE_LOSS = "compare_loss.png"
COMPARE_ACCURACY = "compare_accuracy.png"

# A sweep folder.
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"
SWEEP_TXT = "sweep.txt"


# Writing: every file that marks progress or holds results appears whole or not at all.


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)


def write_json(path: str | Path, values) -> Path:
    return write_text(path, json.dumps(values, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | tuple[str, ...]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def save_array(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.save(file, array)
    return Path(path)


# Reading: a garbled file is reported in one sentence or counts as unfinished, never a traceback.


def read_json(path: str | Path):
    """The JSON at `path`, or a `UserError` naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged (not valid JSON); remove it or rerun.") from error


def read_history(run_dir: str | Path) -> list[dict]:
    """`history.csv` as rows of floats (`epoch` stays Keras's 0-based integer); empty if none."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as file:
            return [
                {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
                for row in csv.DictReader(file)
            ]
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} is damaged (not a history table); remove the run.") from error


def write_history(run_dir: str | Path, rows: list[dict]) -> None:
    """Replace `history.csv` with `rows` (removing it when there are none)."""
    path = Path(run_dir) / HISTORY
    if rows:
        write_csv(path, rows, list(rows[0]))
    else:
        path.unlink(missing_ok=True)


def read_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (it has no {CONFIG}).")
    values = read_json(path)
    if not isinstance(values, dict):
        raise UserError(f"{path} is damaged (not a config); remove the run.")
    return Config.from_dict(values)


def read_metrics(run_dir: str | Path) -> dict:
    """`metrics.json`, or {} while the run is unfinished (missing or torn)."""
    path = Path(run_dir) / METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


# The rules: what "finished" means, and which folder a config may use.


def is_finished(run_dir: str | Path) -> bool:
    """True if the run in `run_dir` has been evaluated (its `metrics.json` reads whole)."""
    return bool(read_metrics(run_dir))


def holds_config(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG).is_file()


def check_same_config(run_dir: str | Path, config: Config, remedy: str = "") -> None:
    """Refuse, naming the difference, if `run_dir` already holds a run of another config."""
    if not holds_config(run_dir):
        return
    stored = read_config(run_dir)
    if stored != config:
        differences = "; ".join(describe_differences(stored, config))
        remedy = remedy or "choose another --out or remove it"
        raise UserError(f"{run_dir} holds a run with a different config ({differences}); {remedy}.")


def finished_with(run_dir: str | Path, config: Config) -> bool:
    """True if `run_dir` holds a finished run of exactly `config` (reuse it); False if there is
    nothing or an unfinished run of `config` (train or resume); a `UserError` otherwise."""
    check_same_config(run_dir, config)
    return holds_config(run_dir) and is_finished(run_dir)


@contextmanager
def exclusive(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder for this process; a second writer is refused at once.

    The lock is the operating system's (`filelock`), so a killed process leaves no stale lock.
    """
    from filelock import FileLock, Timeout

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(Path(run_dir) / LOCK, blocking=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise UserError(
            f"{run_dir} is being written by another cifarlab process; wait for it to finish or "
            "choose another --out."
        ) from error
    try:
        yield
    finally:
        lock.release()


def experiment_folder(run_dir: Path) -> Path:
    """The experiment's folder: the run folder itself, or the parent of a `seed=<s>` folder."""
    return run_dir.parent if run_dir.name.startswith(SEED_PREFIX) else run_dir


def seed_folder(parent: Path, seed: int) -> Path:
    return Path(parent) / f"{SEED_PREFIX}{seed}"


def finished_runs_in(folder: Path) -> list[Path]:
    """The finished run folders directly inside `folder` or one `seed=<s>` level below."""
    candidates = [*folder.glob(f"*/{METRICS}"), *folder.glob(f"*/{SEED_PREFIX}*/{METRICS}")]
    return [path.parent for path in candidates if is_finished(path.parent)]


def load_best_model(run_dir: str | Path, compile: bool = True):
    """The run's best checkpoint as a `keras.Model`, or a `UserError` if it has none."""
    from cifarlab import models

    path = Path(run_dir) / BEST_MODEL
    if not path.is_file():
        raise UserError(f"{run_dir} has no {BEST_MODEL}; train it first with cifarlab train.")
    builder = read_config(run_dir).model if holds_config(run_dir) else ""
    return models.load_model(path, builder, compile)


# The views.


@dataclass(frozen=True)
class Run:
    """One run folder: what was trained (`config`), how it went (`history`) and `metrics`."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not holds_config(self.path):
            raise UserError(f"{self.path} is not a run folder (it has no {CONFIG}).")

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def config(self) -> Config:
        return read_config(self.path)

    @property
    def metrics(self) -> dict:
        """The contents of `metrics.json`; empty until the run has been evaluated."""
        return read_metrics(self.path)

    @property
    def finished(self) -> bool:
        return is_finished(self.path)

    @property
    def history_rows(self) -> list[dict]:
        """One dict per finished epoch, as in `history.csv`."""
        return read_history(self.path)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Per-epoch columns of `history.csv` (loss, accuracy, val_loss, val_accuracy, ...)."""
        rows = self.history_rows
        keys = rows[0].keys() if rows else ()
        return {key: np.array([row[key] for row in rows]) for key in keys}

    @property
    def environment(self) -> dict:
        path = self.path / ENVIRONMENT
        return read_json(path) if path.is_file() else {}

    @property
    def diagnosis(self) -> dict:
        """The verdict and its numbers, stored in `metrics.json` when the run was evaluated."""
        return self.finished_metrics().get("diagnosis") or {}

    def finished_metrics(self) -> dict:
        """`metrics`, or a `UserError` if the run has not been evaluated."""
        metrics = self.metrics
        if not metrics:
            raise UserError(f"{self.path} has no {METRICS}; finish it with cifarlab train first.")
        return metrics

    def model(self):
        """The best checkpoint as a `keras.Model`."""
        return load_best_model(self.path)

    def plot_curves(self):
        """Training and validation accuracy and loss per epoch, as a matplotlib Figure."""
        from cifarlab.report import plots

        return plots.curves_figure(self.history_rows, self.metrics.get("best_epoch"), self.name)

    def __repr__(self) -> str:
        test = self.metrics.get("test", {})
        accuracy = f", test accuracy {test['accuracy']:.2%}" if test else ""
        return f"Run({str(self.path)!r}, {self.name}{accuracy})"

    def _repr_html_(self) -> str:
        metrics = self.metrics
        if not metrics:
            return f"<p>Run <code>{html.escape(str(self.path))}</code> (not evaluated yet)</p>"
        cells = "".join(
            f"<tr><td>{split}</td><td>{metrics[split]['loss']:.4f}</td>"
            f"<td>{metrics[split]['accuracy']:.2%}</td></tr>"
            for split in ("train", "val", "test")
        )
        verdict = metrics.get("diagnosis", {}).get("verdict", "")
        return (
            f"<p><b>{html.escape(self.name)}</b> — <code>{html.escape(str(self.path))}</code>, "
            f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
            f"{', ' + html.escape(verdict) if verdict else ''}</p>"
            f"<table><tr><th>split</th><th>loss</th><th>accuracy</th></tr>{cells}</table>"
        )


@dataclass(frozen=True)
class Study:
    """A study folder: one run folder per experiment (or per experiment and seed, with repeats)
    and the report built from them, read back as written."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not (self.path / RESULTS_JSON).is_file():
            raise UserError(f"{self.path} holds no study report (no {RESULTS_JSON}).")

    @property
    def results(self) -> list[dict]:
        """One row per run, as in `results.csv`."""
        return read_json(self.path / RESULTS_JSON)

    @property
    def summary(self) -> list[dict]:
        """One row per experiment across its seeds, as in `summary.csv`; empty without repeats."""
        path = self.path / SEED_SUMMARY_JSON
        return read_json(path) if path.is_file() else []

    @property
    def runs(self) -> dict[str, Run]:
        """The study's runs by experiment name, or by "<experiment>/seed=<s>" with repeats."""
        rows = self.results
        names = [row["experiment"] for row in rows]
        if len(set(names)) == len(names):
            return {name: Run(self.path / name) for name in names}
        return {
            f"{row['experiment']}/{SEED_PREFIX}{row['seed']}": Run(
                seed_folder(self.path / row["experiment"], row["seed"])
            )
            for row in rows
        }

    @property
    def comparisons(self) -> list[dict]:
        """The diagnosis's comparison sentences, each with whether it agrees with the textbook."""
        return self._stored_comparisons()["comparisons"]

    @property
    def differences(self) -> list[str]:
        """Each experiment against the baseline on test accuracy across seeds, as sentences."""
        return self._stored_comparisons()["differences"]

    @property
    def report(self) -> Path:
        return self.path / REPORT_HTML

    def _stored_comparisons(self) -> dict:
        path = self.path / COMPARISONS
        return read_json(path) if path.is_file() else {"comparisons": [], "differences": []}

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {', '.join(self.runs)})"

    def _repr_html_(self) -> str:
        from cifarlab.report import rendering

        return rendering.study_summary_html(self)
