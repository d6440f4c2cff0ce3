"""Training's own rules, one at a time, on real folders and a real (tiny) Keras model: where a
resume starts, when training is over, how a torn backup is repaired, and what each callback
does with the numbers Keras hands it. The end-to-end runs are in `test_training.py` and
`test_promises.py`.
"""

from __future__ import annotations

import json
import math

import h5py
import keras
import numpy as np
import pytest

from cifarlab import config as configs
from cifarlab import evaluation, run_folder, training
from cifarlab.data import dataset
from cifarlab.errors import RunError, UserError
from cifarlab.files import write_json, write_text

BASELINE = configs.override(configs.experiment("baseline"), epochs=4)
PATIENT = configs.override(BASELINE, epochs=9, early_stopping_patience=2)


def _rows(val_losses: list[float]) -> list[dict]:
    return [{"epoch": epoch, "loss": 1.0, "accuracy": 0.5, "val_loss": loss,
             "val_accuracy": 0.5} for epoch, loss in enumerate(val_losses)]  # fmt: skip


def _tiny_model(dropout: bool = False) -> keras.Model:
    layers = [keras.Input((3,)), keras.layers.Dense(2, activation="softmax")]
    if dropout:
        layers.insert(1, keras.layers.Dropout(0.5, seed=1))
        layers.insert(1, keras.layers.Dropout(0.5, seed=2))
    return keras.Sequential(layers)


def _backup_pair(folder, epoch: int, suffix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"latest.weights.h5{suffix}", "w") as weights:
        weights["w"] = np.full(3, epoch)
    write_json(folder / f"training_metadata.json{suffix}", {"epoch": epoch})


# When training is over.


@pytest.mark.parametrize(("config", "val_losses", "done"), [
    (BASELINE, [], False),
    (BASELINE, [1.0, 0.9, 0.8], False),
    (BASELINE, [1.0, 0.9, 0.8, 0.7], True),  # Every epoch ran.
    (BASELINE, [1.0, 0.9, 0.8, 0.7, 0.6], True),
    (PATIENT, [1.0, 0.9], False),  # No more epochs than the patience: nothing to stop on.
    (PATIENT, [1.0, 0.9, 0.95], False),  # One epoch without a new lowest loss.
    (PATIENT, [1.0, 0.9, 0.95, 0.96], True),  # Two: Keras's rule stops here.
    (PATIENT, [1.0, 0.9, 0.9, 0.91], True),  # Equal to the lowest is no improvement.
    (PATIENT, [1.0, 0.9, 0.95, 0.89], False),  # A new lowest loss in the window.
])  # fmt: skip
def test_training_is_over_when_every_epoch_ran_or_the_patience_ran_out(config, val_losses, done):
    assert training.training_over(_rows(val_losses), config) is done


# Where a resume starts.


def test_a_resume_starts_after_the_backed_up_epoch(tmp_path):
    _backup_pair(tmp_path / run_folder.BACKUP, 2)
    run_folder.write_history(tmp_path, _rows([1.0, 0.9, 0.8]))  # A row past the backup.
    assert training._resume_epoch(tmp_path, BASELINE) == 2


def test_without_a_backup_a_run_starts_over_unless_it_had_finished_training(tmp_path):
    assert training._resume_epoch(tmp_path, BASELINE) == 0
    run_folder.write_history(tmp_path, _rows([1.0, 0.9]))  # Killed before a backup counted.
    assert training._resume_epoch(tmp_path, BASELINE) == 0
    run_folder.write_history(tmp_path, _rows([1.0, 0.9, 0.8, 0.7]))
    assert training._resume_epoch(tmp_path, BASELINE) == 0  # No checkpoint: nothing to keep.
    write_text(tmp_path / run_folder.BEST_MODEL, "checkpoint")
    assert training._resume_epoch(tmp_path, BASELINE) == 4  # Trained; only evaluation is left.


