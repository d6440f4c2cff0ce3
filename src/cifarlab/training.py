"""The notebook's steps E, F and H: train one experiment into a run folder, resumably.

`train_and_evaluate` trains with Keras's stock callbacks (CSV history, BackupAndRestore, and
EarlyStopping when the config asks for it) and two of its own: the checkpoint of the lowest
validation loss, written whole or not at all, and a stop on divergence. It then evaluates the
best checkpoint. The run folder's files are `cifarlab.run_folder`'s; rerunning the same
command continues an interrupted run from its last finished epoch.

    cifarlab train baseline --data cifar-10-python.tar.gz --out runs/baseline
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from cifarlab import environment, evaluation, input_pipeline, models, run_folder, tracking
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.errors import RunError, UserError

log = logging.getLogger(__name__)
# Training steps per host round trip. On a CPU a step of these models takes tens of
# milliseconds and 16 or 64 steps per call measured no faster (bench/README.md); on a GPU a
# step takes about a millisecond, so Python's per-step overhead would dominate without it.
CPU_STEPS_PER_EXECUTION = 1
GPU_STEPS_PER_EXECUTION = 32
# Training and validation losses this many times a uniform guess's, ln(classes), mean the run
# diverged.
DIVERGENCE_FACTOR = 20
# The files Keras's BackupAndRestore keeps in the run folder's backup folder.
_BACKUP_WEIGHTS = "latest.weights.h5"
_BACKUP_METADATA = "training_metadata.json"


def train_and_evaluate(
    config: Config,
    run_dir: str | Path,
    data: Dataset,
    overwrite: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
    """Train `config` on `data` into `run_dir`, evaluate the best checkpoint, return its metrics.

    A second process writing the same folder is refused at once; a finished run is refused
    unless `overwrite`, and a folder of another config always. `callbacks` are Keras callbacks
    of your own, run after the stock ones (checkpoint, history, backup) at every epoch.
    """
    run_dir = Path(run_dir)
    with run_folder.exclusive(run_dir):
        _train(config, run_dir, data, overwrite, quiet, tensorboard, callbacks)
        return evaluation.evaluate_run(run_dir, data)


def train_only(
    config: Config,
    run_dir: str | Path,
    data: Dataset,
    quiet: bool = False,
    tensorboard: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> list[dict]:
    """`train_and_evaluate` without the evaluation: the run's history rows once training is
    over. The run is not finished (it has no metrics) until `evaluation.evaluate_run` scores
    it, which is how a search trains its trials and then scores only its best on the test set;
    calling this again resumes an interrupted run, or returns at once when training is over."""
    run_dir = Path(run_dir)
    with run_folder.exclusive(run_dir):
        _train(config, run_dir, data, False, quiet, tensorboard, callbacks)
        return run_folder.read_history(run_dir)


def _train(config, run_dir, data, overwrite, quiet, tensorboard, callbacks) -> None:
    """Prepare the folder and its records, then fit whatever epochs are left."""
    # A run from before data was recorded keeps no record rather than a guessed one.
    record_data = prepare_folder(config, run_dir, data, overwrite)
    keras.utils.set_random_seed(config.seed)
    precision, reason = environment.choose_precision(config.precision, config)
    fitted = config.fitted_to(len(data.y_train))  # The config decides; the data's size scales.
    if fitted is not config:
        log.info("%s: a batch of %d at learning rate %.4g, so that %d training images make "
                 "at least %d steps an epoch.", config.name, fitted.batch_size,
                 fitted.learning_rate, len(data.y_train), config.min_steps_per_epoch)  # fmt: skip
    model = models.build_model(config, data.num_classes, environment.dtype_policy(precision))
    models.adapt(model, input_pipeline.scale(data.x_train[: models.ADAPT_SAMPLE]))
    steps = input_pipeline.steps_per_epoch(len(data.y_train), fitted.batch_size)
    models.compile_model(model, fitted, steps, steps_per_execution())
    run_folder.write_json(run_dir / run_folder.CONFIG, config.to_dict())
    if record_data:
        run_folder.write_json(run_dir / run_folder.DATA, data.record())
    run_folder.write_json(
        run_dir / run_folder.ENVIRONMENT,
        {**environment.record(precision, reason), "data": data.source,
         "batch_size": fitted.batch_size, "learning_rate": fitted.learning_rate},
    )  # fmt: skip
    run_folder.write_text(run_dir / run_folder.MODEL_SUMMARY, models.summary(model))
    initial_epoch = _resume_epoch(run_dir, config)
    if 0 < initial_epoch < config.epochs:
        log.info("%s: resuming at epoch %d of %d.", config.name, initial_epoch + 1,
                 config.epochs)  # fmt: skip
    rows = run_folder.read_history(run_dir, initial_epoch)
    if len(rows) < initial_epoch:
        raise UserError(
            f"{run_dir / run_folder.HISTORY} is damaged (it records {len(rows)} epochs but "
            f"the backup {initial_epoch}); remove the run."
        )
    run_folder.write_history(run_dir, rows)
    if not training_over(rows, config):
        diverged = _fit(model, fitted, data, run_dir, rows, quiet, tensorboard, callbacks)
        if diverged is not None:
            raise RunError(
                f"Training diverged in {run_dir} (loss {diverged:.4g}; a uniform guess's "
                f"is {math.log(max(2, data.num_classes)):.2f}); the best checkpoint so far "
                f"is kept in {run_folder.BEST_MODEL}. Try a lower --learning-rate."
            )


def steps_per_execution() -> int:
    """Training steps per host round trip on this machine's device."""
    on_gpu = environment.gpu_name() is not None
    return GPU_STEPS_PER_EXECUTION if on_gpu else CPU_STEPS_PER_EXECUTION


