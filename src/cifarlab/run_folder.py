"""The run folder and the study folder: the one owner of their format.

Every file name, the atomic write, "finished", the same-config rule and the lock live here;
everything else asks this module.

    runs/baseline/                    one run folder
        config.json                   the resolved Config: the folder alone reproduces the run
        dataset.json                  the data it trained on: a fingerprint, source and sizes
        environment.json              backend, versions, hardware, precision
        summary.txt                   the model's layer table
        history.csv                   one row per finished epoch
        best.keras                    the checkpoint of lowest validation loss so far
        backup/                       Keras's BackupAndRestore state, while training
        metrics.json                  scores, per-class metrics and the diagnosis: "finished"
        test_probabilities.npy        test-set probabilities, for the figures
        evaluation.json               `cifarlab evaluate`'s scores, beside the run's own
        curves.png ...                the run's figures
    runs/                             a study folder: results.csv/json, report.html/md, ...
    runs/search/                      a search folder: search.json (its space, trials and
                                      data), trials/<id>/ run folders, tune/ (Ray Tune's
                                      state), search.csv/png/txt (its report)

A run is finished when `metrics.json` reads as JSON. A run folder is reused or resumed only
for exactly the config and the data stored in it; any other is refused with a sentence naming
the difference. Only training writes a run's own files; `clear` removes only the files named
here, and nothing from a folder whose `config.json` cifarlab did not write.

Its views for notebooks and scripts, `Run` and `Study`, are in `cifarlab.views`.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cifarlab.config import Config, describe_differences
from cifarlab.errors import UserError

# Every file that marks progress or holds results is written whole or not at all; the writers
# are `cifarlab.files`'s, named here too so that the format's owner is the one callers ask.
from cifarlab.files import atomic_path, save_array, write_csv, write_json, write_text  # noqa: F401

# One run.
CONFIG = "config.json"
DATA = "dataset.json"
ENVIRONMENT = "environment.json"
MODEL_SUMMARY = "summary.txt"
HISTORY = "history.csv"
BEST_MODEL = "best.keras"
BACKUP = "backup"
METRICS = "metrics.json"
TEST_PROBABILITIES = "test_probabilities.npy"
REEVALUATION = "evaluation.json"
LOGS = "logs"  # TensorBoard's, with --tensorboard.
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
# Every file and folder a run may hold: all that `clear` removes.
RUN_FILES = (
    CONFIG, DATA, ENVIRONMENT, MODEL_SUMMARY, HISTORY, BEST_MODEL, BACKUP, METRICS,
    TEST_PROBABILITIES, REEVALUATION, LOGS, SAMPLES, AUGMENTATION, *RUN_FIGURES,
)  # fmt: skip
# Keys every config.json cifarlab writes has had; a file without them is someone else's.
_CONFIG_KEYS = ("name", "epochs", "batch_size", "learning_rate", "seed")
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

# A search folder: its record (space, trials, data), its trials' run folders, Ray Tune's own
# experiment state, and its report.
SEARCH_RECORD = "search.json"
SEARCH_TRIALS = "trials"
SEARCH_TUNE = "tune"
SEARCH_CSV = "search.csv"
SEARCH_PNG = "search.png"
SEARCH_TXT = "search.txt"


# Reading: a garbled file is reported in one sentence or counts as unfinished, never a traceback.


def read_json(path: str | Path):
    """The JSON at `path`, or a `UserError` naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged (not valid JSON); remove it or rerun.") from error