def test_an_early_stopped_run_keeps_all_its_epochs(tmp_path):
    write_text(tmp_path / run_folder.BEST_MODEL, "checkpoint")
    run_folder.write_history(tmp_path, _rows([1.0, 0.9, 0.95, 0.96]))
    assert training._resume_epoch(tmp_path, PATIENT) == 4
    run_folder.write_history(tmp_path, _rows([1.0, 0.9, 0.95, 0.8]))
    assert training._resume_epoch(tmp_path, PATIENT) == 0


def test_a_torn_only_row_without_a_backup_starts_over_and_more_is_refused(tmp_path):
    path = tmp_path / run_folder.HISTORY
    path.write_text("epoch,loss,accuracy,val_loss,val_accuracy\n0,1.0,0.")
    assert training._resume_epoch(tmp_path, BASELINE) == 0
    path.write_text("epoch,loss,accuracy,val_loss,val_accuracy\n0,1,0.5,1,0.5\n1,1.0,0.")
    with pytest.raises(UserError, match="damaged"):
        training._resume_epoch(tmp_path, BASELINE)


# A backup torn by a kill.


def test_a_whole_backup_is_left_as_it_is(tmp_path):
    backup = tmp_path / run_folder.BACKUP
    training._repair_backup(backup)  # No backup: nothing to do.
    assert not backup.exists()
    _backup_pair(backup, 3)
    _backup_pair(backup, 2, ".bkp")
    training._repair_backup(backup)
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 3}


@pytest.mark.parametrize("torn", ["latest.weights.h5", "training_metadata.json"])
def test_a_torn_backup_falls_back_on_the_previous_pair_or_is_dropped(tmp_path, torn):
    backup = tmp_path / run_folder.BACKUP
    _backup_pair(backup, 3)
    _backup_pair(backup, 2, ".bkp")
    write_text(backup / torn, "torn")
    training._repair_backup(backup)
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 2}
    with h5py.File(backup / "latest.weights.h5", "r") as weights:
        np.testing.assert_array_equal(weights["w"][()], np.full(3, 2))
    write_text(backup / torn, "torn")
    for previous in backup.glob("*.bkp"):
        previous.unlink()
    training._repair_backup(backup)  # No previous pair: the run starts afresh.
    assert not backup.exists()


@pytest.mark.parametrize("metadata", ['{"epoch": "two"}', '{"step": 2}', "[2]", "{"])
def test_backup_metadata_without_an_epoch_number_is_unreadable(tmp_path, metadata):
    _backup_pair(tmp_path, 2)
    weights, path = tmp_path / "latest.weights.h5", tmp_path / "training_metadata.json"
    assert training._readable_backup(weights, path)
    write_text(path, metadata)
    assert not training._readable_backup(weights, path)
    assert not training._readable_backup(tmp_path / "missing.h5", tmp_path / "missing.json")


# Refusals before anything trains.


def test_a_folder_is_prepared_only_for_its_own_config_and_data(tiny_archive, tmp_path):
    data = dataset.load_for(BASELINE, tiny_archive)
    assert training.prepare_folder(BASELINE, tmp_path / "new", data, overwrite=False)
    old = tmp_path / "old"  # Trained before cifarlab recorded data: keeps recording none.
    old.mkdir()
    write_json(old / run_folder.CONFIG, BASELINE.to_dict())
    run_folder.write_history(old, _rows([1.0]))
    assert not training.prepare_folder(BASELINE, old, data, overwrite=False)
    write_json(old / run_folder.DATA, data.record())
    assert training.prepare_folder(BASELINE, old, data, overwrite=False)
    other_split = dataset.load_for(configs.override(BASELINE, seed=1), tiny_archive)
    with pytest.raises(UserError, match="was trained on other data"):
        training.prepare_folder(BASELINE, old, other_split, overwrite=False)
    other = configs.override(BASELINE, epochs=5)
    with pytest.raises(UserError, match="choose another --out or pass --overwrite to replace it"):
        training.prepare_folder(other, old, data, overwrite=False)
    write_json(old / run_folder.METRICS, {"experiment": "baseline", "params": 1,
                                          "epochs_run": 1, "best_epoch": 1, "class_names": [],
                                          **{split: {"loss": 1.0, "accuracy": 0.5}
                                             for split in ("train", "val", "test")}})  # fmt: skip
    with pytest.raises(UserError, match="holds a finished run; pass --overwrite"):
        training.prepare_folder(BASELINE, old, data, overwrite=False)
    assert training.prepare_folder(other, old, data, overwrite=True)  # Cleared first.
    assert not (old / run_folder.METRICS).exists() and not (old / run_folder.HISTORY).exists()


