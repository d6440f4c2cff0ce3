"""`--track mlflow` and `--tensorboard`'s HParams: a study's runs where MLflow and TensorBoard
look, recorded from the run folders, once, and never at the cost of a training."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

mlflow = pytest.importorskip("mlflow")


def cifarlab(*arguments, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """The command run in `cwd`, where MLflow puts the artifacts of a new experiment."""
    command = [sys.executable, "-m", "cifarlab.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def tracked_study(tiny_archive, tmp_path_factory):
    """A two-experiment study of one epoch each, with --track mlflow and --tensorboard."""
    folder = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    done = cifarlab("study", "--data", tiny_archive, "--out", folder / "runs", "--epochs", 2,
                    "--experiments", "baseline,batchnorm", "--precision", "float32", "--quiet",
                    "--tensorboard", "--track", "mlflow", env=env, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "runs", store


def _client(store: str):
    return mlflow.MlflowClient(tracking_uri=store)


def _runs(store: str, runs_folder) -> dict:
    client = _client(store)
    experiment = client.get_experiment_by_name(f"study {runs_folder.resolve()}")
    return {run.data.tags["mlflow.runName"]: run
            for run in client.search_runs([experiment.experiment_id])}  # fmt: skip


def test_a_tracked_study_records_each_runs_config_history_metrics_verdict_and_figures(
    tracked_study,
):
    runs_folder, store = tracked_study
    runs = _runs(store, runs_folder)
    assert sorted(runs) == ["baseline", "batchnorm"]
    client = _client(store)
    for name, run in runs.items():
        folder = runs_folder / name
        config = json.loads((folder / "config.json").read_text())
        assert run.data.params["learning_rate"] == str(config["learning_rate"])
        assert run.data.params["augmentation.horizontal_flip"] == "False"
        with (folder / "history.csv").open() as handle:
            history = list(csv.DictReader(handle))
        recorded = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(m.step, m.value) for m in recorded] == [
            (int(row["epoch"]) + 1, pytest.approx(float(row["val_loss"]))) for row in history
        ]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert run.data.metrics["final_test_accuracy"] == pytest.approx(
            metrics["test"]["accuracy"]
        )
        assert run.data.tags["verdict"] == metrics["diagnosis"]["verdict"]
        assert run.data.tags["cifarlab.run_folder"] == str(folder.resolve())
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"curves.png", "confusion.png", "config.json", "history.csv"} <= artifacts
    assert runs["baseline"].data.params["learning_rate"] != runs["batchnorm"].data.params[
        "learning_rate"
    ]


def test_a_study_rerun_reuses_its_runs_and_records_nothing_twice(tracked_study, tiny_archive):
    runs_folder, store = tracked_study
    before = {name: run.info.run_id for name, run in _runs(store, runs_folder).items()}
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    done = cifarlab("study", "--data", tiny_archive, "--out", runs_folder, "--epochs", 2,
                    "--experiments", "baseline,batchnorm", "--precision", "float32", "--quiet",
                    "--track", "mlflow", env=env, cwd=runs_folder.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = {name: run.info.run_id for name, run in _runs(store, runs_folder).items()}
    assert after == before


def test_tensorboard_logs_hold_each_runs_hparams_beside_its_epoch_metrics(tracked_study):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs_folder, _ = tracked_study
    for name, rate in (("baseline", 1e-3), ("batchnorm", 1e-2)):
        logs = runs_folder / name / "logs"
        accumulator = event_accumulator.EventAccumulator(str(logs))
        accumulator.Reload()
        [content] = accumulator.PluginTagToContent("hparams").values()
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert start.hparams["learning_rate"].number_value == pytest.approx(rate)
        assert start.hparams["name"].string_value == name
        validation = event_accumulator.EventAccumulator(str(logs / "validation"))
        validation.Reload()
        assert "epoch_accuracy" in validation.Tags()["tensors"] + validation.Tags()["scalars"]


def test_a_store_that_cannot_be_written_is_a_warning_and_the_run_stands(tiny_archive, tmp_path):
    (tmp_path / "blocked").write_text("a file where the store's folder would be")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'blocked' / 'mlflow.db'}")
    run = tmp_path / "baseline"
    done = cifarlab("train", "baseline", "--data", tiny_archive, "--out", run, "--epochs", 1,
                    "--precision", "float32", "--track", "mlflow", env=env,
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "MLflow tracking failed" in line]
    assert len(warnings) == 1 and "the runs are complete in their folders" in warnings[0]
    assert "Traceback" not in done.stderr
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1
