"""What a user sees while a study runs and when it ends, through the real command line with its
output piped: where the study is and the time left, "resuming at epoch N", a closing table with
the verdicts, what early stopping would have saved, figures drawn by `train`, TensorBoard logs,
and "did you mean" for typos."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import write_cifar10_archive
from tests.test_cli import assert_one_sentence, cifarlab


def test_a_study_says_where_it_is_and_ends_with_its_verdicts(tiny_archive, tmp_path):
    result = cifarlab("study", "--data", tiny_archive, "--out", tmp_path / "study",
                      "--epochs", "2", "--experiments", "baseline,batchnorm",
                      "--precision", "float32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "baseline (experiment 1 of 2)" in out and "batchnorm (experiment 2 of 2)" in out
    done = [int(n) for n in re.findall(r"study (\d+) of 4 epochs, about .* left", out)]
    assert done == [1, 2, 3, 4]
    table = out[out.index("experiment   best epoch") :].splitlines()
    assert re.match(r"baseline\s+\d of 2\s+\d+\.\d\d%\s+\S", table[1]), table
    assert re.match(r"batchnorm\s+\d of 2\s+\d+\.\d\d%\s+\S", table[2]), table
    assert out.rstrip().endswith("report.html")


def test_train_draws_its_figures_says_its_verdict_and_the_epochs_early_stopping_saves(
    tiny_archive, tmp_path
):
    out = tmp_path / "run"
    result = cifarlab("train", "batchnorm", "--data", tiny_archive, "--out", out,
                      "--epochs", "8", "--learning-rate", "0.1", "--precision", "float32",
                      "--tensorboard")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for figure in ("curves.png", "confusion.png", "per_class.png", "errors.png", "features.png"):
        assert (out / figure).is_file(), figure
        assert figure in result.stdout
    assert any((out / "logs" / "train").iterdir())  # TensorBoard's event files.
    best, epochs = map(int, re.search(r"batchnorm\s+(\d+) of (\d+)", result.stdout).groups())
    saved = epochs - best - 5
    note = f"--early-stopping 5 would have stopped {saved} epochs sooner"
    assert (note in result.stdout) == (saved > 0), result.stdout


def test_a_resumed_run_says_where_it_resumes(tmp_path):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_class=40)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cifarlab.cli", "train", "baseline", "--data",
               str(archive), "--out", str(out), "--epochs", "3", "--batch-size", "4",
               "--precision", "float32"]  # fmt: skip
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)  # fmt: skip
    history = out / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        # Epoch 1 in the history and in Keras's backup: the kill lands in epoch 2. The backup's
        # metadata file exists (empty) a moment before Keras writes its epoch number into it.
        if history.is_file() and "epoch" in _text(out / "backup" / "training_metadata.json"):
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if len(history.read_text().splitlines()) != 2:
        pytest.fail("the run did not stop in epoch 2; make its epochs longer")
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    assert "baseline: resuming at epoch 2 of 3." in result.stdout


def _text(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["train", "baseLine"], "(did you mean 'baseline'?)"),
        (["study", "--experiments", "baseline,batchnrom"], "(did you mean 'batchnorm'?)"),
    ],
)
def test_a_typo_is_answered_with_the_closest_name(arguments, expected):
    result = cifarlab(*arguments)
    assert result.returncode == 2
    assert expected in assert_one_sentence(result.stderr)


def test_a_typo_in_an_experiment_file_names_the_setting_meant(tmp_path):
    declared = tmp_path / "mine.toml"
    declared.write_text('[experiments.less]\nbase = "baseline"\ndropuot = 0.25\n')
    result = cifarlab("experiments", "show", "less", "--experiments", declared)
    assert result.returncode == 2
    assert "unknown setting 'dropuot' (did you mean 'dropout'?)" in result.stderr


@pytest.mark.parametrize("name", ["baseline", "augmented", "batchnorm", "modern"])
def test_experiments_show_prints_a_table_that_pastes_back_into_a_file(name, tmp_path):
    from cifarlab import config, experiments

    result = cifarlab("experiments", "show", name)
    assert result.returncode == 0, result.stderr
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(result.stdout)
    assert experiments.load_file(pasted)[name] == config.experiment(name)