def test_a_cpu_takes_one_step_per_call():
    from cifarlab import environment

    expected = (training.GPU_STEPS_PER_EXECUTION if environment.gpu_name()
                else training.CPU_STEPS_PER_EXECUTION)  # fmt: skip
    assert training.steps_per_execution() == expected


# The callbacks.


def test_the_checkpoint_is_saved_only_for_a_new_lowest_validation_loss(tmp_path):
    path = tmp_path / run_folder.BEST_MODEL
    checkpoint = training.BestCheckpoint(path, best=1.0)
    checkpoint.set_model(_tiny_model())
    for logs in ({"val_loss": 1.5}, {"val_loss": 1.0}, {"loss": 0.1}, None,
                 {"val_loss": math.nan}):  # fmt: skip
        checkpoint.on_epoch_end(0, logs)
        assert not path.exists(), logs
    checkpoint.on_epoch_end(1, {"val_loss": np.float32(0.75)})
    assert path.is_file() and checkpoint.best == 0.75
    assert keras.models.load_model(path).count_params() == 8
    path.unlink()
    checkpoint.on_epoch_end(2, {"val_loss": 0.8})
    assert not path.exists()
    assert training.BestCheckpoint(path).best == math.inf


def test_divergence_stops_on_a_loss_that_is_not_a_number_or_two_beyond_the_limit():
    def stopper():
        callback = training.StopOnDivergence(limit=46.0)
        callback.set_model(_tiny_model())
        callback.model.stop_training = False
        return callback

    for loss in (math.nan, math.inf, -math.inf):
        callback = stopper()
        callback.on_train_batch_end(0, {"loss": loss})
        assert callback.model.stop_training and (callback.loss == loss or math.isnan(loss))
    for logs in ({"loss": 1e6}, {}, None):  # Finite, however large: the epoch decides.
        callback = stopper()
        callback.on_train_batch_end(0, logs)
        assert not callback.model.stop_training and callback.loss is None
    for losses, stops in [((47.0, 47.0), True), ((47.0, math.nan), True), ((46.0, 47.0), False),
                          ((47.0, 46.0), False), ((900.0, 2.6), False)]:  # fmt: skip
        callback = stopper()
        callback.on_epoch_end(0, {"loss": losses[0], "val_loss": losses[1]})
        assert callback.model.stop_training is stops, losses
        assert callback.loss == (losses[0] if stops else None)
    callback = stopper()
    callback.on_train_batch_end(0, {"loss": math.inf})
    callback.on_epoch_end(0, {"loss": 50.0, "val_loss": 50.0})
    assert callback.loss == math.inf  # The loss that stopped it first is kept.


def test_each_epochs_random_state_comes_from_seed_and_epoch_alone():
    model = _tiny_model(dropout=True)
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    assert len(states) == 2

    def seeded(seed: int, epoch: int) -> list[np.ndarray]:
        callback = training.EpochSeeds(seed)
        callback.set_model(model)
        callback.on_epoch_begin(epoch)
        return [np.asarray(state) for state in states]

    third = seeded(7, 3)
    for index, state in enumerate(third):
        expected = np.random.default_rng([7, 3, index]).integers(0, 2**31, 2)
        np.testing.assert_array_equal(state, expected.astype(state.dtype))
    seeded(7, 4)
    for again, first in zip(seeded(7, 3), third, strict=True):
        np.testing.assert_array_equal(again, first)
    assert not np.array_equal(seeded(8, 3)[0], third[0])


def test_each_epoch_is_timed_into_its_logs():
    timer = training.EpochTimer()
    timer.on_epoch_begin(0)
    logs = {"loss": 1.0}
    timer.on_epoch_end(0, logs)
    assert logs["loss"] == 1.0 and 0 <= logs["seconds"] < 60
    timer.on_epoch_end(0, None)  # Nothing to write into.