def read_history(run_dir: str | Path, epochs: int | None = None) -> list[dict]:
    """`history.csv` as rows of floats (`epoch` stays Keras's 0-based integer); empty if none.

    With `epochs`, only the rows of the first `epochs` epochs are read: a resume keeps those
    and drops the rest, so a row that a kill tore past them is no damage.
    """
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as file:  # pragma: no mutate (no field holds a newline)
            return [
                {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
                for row in itertools.islice(csv.DictReader(file), epochs)
            ]
    except (ValueError, TypeError, csv.Error) as error:
        raise UserError(f"{path} is damaged (not a history table); remove the run.") from error


def count_history_rows(run_dir: str | Path) -> int:
    """The rows in `history.csv`, whole or torn, without reading their values."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return 0
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return max(0, len(lines) - 1)  # Less the header.


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
    if not _written_by_cifarlab(values):
        raise UserError(
            f"{path} was not written by cifarlab; choose another folder for cifarlab's runs."
        )
    try:
        return Config.from_dict(values)
    except UserError as error:
        reason = str(error).rstrip(".")
        raise UserError(
            f"{path} is damaged ({reason[:1].lower()}{reason[1:]}); remove the run."
        ) from error


def _written_by_cifarlab(values) -> bool:
    return isinstance(values, dict) and all(key in values for key in _CONFIG_KEYS)


def run_folder_of(model_path: str | Path) -> Path | None:
    """The run folder whose checkpoint `model_path` is, or None for a model file of its own.

    A run's checkpoint is named `best.keras` and lies beside the `config.json` that cifarlab
    wrote for it; a model saved or copied anywhere else is bare, so it never takes settings (or
    a builder to import) from whatever config happens to lie beside it.
    """
    model_path = Path(model_path)
    folder = model_path.parent
    if model_path.name != BEST_MODEL or not holds_config(folder):
        return None
    return folder if _written_by_cifarlab(read_json(folder / CONFIG)) else None


def read_data_record(run_dir: str | Path) -> dict | None:
    """`dataset.json`: the fingerprint and source of the data the run trained on; None for a run
    written before cifarlab recorded it."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise UserError(f"{path} is damaged (no data fingerprint); remove the run.")
    return record


def read_metrics(run_dir: str | Path) -> dict:
    """`metrics.json`, or {} while the run is unfinished: missing, torn, or not this run's
    (`metrics_problem` says which)."""
    return _checked_metrics(Path(run_dir))[0]  # Empty whenever there is a problem.


def metrics_problem(run_dir: str | Path) -> str | None:
    """Why `run_dir`'s metrics do not count, in words ("is missing", "records 3 epochs but
    history.csv has 5"), or None if they do."""
    return _checked_metrics(Path(run_dir))[1]


# The fields every metrics file has, and their types: a file without them is not one.
_METRICS_FIELDS = {"experiment": str, "params": int, "epochs_run": int, "best_epoch": int,
                   "class_names": list}  # fmt: skip


def _checked_metrics(run_dir: Path) -> tuple[dict, str | None]:
    path = run_dir / METRICS
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, "is missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return {}, "is torn or not JSON"
    if not isinstance(metrics, dict):
        return {}, "is not a table of metrics"
    for key, kind in _METRICS_FIELDS.items():
        value = metrics.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return {}, f"has no {key} of type {kind.__name__}"
    for split in ("train", "val", "test"):
        scores = metrics.get(split)
        if not isinstance(scores, dict) or not all(
            isinstance(scores.get(name), int | float) for name in ("loss", "accuracy")
        ):
            return {}, f"has no {split} loss and accuracy"
    if holds_config(run_dir) and metrics["experiment"] != read_config(run_dir).name:
        return {}, f"was written for experiment {metrics['experiment']}, not this run's"
    epochs = len(read_history(run_dir))
    if (run_dir / HISTORY).is_file() and metrics["epochs_run"] != epochs:
        return {}, f"records {metrics['epochs_run']} epochs but {HISTORY} has {epochs}"
    return metrics, None


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


def check_same_data(run_dir: str | Path, record: dict, remedy: str = "") -> None:
    """Refuse, naming both sources, if `run_dir` holds a run trained on other data than
    `record` (a `Dataset.record()`). A run from before data was recorded is let through with a
    warning, as its data cannot be checked."""
    if not holds_config(run_dir):
        return
    stored = read_data_record(run_dir)
    if stored is None:
        if (Path(run_dir) / HISTORY).is_file():
            warnings.warn(
                f"{run_dir} records no data fingerprint (an older cifarlab wrote it), so the "
                "data it trained on cannot be checked.",
                stacklevel=2,  # pragma: no mutate (where it points, not what it says)
            )
        return
    if stored["fingerprint"] != record["fingerprint"]:
        remedy = remedy or "pass the data it was trained on, or choose another --out"
        raise UserError(
            f"{run_dir} was trained on other data ({_described(stored)}) than given now "
            f"({_described(record)}); {remedy}."
        )


def _described(record: dict) -> str:
    images = record.get("images") or {}
    sizes = "/".join(f"{images[split]:,}" if isinstance(images.get(split), int) else "?"
                     for split in ("train", "val", "test"))  # fmt: skip
    return f"{sizes} train/val/test images from {record.get('source', 'an unknown source')}"


def check_same_run(
    run_dir: str | Path, config: Config, data_record: dict | None = None, remedy: str = ""
) -> None:
    """`check_same_config`, then `check_same_data` when the data is known."""
    check_same_config(run_dir, config, remedy)
    if data_record is not None:
        check_same_data(run_dir, data_record)


def finished_with(run_dir: str | Path, config: Config, data_record: dict | None = None) -> bool:
    """True if `run_dir` holds a finished run of exactly `config` (on the data of `data_record`,
    when given): reuse it. False if there is nothing or an unfinished run of them (train or
    resume); a `UserError` otherwise."""
    check_same_run(run_dir, config, data_record)
    return holds_config(run_dir) and is_finished(run_dir)


# `cifarlab train`'s runs when no folder is named: apart from a study's `runs/<experiment>`.
TRAIN_RUNS = Path("runs") / "train"


def train_folder(config: Config, data_record: dict, parent: Path = TRAIN_RUNS) -> Path:
    """Where `train` puts a run when no folder is named: `runs/train/<experiment>`, or the first
    of `<experiment>-2`, `-3`, ... that is free or holds a run of exactly `config` on the data
    of `data_record`. The same command therefore finds its own run again (to resume it, or to
    refuse redoing it unasked), and another config or other data never mixes into it."""
    folder, number = Path(parent) / config.name, 1
    while holds_config(folder):
        try:
            with warnings.catch_warnings():  # Training checks the folder again, and warns.
                warnings.simplefilter("ignore")
                check_same_run(folder, config, data_record)
            break
        except UserError:  # Another config, other data, or a config.json not cifarlab's.
            number += 1
            folder = Path(parent) / f"{config.name}-{number}"
    return folder


def clear(run_dir: str | Path) -> None:
    """Remove the run in `run_dir`: only the files this module names (and their unfinished
    temporary copies), never anything else in the folder, and nothing at all from a folder
    whose `config.json` is not cifarlab's."""
    run_dir = Path(run_dir)
    if holds_config(run_dir):
        read_config(run_dir)  # Refuses another program's config.json.
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        for partial in run_dir.glob(f".{glob.escape(name)}.*"):  # Left by a kill mid-write.
            partial.unlink(missing_ok=True)  # pragma: no mutate (it was just listed)


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


def wait_for_writer(run_dir: str | Path, seconds: float) -> None:
    """Wait until no process holds `run_dir`'s lock, at most `seconds`: a killed search's trial
    that Ray has not reaped yet lets go within seconds. A lock still held after that is for
    `exclusive` to refuse."""
    from filelock import FileLock, Timeout

    path = Path(run_dir) / LOCK
    if not path.is_file():
        return
    try:
        with FileLock(path, timeout=seconds):
            pass
    except Timeout:
        pass


def experiment_folder(run_dir: Path) -> Path:
    """The experiment's folder: the run folder itself, or the parent of a `seed=<s>` folder."""
    return run_dir.parent if run_dir.name.startswith(SEED_PREFIX) else run_dir


def seed_folder(parent: Path, seed: int) -> Path:
    return Path(parent) / f"{SEED_PREFIX}{seed}"


def finished_runs_in(folder: Path) -> list[Path]:
    """The finished run folders directly inside `folder` or one `seed=<s>` level below."""
    candidates = [*folder.glob(f"*/{METRICS}"), *folder.glob(f"*/{SEED_PREFIX}*/{METRICS}")]
    found = []
    for run_dir in (path.parent for path in candidates):
        problem = metrics_problem(run_dir)
        if problem is None:
            found.append(run_dir)
        else:
            warnings.warn(
                f"{run_dir} is left out: its {METRICS} {problem}; rerun its cifarlab train "
                "command to evaluate it again.",
                stacklevel=2,  # pragma: no mutate (where it points, not what it says)
            )
    return found


def load_best_model(run_dir: str | Path, compile: bool = True):
    """The run's best checkpoint as a `keras.Model`, or a `UserError` if it has none."""
    from cifarlab import models

    path = Path(run_dir) / BEST_MODEL
    if not path.is_file():
        raise UserError(f"{run_dir} has no {BEST_MODEL}; train it first with cifarlab train.")
    builder = read_config(run_dir).model if holds_config(run_dir) else ""
    return models.load_model(path, builder, compile)