def prepare_folder(config: Config, run_dir: Path, data: Dataset, overwrite: bool) -> bool:
    """Refuse to mix a different config or other data into a run folder, or to redo a finished
    run unasked; with `overwrite`, clear the run first. True if the folder is to record `data`
    (one that has not trained yet, or one that recorded its data already)."""
    if overwrite:
        run_folder.clear(run_dir)
    remedy = "choose another --out or pass --overwrite to replace it"
    run_folder.check_same_run(run_dir, config, data.record(), remedy)
    if run_folder.is_finished(run_dir):
        raise UserError(f"{run_dir} holds a finished run; pass --overwrite to train it again.")
    trained_before = (run_dir / run_folder.HISTORY).is_file()
    return not trained_before or run_folder.read_data_record(run_dir) is not None


def _fit(model, config, data, run_dir, rows, quiet, tensorboard, extra_callbacks) -> float | None:
    """Fit with the stock callbacks after the epochs in `rows`; the loss that stopped it if
    training diverged, else None."""
    first_epoch = len(rows)
    best_so_far = min((row["val_loss"] for row in rows), default=None)
    checkpoint = BestCheckpoint(run_dir / run_folder.BEST_MODEL, best_so_far)
    divergence = StopOnDivergence(DIVERGENCE_FACTOR * math.log(max(2, data.num_classes)))
    callbacks = [
        EpochTimer(),  # First, so the other callbacks see each epoch's seconds.
        EpochSeeds(config.seed),
        checkpoint,
        keras.callbacks.CSVLogger(run_dir / run_folder.HISTORY, append=True),
        keras.callbacks.BackupAndRestore(run_dir / run_folder.BACKUP, double_checkpoint=True),
        divergence,
    ]
    steps_per_epoch = input_pipeline.steps_per_epoch(len(data.y_train), config.batch_size)
    if config.lookahead:  # After BackupAndRestore, which restores the weights it starts from.
        callbacks.append(models.Lookahead(config.epochs * steps_per_epoch))
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(config.early_stopping_patience, rows))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / run_folder.LOGS))
        tracking.write_hparams(
            run_dir / run_folder.LOGS, config.to_dict(), tracking.run_name(run_dir)
        )
    callbacks.extend(extra_callbacks)
    train = input_pipeline.training_batches(
        data.x_train, data.y_train, data.num_classes, config.batch_size,
        config.augmentation, config.seed, first_epoch, config.epochs,
    )  # fmt: skip
    validation = input_pipeline.evaluation_batches(data.x_val, data.y_val, data.num_classes)
    # A tf.data stream covers every remaining epoch; a PyDataset is one epoch long.
    steps = None if isinstance(train, keras.utils.PyDataset) else steps_per_epoch
    model.fit(
        train,
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        callbacks=callbacks,
        shuffle=False,  # The batches are shuffled by the input pipeline itself.
        verbose=2 if quiet else 1,  # pragma: no mutate (what Keras prints, not what it does)
    )
    return divergence.loss


def _resume_epoch(run_dir: Path, config: Config) -> int:
    """The number of finished epochs to keep: BackupAndRestore's, or all if training ended.

    Each epoch's history row is written before its backup, so a kill while the row is written
    tears a row past the backup, which the resume drops unread.
    """
    _repair_backup(run_dir / run_folder.BACKUP)
    metadata = run_dir / run_folder.BACKUP / _BACKUP_METADATA
    if metadata.is_file():
        return int(run_folder.read_json(metadata)["epoch"])
    try:
        rows = run_folder.read_history(run_dir)
    except UserError:
        # Without a backup, training ended (every row counts) or never backed up its first
        # epoch (none does): a torn first and only row is the one a kill left, and is dropped.
        if run_folder.count_history_rows(run_dir) > 1:
            raise
        return 0
    trained = training_over(rows, config) and (run_dir / run_folder.BEST_MODEL).is_file()
    return len(rows) if trained else 0


