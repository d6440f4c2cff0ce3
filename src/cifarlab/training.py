"""The notebook's steps E, F and H: train one experiment into a run folder, resumably.

A run folder holds `config.json`, `environment.json`, `summary.txt`, `history.csv` (one row per
finished epoch), `best.keras` (the lowest validation loss so far) and, once evaluated,
`metrics.json`. Rerunning the same command continues an interrupted run from its last
finished epoch.

    cifarlab train baseline --data cifar-10-python.tar.gz --out runs/baseline
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import keras

from cifarlab import environment, evaluation, models, pipeline
from cifarlab.config import Config
from cifarlab.data import Dataset
from cifarlab.errors import RunError, UserError
from cifarlab.runs import read_history

# Training steps per host round trip. On a CPU a step of these models takes tens of
# milliseconds and 16 or 64 steps per call measured no faster (bench/README.md); on a GPU a
# step takes about a millisecond, so Python's per-step overhead would dominate without it.
CPU_STEPS_PER_EXECUTION = 1
GPU_STEPS_PER_EXECUTION = 32
_BACKUP = "backup"  # BackupAndRestore's folder inside the run folder.


def run(
    config: Config,
    out_dir: str | Path,
    data: Dataset,
    overwrite: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
) -> dict:
    """Train `config` on `data` into `out_dir`, evaluate the best checkpoint, return its metrics."""
    out_dir = Path(out_dir)
    prepare_folder(config, out_dir, overwrite)
    keras.utils.set_random_seed(config.seed)
    precision = environment.resolve_precision(config.precision)
    model = models.build_model(config, data.num_classes, environment.dtype_policy(precision))
    models.compile_model(model, config, steps_per_execution())
    config.save(out_dir / "config.json")
    _write_json(
        out_dir / "environment.json", {**environment.describe(precision), "data": data.source}
    )
    (out_dir / "summary.txt").write_text(models.summary(model))

    history_path = out_dir / "history.csv"
    initial_epoch = _resume_epoch(out_dir, config)
    rows = read_history(history_path)[:initial_epoch]
    _write_history(history_path, rows)
    if initial_epoch < config.epochs:
        best_so_far = min((row["val_loss"] for row in rows), default=None)
        stopped_on_nan = _fit(model, config, data, out_dir, best_so_far, quiet, tensorboard)
        if stopped_on_nan:
            raise RunError(
                f"Training loss became NaN in {out_dir}; the best checkpoint so far is kept in "
                "best.keras. Try a lower --learning-rate."
            )
    return evaluation.run(out_dir, data, quiet=quiet)


def steps_per_execution() -> int:
    """Training steps per host round trip on this machine's device."""
    on_gpu = environment.gpu_name() is not None
    return GPU_STEPS_PER_EXECUTION if on_gpu else CPU_STEPS_PER_EXECUTION


def prepare_folder(config: Config, out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a different config into a run folder, or redo a finished run unasked."""
    config_path = out_dir / "config.json"
    if config_path.is_file():
        if overwrite:
            shutil.rmtree(out_dir)
        elif Config.load(config_path) != config:
            raise UserError(
                f"{out_dir} holds a run with a different config; choose another --out "
                "or pass --overwrite to replace it."
            )
        elif (out_dir / "metrics.json").is_file():
            raise UserError(f"{out_dir} holds a finished run; pass --overwrite to train it again.")
    out_dir.mkdir(parents=True, exist_ok=True)


def _fit(model, config, data, out_dir, best_so_far, quiet, tensorboard) -> bool:
    """Fit with the stock callbacks; True if training stopped because the loss became NaN."""
    checkpoint = keras.callbacks.ModelCheckpoint(
        out_dir / "best.keras",
        monitor="val_loss",
        save_best_only=True,
        initial_value_threshold=best_so_far,
    )
    callbacks = [
        EpochTimer(),  # First, so the other callbacks see each epoch's seconds.
        checkpoint,
        keras.callbacks.CSVLogger(out_dir / "history.csv", append=True),
        keras.callbacks.BackupAndRestore(out_dir / _BACKUP, double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "logs"))
    train = pipeline.training_batches(
        data.x_train, data.y_train, data.num_classes, config.batch_size,
        config.augmentation, config.seed,
    )  # fmt: skip
    validation = pipeline.evaluation_batches(data.x_val, data.y_val, data.num_classes)
    model.fit(
        train,
        epochs=config.epochs,
        validation_data=validation,
        callbacks=callbacks,
        shuffle=False,  # The batches are shuffled by the input pipeline itself.
        verbose=2 if quiet else 1,
    )
    # TerminateOnNaN is the only callback here that stops training early.
    return bool(model.stop_training)


def _resume_epoch(out_dir: Path, config: Config) -> int:
    """The number of finished epochs to keep: BackupAndRestore's, or all if training ended."""
    metadata = out_dir / _BACKUP / "training_metadata.json"
    if metadata.is_file():
        return int(json.loads(metadata.read_text())["epoch"])
    finished = len(read_history(out_dir / "history.csv"))
    trained = finished >= config.epochs and (out_dir / "best.keras").is_file()
    return config.epochs if trained else 0


def _write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall-clock seconds (training and validation) to the epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self.started


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")
