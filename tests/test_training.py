"""Training through the CLI on the tiny official-format archive: run folders, resume, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from cifarlab import cli, load_data
from cifarlab import environment as cifarlab_environment
from cifarlab.run_folder import read_config, read_history
from tests.conftest import kill_once_backed_up, write_cifar10_archive

EXPERIMENTS = ("baseline", "augmented", "batchnorm")
METRICS_KEYS = {
    "experiment", "params", "epochs_run", "best_epoch", "train", "val", "test", "per_class",
    "confusion_matrix", "train_seconds",
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_archive, tmp_path_factory):
    """One epoch of each experiment, trained through the CLI's own entry point."""
    root = tmp_path_factory.mktemp("runs")
    for name in EXPERIMENTS:
        arguments = ["train", name, "--data", str(tiny_archive), "--epochs", "1", "--quiet"]
        assert cli.main([*arguments, "--out", str(root / name)]) == 0
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_run_folder_has_the_contract_files(runs, name):
    folder = runs / name
    for file in ("config.json", "best.keras", "history.csv", "metrics.json", "summary.txt"):
        assert (folder / file).is_file(), file
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) >= METRICS_KEYS
    assert metrics["experiment"] == name
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    assert np.array(metrics["confusion_matrix"]).shape == (10, 10)
    assert np.array(metrics["confusion_matrix"]).sum() == 40  # The tiny archive's test images.
    assert set(metrics["per_class"]["cat"]) >= {"precision", "recall", "f1"}
    for split in ("train", "val", "test"):
        assert 0 <= metrics[split]["accuracy"] <= 1 and np.isfinite(metrics[split]["loss"])
    header = (folder / "history.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(header)
    assert "Total params" in (folder / "summary.txt").read_text()
    assert json.loads((folder / "config.json").read_text())["name"] == name
    environment = json.loads((folder / "environment.json").read_text())
    # --precision auto: the precision chosen, and why, are recorded with the run.
    chosen = cifarlab_environment.choose_precision("auto", read_config(folder))
    assert (environment["precision"], environment["precision_reason"]) == chosen


def test_best_checkpoint_reloads_and_predicts_identically(runs, tiny_archive):
    dataset = load_data(tiny_archive)
    model = keras.models.load_model(runs / "batchnorm" / "best.keras")
    saved = np.load(runs / "batchnorm" / "test_probabilities.npy")
    predicted = model.predict(dataset.x_test.astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(predicted, saved, atol=1e-6)


def test_finished_run_is_not_overwritten_unasked(runs, tiny_archive, capsys):
    before = (runs / "baseline" / "best.keras").stat().st_mtime_ns
    arguments = ["train", "baseline", "--data", str(tiny_archive), "--epochs", "1"]
    assert cli.main([*arguments, "--out", str(runs / "baseline")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (runs / "baseline" / "best.keras").stat().st_mtime_ns == before


def test_different_config_in_the_same_folder_is_refused(runs, tiny_archive, capsys):
    arguments = ["train", "baseline", "--data", str(tiny_archive), "--epochs", "2"]
    assert cli.main([*arguments, "--out", str(runs / "baseline")]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "resnet"], "Unknown experiment"),
        (["train", "baseline", "--data", "/no/such/archive.tar.gz"], "does not exist"),
        (["train", "baseline", "--epochs", "0"], "positive whole number"),
        (["train", "baseline", "--epochs", "many"], "expected a positive whole number, got many"),
        (["train", "baseline", "--learning-rate", "fast"], "expected a positive number, got fast"),
        (["train", "baseline", "--val-fraction", "1.5"], "between 0 and 1"),
        (["evaluate", "/no/such/run"], "Run folder /no/such/run does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(arguments, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", *arguments, "--out", str(tmp_path)]
        if arguments[0] == "train"
        else [sys.executable, "-m", "cifarlab.cli", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


RECORD_RESTORED_STATE = """
import sys
import keras
import numpy as np
from cifarlab import cli

restore = keras.callbacks.BackupAndRestore.on_train_begin


def record(self, logs=None):
    # Keras's own restore runs first; then the state the resumed epoch starts from is saved.
    restore(self, logs)
    np.savez(sys.argv[1], *[np.asarray(v) for v in self.model.weights],
             *[np.asarray(v) for v in self.model.optimizer.variables])


keras.callbacks.BackupAndRestore.on_train_begin = record
sys.exit(cli.main(sys.argv[2:]))
"""


def train_command(out, archive, epochs: int = 4) -> list[str]:
    return ["train", "baseline", "--data", str(archive), "--epochs", str(epochs),
            "--batch-size", "8", "--out", str(out), "--quiet",
            "--precision", "float32"]  # fmt: skip


@pytest.fixture(scope="module")
def killed_in_epoch_2(tmp_path_factory):
    """`cifarlab train` for 4 epochs, `kill -9`ed just after it backed up epoch 1: its run
    folder, archive and cache, for each test to resume a copy of.

    400 images at batch 8 (320 train, 40 steps, about 1.5 s an epoch on a CPU): a kill within
    20 ms of the backup of epoch 1 lands in epoch 2.
    """
    root = tmp_path_factory.mktemp("killed")
    archive = write_cifar10_archive(root / "cifar-10-python.tar.gz", per_class=40)
    out = root / "run"
    environment = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "cifarlab.cli", *train_command(out, archive)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)  # fmt: skip
    kill_once_backed_up(process, out / "backup")
    assert len(read_history(out)) == 1 and not (out / "metrics.json").exists()
    return out, archive, environment


def copy_of_killed(killed_in_epoch_2, tmp_path) -> tuple[list[str], dict]:
    """A copy of the killed run in `tmp_path / "run"`: the command that resumes it, and its
    environment."""
    out, archive, environment = killed_in_epoch_2
    shutil.copytree(out, tmp_path / "run")
    return train_command(tmp_path / "run", archive), environment


def test_a_run_killed_in_epoch_2_resumes_from_the_state_saved_at_the_end_of_epoch_1(
    killed_in_epoch_2, tmp_path
):
    arguments, environment = copy_of_killed(killed_in_epoch_2, tmp_path)
    out = tmp_path / "run"
    assert len(read_history(out)) == 1 and not (out / "metrics.json").exists()
    # Epoch 1 is the best so far, so best.keras holds the end of epoch 1: weights and optimizer.
    end_of_epoch_1 = keras.models.load_model(out / "best.keras")
    saved = [np.asarray(v) for v in (*end_of_epoch_1.weights, *end_of_epoch_1.optimizer.variables)]
    assert int(end_of_epoch_1.optimizer.iterations.numpy()) == 40  # 320 images / 8 per step.

    restored_path = tmp_path / "restored.npz"
    subprocess.run([sys.executable, "-c", RECORD_RESTORED_STATE, str(restored_path), *arguments],
                   check=True, capture_output=True, env=environment)  # fmt: skip
    with np.load(restored_path) as restored:
        arrays = [restored[f"arr_{index}"] for index in range(len(restored.files))]
    assert len(arrays) == len(saved)
    for restored_array, saved_array in zip(arrays, saved, strict=True):
        np.testing.assert_array_equal(restored_array, saved_array)

    rows = read_history(out)
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    # The checkpoint kept is the best of all four epochs, the one from before the kill included:
    # evaluating it on the validation images gives the lowest validation loss of the history.
    best = min(range(4), key=lambda index: rows[index]["val_loss"])
    assert metrics["best_epoch"] == best + 1
    assert metrics["val"]["loss"] == pytest.approx(rows[best]["val_loss"], rel=1e-3, abs=1e-5)


def test_a_backup_torn_by_a_kill_is_repaired_not_fatal(killed_in_epoch_2, tmp_path, monkeypatch):
    arguments, environment = copy_of_killed(killed_in_epoch_2, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", environment["XDG_CACHE_HOME"])
    out = tmp_path / "run"
    weights = out / "backup" / "latest.weights.h5"
    # As a kill in the middle of Keras's first save leaves it: half the weights, no epoch number.
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (out / "backup" / "training_metadata.json").unlink()
    assert cli.main(arguments) == 0
    assert [row["epoch"] for row in read_history(out)] == [0, 1, 2, 3]


def stops_early(losses: list[float], patience: int) -> bool:
    """Keras's rule: `patience` epochs in a row without a new lowest validation loss."""
    return len(losses) > patience and min(losses[-patience:]) >= min(losses[:-patience])


def test_early_stopping_stops_by_keras_rule_and_a_rerun_evaluates_without_retraining(
    tiny_archive, tmp_path, capsys
):
    experiments = tmp_path / "impatient.toml"
    experiments.write_text(
        '[experiments.impatient]\nbase = "baseline"\nearly_stopping_patience = 1\n'
        "learning_rate = 0.01\n"
    )
    out = tmp_path / "run"
    arguments = ["train", "impatient", "--experiments", str(experiments), "--data",
                 str(tiny_archive), "--epochs", "12", "--out", str(out), "--quiet"]  # fmt: skip
    assert cli.main(arguments) == 0
    losses = [row["val_loss"] for row in read_history(out)]
    assert len(losses) < 12, "a learning rate this high should stop early on 64 images"
    assert stops_early(losses, 1)
    assert not any(stops_early(losses[:end], 1) for end in range(1, len(losses)))

    # A kill while evaluating leaves the history without metrics: the rerun only evaluates.
    (out / "metrics.json").unlink()
    assert cli.main(arguments) == 0
    assert [row["val_loss"] for row in read_history(out)] == losses
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == len(losses)


@pytest.mark.parametrize(
    "diverging",
    [
        ["--learning-rate", "1e12"],  # NaN on AVX2 CPUs, a finite 1e25 on an AMX Xeon.
        ["--model", "tests.custom_models:confidently_wrong"],  # Finite on every CPU.
    ],
    ids=["blown-up-learning-rate", "finite-but-far-above-chance"],
)
def test_a_diverging_run_stops_with_one_sentence(diverging, tiny_archive, tmp_path, capsys):
    out = tmp_path / "run"
    arguments = ["train", "baseline", "--data", str(tiny_archive), "--epochs", "3",
                 "--precision", "float32", *diverging, "--out", str(out), "--quiet"]  # fmt: skip
    assert cli.main(arguments) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("cifarlab: Training diverged") and "Traceback" not in error
    assert len(read_history(out)) == 1 and not (out / "metrics.json").exists()