def test_early_stopping_counts_the_epochs_a_resumed_run_already_ran():
    stopping = training.EarlyStopping(patience=3, rows=_rows([1.0, 0.8, 0.9, 0.8, 0.85]))
    stopping.set_model(_tiny_model())
    stopping.on_train_begin()
    # The first of the equal lowest losses counts, as Keras's own comparison keeps it.
    assert (stopping.best, stopping.wait) == (0.8, 3)
    assert (stopping.monitor, stopping.patience) == ("val_loss", 3)
    fresh = training.EarlyStopping(patience=3, rows=[])
    fresh.set_model(_tiny_model())
    fresh.on_train_begin()
    assert (fresh.best, fresh.wait) == (None, 0)  # Keras's own start.


# Whole runs, short and in-process, so that each rule above is also seen in place.

SHORT = configs.override(configs.experiment("baseline"), epochs=2, batch_size=16,
                         precision="float32")  # fmt: skip


class _InterruptedError(Exception):
    pass


class _InterruptAfter(keras.callbacks.Callback):
    """A kill right after epoch `epochs` ends (early in the next one), after the stock
    callbacks (the backup among them) saw it."""

    def __init__(self, epochs: int = 1):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise _InterruptedError


def _interrupted_run(tiny_archive, tmp_path, epochs: int = 1):
    """A 3-epoch SHORT run interrupted after `epochs`: its config, data and folder."""
    run_config = configs.override(SHORT, epochs=3)
    data = dataset.load_for(run_config, tiny_archive)
    run = tmp_path / "run"
    with pytest.raises(_InterruptedError):
        training.train_and_evaluate(run_config, run, data, quiet=True,
                                    callbacks=[_InterruptAfter(epochs)])  # fmt: skip
    return run_config, data, run


def test_a_run_records_what_it_trained(tiny_archive, tmp_path, caplog):
    data = dataset.load_for(SHORT, tiny_archive)
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="cifarlab.training"):
        metrics = training.train_and_evaluate(SHORT, run, data, quiet=True, tensorboard=True)
    assert not [message for message in caplog.messages if "resuming" in message]  # A fresh run.
    assert run_folder.read_config(run) == SHORT
    assert run_folder.read_data_record(run) == json.loads(json.dumps(data.record()))
    environment = json.loads((run / run_folder.ENVIRONMENT).read_text())
    assert (environment["data"], environment["precision"]) == (data.source, "float32")
    assert "Total params" in (run / run_folder.MODEL_SUMMARY).read_text()
    assert [row["epoch"] for row in run_folder.read_history(run)] == [0, 1]
    assert (run / run_folder.BEST_MODEL).is_file()
    # TensorBoard's epoch logs, and the HParams record above them, are in the run's folder.
    logs = run / run_folder.LOGS
    assert list(logs.glob("events.out.tfevents.*")) and list(logs.glob("validation/events.*"))
    assert metrics["epochs_run"] == 2 and run_folder.read_metrics(run) == metrics
    assert environment["precision_reason"] == environment_of_this_machine("float32")


def test_a_finished_run_is_not_redone_unasked(tiny_archive, tmp_path, caplog):
    # Apart from the test above, which trains once: this one trains twice, and the mutation
    # bench (bench/mutation.py) runs each mutant's cheapest tests first.
    data = dataset.load_for(SHORT, tiny_archive)
    run = tmp_path / "run"
    training.train_and_evaluate(SHORT, run, data, quiet=True)
    with pytest.raises(UserError, match="holds a finished run; pass --overwrite"):
        training.train_and_evaluate(SHORT, run, data, quiet=True)
    # Killed while evaluating: the rerun evaluates without training or claiming to resume.
    (run / run_folder.METRICS).unlink()
    rows = run_folder.read_history(run)
    with caplog.at_level("INFO", logger="cifarlab.training"):
        training.train_and_evaluate(SHORT, run, data, quiet=True, overwrite=False)
    assert run_folder.read_history(run) == rows and run_folder.is_finished(run)
    assert not [message for message in caplog.messages if "resuming" in message]
    training.train_and_evaluate(SHORT, run, data, quiet=True, overwrite=True)
    assert run_folder.read_history(run) != rows  # Trained again from scratch.