def training_over(rows: list[dict], config: Config) -> bool:
    """True if training is over after the epochs in `rows`: all of them were run, or early
    stopping ended it (`patience` epochs without a new lowest validation loss)."""
    patience = config.early_stopping_patience
    if len(rows) >= config.epochs:
        return True
    losses = [row["val_loss"] for row in rows]
    return 0 < patience < len(losses) and min(losses[-patience:]) >= min(losses[:-patience])


def _repair_backup(backup: Path) -> None:
    """Leave BackupAndRestore's folder whole after a kill in the middle of its save.

    Keras writes its weights and then its epoch number in place, keeping the previous pair as
    `.bkp` copies; it falls back on them only for unreadable weights. Here either torn file
    brings back the previous pair, and with no previous pair (a kill while saving epoch 1) the
    backup is dropped, so the run starts afresh rather than failing.
    """
    current = (backup / _BACKUP_WEIGHTS, backup / _BACKUP_METADATA)
    previous = tuple(path.with_name(f"{path.name}.bkp") for path in current)
    if not backup.is_dir() or _readable_backup(*current):
        return
    if _readable_backup(*previous):
        for source, target in zip(previous, current, strict=True):
            shutil.copyfile(source, target)
    else:
        shutil.rmtree(backup)


def _readable_backup(weights: Path, metadata: Path) -> bool:
    import h5py

    try:
        int(json.loads(metadata.read_text())["epoch"])
        with h5py.File(weights, "r"):  # pragma: no mutate (h5py's default mode is "r" too)
            return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping on the validation loss, counting the epochs an interrupted run
    already ran, so a resumed run stops where an uninterrupted one would."""

    def __init__(self, patience: int, rows: list[dict]):
        # pragma below: Keras's default monitor is "val_loss" too; it is named here for readers.
        super().__init__(monitor="val_loss", patience=patience)  # pragma: no mutate
        self.losses = [row["val_loss"] for row in rows]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # pragma: no mutate (Keras's ignores its logs)
        if self.losses:
            best = self.losses.index(min(self.losses))  # Keras keeps the first of equal values.
            self.best, self.wait = self.losses[best], len(self.losses) - 1 - best


class BestCheckpoint(keras.callbacks.Callback):
    """Keras's `ModelCheckpoint(monitor="val_loss", save_best_only=True)` rule, each save
    written whole or not at all: ModelCheckpoint writes the file in place, so a full disk or a
    kill during the save tore the previous best checkpoint; here the model goes to a temporary
    name that is renamed over it."""

    def __init__(self, path: Path, best: float | None = None):
        super().__init__()
        self.path = path
        self.best = math.inf if best is None else best  # Lowest validation loss saved so far.

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get("val_loss")
        if current is None or not float(current) < self.best:  # NaN is never better.
            return
        self.best = float(current)
        with run_folder.atomic_path(self.path, suffix=".keras") as partial:
            self.model.save(partial)


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training when the loss stops being a number, or when an epoch ends with both the
    training and the validation loss above `limit`.

    Keras's TerminateOnNaN catches only NaN and infinity, but a run whose learning rate blew up
    can keep a finite loss: about 1e25 was measured at learning rate 1e12 on an AMX Xeon, in
    bfloat16 and float32, where an AVX2 CPU gets NaN. A high training loss alone is no proof:
    at learning rate 0.01 the notebook's network averaged 16.3 over its first epoch on a few
    images (the cross-entropy is computed from the logits, so unbounded) and then learned,
    with a validation loss of 2.6, and `batchnorm` at 0.1 ended an epoch at 9.5 on both. Both
    losses beyond 20 times a uniform guess's (46 for ten classes) leave no such doubt.
    """

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit
        self.loss: float | None = None  # The loss that stopped training, if any.

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(float(loss))

    def on_epoch_end(self, epoch, logs=None):
        losses = [float((logs or {}).get(key, 0.0)) for key in ("loss", "val_loss")]
        if self.loss is None and all(not loss <= self.limit for loss in losses):
            self._stop(losses[0])

    def _stop(self, loss: float) -> None:
        self.loss = loss
        self.model.stop_training = True


class EpochSeeds(keras.callbacks.Callback):
    """Sets the state of every random-number generator in the model (Dropout's) from
    (seed, epoch) as each epoch begins, so its draws depend only on those, as the batch order
    does: BackupAndRestore keeps weights and optimizer but not these states, and a resumed run
    replayed epoch 1's dropout masks in epoch 2 (found by `tests/test_promises.py`)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            # Seeds in [0, 2^31): what every backend's generator state accepts.
            seed = np.random.default_rng([self.seed, epoch, index]).integers(0, 2**31, 2)
            state.assign(seed.astype(state.dtype))


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall-clock seconds (training and validation) to the epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self.started
