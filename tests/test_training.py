"""Training through the CLI on the tiny official-format archive: run folders, resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from cifarlab import cli, load_data
from cifarlab.run_folder import read_history

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
        (["train", "baseline", "--epochs", "many"], "invalid positive_int value"),
        (["train", "baseline", "--learning-rate", "fast"], "invalid float value"),
        (["train", "baseline", "--val-fraction", "1.5"], "between 0 and 1"),
        (["evaluate", "/no/such/run"], "not a run folder"),
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


def test_killed_run_resumes_with_each_epoch_once(tiny_archive, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cifarlab.cli", "train", "baseline", "--data",
               str(tiny_archive), "--epochs", "12", "--out", str(out), "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(read_history(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(read_history(out))
    assert 2 <= finished < 12 and not (out / "metrics.json").exists()

    arguments = ["train", "baseline", "--data", str(tiny_archive), "--epochs", "12", "--quiet"]
    assert cli.main([*arguments, "--out", str(out)]) == 0
    epochs = [row["epoch"] for row in read_history(out)]
    assert epochs == list(range(12))
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 12