def test_training_alone_leaves_the_run_unfinished_until_it_is_scored(tiny_archive, tmp_path):
    # How a search trains its trials: scored later, only its best on the test set.
    data = dataset.load_for(SHORT, tiny_archive)
    run = tmp_path / "run"
    rows = training.train_only(SHORT, run, data, quiet=True)
    assert [row["epoch"] for row in rows] == [0, 1] and rows == run_folder.read_history(run)
    assert (run / run_folder.BEST_MODEL).is_file() and not run_folder.is_finished(run)
    assert not (run / run_folder.LOGS).exists()  # TensorBoard only when asked for.
    saved = (run / run_folder.BEST_MODEL).stat().st_mtime_ns
    assert training.train_only(SHORT, run, data, quiet=True) == rows  # Over: returns at once,
    assert (run / run_folder.BEST_MODEL).stat().st_mtime_ns == saved  # nothing trained again.
    assert evaluation.evaluate_run(run, data)["epochs_run"] == 2 and run_folder.is_finished(run)


def environment_of_this_machine(precision: str) -> str:
    from cifarlab import environment

    return environment.choose_precision(precision)[1]


def test_a_users_network_gets_its_precision_pixel_statistics_and_schedule(tiny_archive, tmp_path):
    # The user's network standardizes pixels with statistics `adapt` learns from the training
    # images; the cosine schedule decays over every step of every epoch.
    own = configs.override(SHORT, model="tests.custom_models:small_network", precision="bfloat16",
                           schedule="cosine")  # fmt: skip
    data = dataset.load_for(own, tiny_archive)
    run = tmp_path / "run"
    training.train_and_evaluate(own, run, data, quiet=True)
    model = keras.models.load_model(run / run_folder.BEST_MODEL)
    assert model.get_layer("pixel_statistics").dtype_policy.name == "mixed_bfloat16"
    pixels = data.x_train.astype(np.float64) / 255
    # Kept in bfloat16, whose 8-bit significand rounds within 2⁻⁸ of the value.
    np.testing.assert_allclose(np.ravel(model.get_layer("pixel_statistics").mean),
                               pixels.mean(axis=(0, 1, 2)), rtol=2**-8)  # fmt: skip
    steps = math.ceil(len(data.y_train) / own.batch_size)
    schedule = model.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["decay_steps"] == own.epochs * steps


def test_an_interrupted_run_resumes_at_its_next_epoch_and_says_so(tiny_archive, tmp_path, caplog):
    run_config = configs.override(SHORT, epochs=3)
    data = dataset.load_for(run_config, tiny_archive)
    run = tmp_path / "run"
    with pytest.raises(_InterruptedError):
        training.train_and_evaluate(run_config, run, data, quiet=True,
                                    callbacks=[_InterruptAfter()])  # fmt: skip
    first = run_folder.read_history(run)
    assert len(first) == 1 and not (run / run_folder.LOGS).exists()
    history = (run / run_folder.HISTORY).read_text()
    (run / run_folder.HISTORY).unlink()  # Fewer rows than the backup: refused, kept.
    with pytest.raises(UserError, match=r"is damaged \(it records 0 epochs but the backup 1\)"):
        training.train_and_evaluate(run_config, run, data, quiet=True)
    # A kill while writing epoch 2's row tore it past the backup: the resume drops it unread.
    (run / run_folder.HISTORY).write_text(history + "1,2.0,0.")
    with caplog.at_level("INFO", logger="cifarlab.training"):
        training.train_and_evaluate(run_config, run, data, quiet=True)
    assert "baseline: resuming at epoch 2 of 3." in caplog.messages
    rows = run_folder.read_history(run)
    assert [row["epoch"] for row in rows] == [0, 1, 2] and rows[0] == first[0]


def test_a_diverging_run_stops_naming_its_loss_and_keeps_its_checkpoint(tiny_archive, tmp_path):
    wrong = configs.override(SHORT, epochs=3, model="tests.custom_models:confidently_wrong")
    data = dataset.load_for(wrong, tiny_archive)
    run = tmp_path / "run"
    with pytest.raises(RunError) as stopped:
        training.train_and_evaluate(wrong, run, data, quiet=True)
    message = str(stopped.value)
    assert message.startswith(f"Training diverged in {run} (loss ")
    assert message.endswith("; a uniform guess's is 2.30); the best checkpoint so far is kept "
                            "in best.keras. Try a lower --learning-rate.")  # fmt: skip
    assert len(run_folder.read_history(run)) == 1 and (run / run_folder.BEST_MODEL).is_file()
    assert not run_folder.is_finished(run)


def test_a_run_with_patience_stops_where_keras_rule_says_and_resumes_counting(tiny_archive,
                                                                             tmp_path):  # fmt: skip
    # Patience 1 over 4 epochs: the run ends at the first epoch whose validation loss is not a
    # new lowest, or after all four; interrupted after epoch 1, it counts that epoch on resume.
    patient = configs.override(SHORT, epochs=4, early_stopping_patience=1, learning_rate=3e-2)
    data = dataset.load_for(patient, tiny_archive)
    run = tmp_path / "run"
    with pytest.raises(_InterruptedError):
        training.train_and_evaluate(patient, run, data, quiet=True,
                                    callbacks=[_InterruptAfter()])  # fmt: skip
    metrics = training.train_and_evaluate(patient, run, data, quiet=True)
    losses = [row["val_loss"] for row in run_folder.read_history(run)]
    improved = [loss < min(losses[:index], default=math.inf) for index, loss in enumerate(losses)]
    expected = improved.index(False) + 1 if False in improved else patient.epochs
    assert len(losses) == expected == metrics["epochs_run"]


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_a_run_that_cannot_improve_stops_once_its_patience_is_spent(tiny_archive, tmp_path):
    # Epoch 2's validation loss equals epoch 1's, so it is no new lowest: patience 1 is spent.
    stuck = configs.override(SHORT, epochs=4, early_stopping_patience=1,
                             model="tests.custom_models:uniform_guess")  # fmt: skip
    data = dataset.load_for(stuck, tiny_archive)
    metrics = training.train_and_evaluate(stuck, tmp_path / "run", data, quiet=True)
    rows = run_folder.read_history(tmp_path / "run")
    assert [row["val_loss"] for row in rows] == [rows[0]["val_loss"]] * 2
    assert metrics["epochs_run"] == 2 and training.training_over(rows, stuck)


def test_a_resumed_run_keeps_the_checkpoint_of_an_earlier_lower_loss(tiny_archive, tmp_path):
    # Epoch 1's validation loss, made 1e-9 by hand, is one no later epoch can beat (Keras clips
    # probabilities to 1 - 1e-7, so a cross-entropy stays above about 1e-7): the resume must go
    # on from that lowest loss, not save epoch 2 as the first it sees.
    run_config, data, run = _interrupted_run(tiny_archive, tmp_path)
    header, row = (run / run_folder.HISTORY).read_text().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    values["val_loss"] = "1e-09"
    write_text(run / run_folder.HISTORY, f"{header}\n{','.join(values.values())}\n")
    epoch_1 = (run / run_folder.BEST_MODEL).read_bytes()
    metrics = training.train_and_evaluate(run_config, run, data, quiet=True)
    assert (run / run_folder.BEST_MODEL).read_bytes() == epoch_1
    assert metrics["best_epoch"] == 1 and metrics["epochs_run"] == 3


def test_a_backup_keeps_the_previous_epochs_pair_for_a_kill_mid_save(tiny_archive, tmp_path):
    # The pair `_repair_backup` falls back on: Keras's double checkpoint keeps epoch 1's weights
    # and number beside epoch 2's.
    backup = _interrupted_run(tiny_archive, tmp_path, epochs=2)[2] / run_folder.BACKUP
    for suffix, epoch in (("", 2), (".bkp", 1)):
        metadata = json.loads((backup / f"training_metadata.json{suffix}").read_text())
        assert metadata["epoch"] == epoch
        with h5py.File(backup / f"latest.weights.h5{suffix}", "r"):
            pass
