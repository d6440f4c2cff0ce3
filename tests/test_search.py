"""`cifarlab search`: the TOML space, ASHA's rungs across a restart, and a real search on Ray
Tune through the command line, killed with SIGKILL and resumed."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifarlab import cli, config, run_folder
from cifarlab.errors import UserError

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from ray.tune.experiment import Trial  # noqa: E402

from cifarlab.scale import search, search_report  # noqa: E402
from cifarlab.scale.space import load_space  # noqa: E402
from tests.conftest import write_cifar10_archive  # noqa: E402

EPOCHS = 3
SPACE = f"""
base = "baseline"
epochs = {EPOCHS}
precision = "float32"
learning_rate = {{loguniform = [1e-5, 1e-2]}}
dropout = {{uniform = [0.0, 0.6]}}
"""


def write(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_space_declares_its_base_fixed_settings_and_sampled_ones(tmp_path):
    space = load_space(write(tmp_path, """
base = "batchnorm"
epochs = 2
learning_rate = {loguniform = [1e-4, 1e-1]}
dense_units = {randint = [128, 1024]}
filters = {choice = [[16, 32], [32, 64]]}
[augmentation]
shift = {uniform = [0.0, 0.2]}
"""))
    assert space.base == config.override(config.BATCHNORM, epochs=2)
    assert space.keys == ["learning_rate", "dense_units", "filters", "augmentation.shift"]
    sampled = {"learning_rate": 0.02, "dense_units": 300, "filters": "[16, 32]",
               "augmentation.shift": 0.05}  # fmt: skip
    trial = space.config(sampled)
    assert (trial.learning_rate, trial.dense_units, trial.filters) == (0.02, 300, (16, 32))
    assert trial.augmentation.shift == 0.05 and trial.batch_norm and trial.epochs == 2
    # batchnorm's own settings lie in the space, so they are the first trial, as Tune takes them.
    assert space.base_point() == {"learning_rate": 1e-2, "dense_units": 512,
                                  "filters": "[32, 64]", "augmentation.shift": 0.0}  # fmt: skip


def test_each_distribution_samples_only_its_range_and_randint_both_ends(tmp_path):
    space = load_space(write(tmp_path, """
learning_rate = {loguniform = [1e-4, 1e-2]}
dropout = {uniform = [0.1, 0.2]}
dense_units = {randint = [7, 8]}
filters = {choice = [[8, 16], [16, 32]]}
"""))
    domains = space.param_space()
    samples = {key: [domain.sample() for _ in range(400)] for key, domain in domains.items()}
    assert all(1e-4 <= value <= 1e-2 for value in samples["learning_rate"])
    # Log-uniform: as many samples below the geometric middle as above it.
    assert 120 < sum(value < 1e-3 for value in samples["learning_rate"]) < 280
    assert all(0.1 <= value <= 0.2 for value in samples["dropout"])
    assert set(samples["dense_units"]) == {7, 8}
    assert {space.config({**dict.fromkeys(space.keys, None), "learning_rate": 1e-3,
                          "dropout": 0.1, "dense_units": 7, "filters": value}).filters
            for value in samples["filters"]} == {(8, 16), (16, 32)}  # fmt: skip


def test_a_base_setting_outside_the_space_is_not_tried_first(tmp_path):
    space = load_space(write(tmp_path, "learning_rate = {loguniform = [1e-2, 1e-1]}\n"))
    assert space.base_point() is None  # baseline's 1e-3 lies below the range.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learnig_rate = {uniform = [0.1, 0.2]}", "learnig_rate is not a setting"),
        ("dropout = {normal = [0.1, 0.2]}", "must be one distribution"),
        ("dropout = {uniform = [0.1, 0.2], choice = [0.3]}", "must be one distribution"),
        ("learning_rate = {loguniform = [0, 0.1]}", "positive low end"),
        ("dropout = {uniform = [0.4, 0.1]}", "must lie below its high end"),
        ("dropout = {uniform = [0.1]}", "takes two numbers"),
        ("dropout = {uniform = [0.1, 1.5]}", "dropout must lie in [0, 1)"),
        ("dropout = {randint = [0, 1]}", "randint samples whole-number settings"),
        ("batch_size = {loguniform = [16, 256]}", "not a decimal setting"),
        ("dense_units = {randint = [10.5, 20]}", "whole-number bounds"),
        ("seed = {randint = [0, 9]}", "seed cannot be searched"),
        ("val_fraction = {uniform = [0.1, 0.3]}", "val_fraction cannot be searched"),
        ("filters = {choice = []}", "choice takes a list"),
        ("filters = {choice = [[32, 64], [32, 64]]}", "repeats a value"),
        ("filters = {choice = [[32, 0]]}", "filters must be positive numbers"),
        ("epochs = 3", "samples no setting"),
        ('base = "nonesuch"\ndropout = {uniform = [0.1, 0.2]}', "nonesuch"),
        ("dropout = {uniform = [0.1, 0.2]", "is not valid TOML"),
    ],
)
def test_a_mistake_in_the_space_is_one_sentence_before_anything_loads(
    tmp_path, capsys, text, expected
):
    path = write(tmp_path, text + "\n")
    assert cli.main(["search", str(path), "--data", str(tmp_path / "absent.tar.gz")]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.startswith("cifarlab: ") and error.count("\n") == 1
    assert "absent" not in error  # The space is checked first, before the data.


def test_a_flag_may_not_set_what_the_space_samples(tmp_path, capsys):
    path = write(tmp_path, SPACE)
    with pytest.raises(UserError, match="samples learning_rate"):
        load_space(path, learning_rate=0.1)
    assert load_space(path, epochs=1, learning_rate=None).base.epochs == 1
    assert cli.main(["search", str(path), "--learning-rate", "0.1"]) == 2
    assert "leave its command-line flag out" in capsys.readouterr().err


def test_a_trial_reports_its_checkpoints_accuracy_not_its_last_or_best():
    rows = [
        {"epoch": 0, "val_loss": 2.0, "val_accuracy": 0.2},
        {"epoch": 1, "val_loss": 1.5, "val_accuracy": 0.3},  # The checkpoint: lowest loss.
        {"epoch": 2, "val_loss": 1.6, "val_accuracy": 0.4},
        {"epoch": 3, "val_loss": 1.7, "val_accuracy": 0.1},
    ]
    assert search.progress(rows) == {"epoch": 4, "val_accuracy": 0.3, "val_loss": 1.5}


def test_the_summary_ranks_trials_and_weighs_the_best_against_the_bases_settings(tmp_path):
    space = load_space(write(tmp_path, SPACE.replace(f"epochs = {EPOCHS}", "epochs = 10")))
    rungs = [1, 3, 9]  # ASHA's at 10 epochs

    def trial(number, rate, epochs, accuracy, status="stopped early"):
        return search_report.Trial(number, f"id{number}", {"learning_rate": rate, "dropout": 0.5},
                            epochs, accuracy, status)  # fmt: skip

    base = trial(1, 1e-3, 10, 0.546, "complete")
    runner = trial(2, 7e-4, 9, 0.532)
    diverged = trial(3, 9e-3, 1, 0.9, "failed: Training diverged")
    text = search_report.summarise(space, [base, runner, diverged], base, 0.543, 20, 30, rungs)
    lines = text.splitlines()
    assert [line.split(" (")[0] for line in lines[1:4]] == ["trial 1", "trial 2", "trial 3"]
    assert "Best trial: 1 (learning_rate=0.001, dropout=0.5), val accuracy 54.60%; its test " \
        "accuracy, scored once: 54.30%." in text
    assert "the runner-up, trial 2 (learning_rate=0.0007, dropout=0.5), reached 53.20% after " \
        "9 epochs, -1.40 points." in text
    assert "ASHA ran 20 of 30 epochs (3 trials × 10): 33% of the compute saved." in text
    better = trial(2, 7e-4, 10, 0.561, "complete")
    assert "at the same 10 epochs: +1.50 points of validation accuracy." in search_report.summarise(
        space, [base, better], better, 0.55, 20, 20, rungs)
    stopped_base = trial(1, 1e-3, 3, 0.45)
    assert "reached 45.00% before ASHA stopped it after 3 epochs; the best trial is +11.10 " \
        "points above that." in search_report.summarise(space, [stopped_base, better], better,
                                                         0.55, 13, 20, rungs)  # fmt: skip


def history_rows(accuracies: list[float]) -> list[dict]:
    return [{"epoch": epoch, "accuracy": 0.5, "loss": 1.0, "val_accuracy": accuracy,
             "val_loss": 2.0 - accuracy, "seconds": 1.0}
            for epoch, accuracy in enumerate(accuracies)]  # fmt: skip


def asha(trials: Path) -> search._Asha:
    scheduler = search._Asha(trials=trials, time_attr="epoch", max_t=9, grace_period=1,
                             reduction_factor=3)  # fmt: skip
    scheduler.set_search_properties("val_accuracy", "max")
    return scheduler


def test_asha_is_given_back_the_epochs_of_the_trials_a_restart_restores(tmp_path):
    for trial_id, accuracies in {"good": [0.6, 0.7, 0.8], "better": [0.7, 0.75]}.items():
        (tmp_path / trial_id).mkdir()
        run_folder.write_history(tmp_path / trial_id, history_rows(accuracies))
    restored = asha(tmp_path)
    for trial_id in ("good", "better"):
        restored.on_trial_add(None, Trial("t", trial_id=trial_id, stub=True))
    late = Trial("t", trial_id="late", stub=True)
    restored.on_trial_add(None, late)
    # Below the top third of the replayed epoch-1 values (0.6 and 0.7): stopped there.
    assert restored.on_trial_result(None, late, {"epoch": 1, "val_accuracy": 0.5}) == "STOP"
    forgetful = asha(tmp_path / "elsewhere")  # The same trials with nothing to replay.
    forgetful.on_trial_add(None, late)
    assert forgetful.on_trial_result(None, late, {"epoch": 1, "val_accuracy": 0.5}) == "CONTINUE"
    fresh = Trial("t", trial_id="fresh", stub=True)
    restored.on_trial_add(None, fresh)
    assert restored.on_trial_result(None, fresh, {"epoch": 1, "val_accuracy": 0.9}) == "CONTINUE"


def test_a_folder_of_something_else_is_refused(tmp_path, tiny_archive, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = write(tmp_path, SPACE)
    assert cli.main(["search", str(path), "--data", str(tiny_archive), "--out", str(out)]) == 2
    assert "holds no search" in capsys.readouterr().err
    assert [item.name for item in out.iterdir()] == ["notes.txt"]


def test_the_python_api_searches_the_same_space_with_the_same_refusals(tmp_path, tiny_archive):
    import cifarlab

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no search"):
        cifarlab.search(write(tmp_path, SPACE), tiny_archive, trials=2, out=busy)
    with pytest.raises(UserError, match="samples learning_rate"):
        cifarlab.search(write(tmp_path, SPACE), tiny_archive, out=busy, learning_rate=0.1)


def read_rows(out: Path) -> list[dict]:
    with open(out / run_folder.SEARCH_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def trial_histories(out: Path) -> dict[str, list[dict]]:
    found = {}
    for folder in sorted((out / run_folder.SEARCH_TRIALS).glob("*")):
        try:
            found[folder.name] = run_folder.read_history(folder)
        except (UserError, FileNotFoundError):
            found[folder.name] = []
    return found


def start_search(space: Path, data: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    """The command in a session of its own, so the test can reap its Ray processes and only
    those; in the log's folder, where MLflow's store and artifacts go."""
    command = [sys.executable, "-m", "cifarlab.cli", "search", str(space), "--data", str(data),
               "--trials", "6", "--workers", "2", "--out", str(out), "--tensorboard",
               *extra]  # fmt: skip
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=environment, cwd=log.parent)  # fmt: skip


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_search_killed_with_sigkill_resumes_stops_laggards_and_names_its_best(tmp_path):
    data = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_class=20)
    space, out = write(tmp_path, SPACE), tmp_path / "search"
    first = start_search(space, data, out, tmp_path / "first.log")
    started = [first]
    try:
        deadline = time.monotonic() + 300
        # Kill once two trials have ended and others run: Tune has some of it to restore.
        while len(trial_histories(out)) < 3 or not any(
            len(rows) == EPOCHS for rows in trial_histories(out).values()
        ):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the search did not get going"
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.wait()
        complete = {
            trial_id: (out / run_folder.SEARCH_TRIALS / trial_id / run_folder.HISTORY).read_bytes()
            for trial_id, rows in trial_histories(out).items() if len(rows) == EPOCHS
        }  # fmt: skip
        moved = tmp_path / "moved" / data.name  # The same data elsewhere is the same data.
        moved.parent.mkdir()
        data.rename(moved)
        started.append(start_search(space, moved, out, tmp_path / "second.log", "--track",
                                    "mlflow"))  # fmt: skip
        assert started[1].wait(timeout=600) == 0, (tmp_path / "second.log").read_text()
    finally:
        for process in started:  # Ray's processes outlive a killed driver for a while.
            kill_group(process)

    rows = read_rows(out)
    histories = trial_histories(out)
    assert len(rows) == 6 and len({row["trial_id"] for row in rows}) == 6
    # Every trial folder is one of the report's trials: the resume trained no trial anew.
    assert set(histories) == {row["trial_id"] for row in rows} and set(complete) <= set(histories)
    for trial_id, history in complete.items():  # Trained before the kill, not again after it.
        assert (out / run_folder.SEARCH_TRIALS / trial_id / run_folder.HISTORY).read_bytes() == (
            history
        )
    for row in rows:
        trial_rows = histories[row["trial_id"]]
        saved = run_folder.read_config(out / run_folder.SEARCH_TRIALS / row["trial_id"])
        assert math.isclose(saved.learning_rate, float(row["learning_rate"]))
        assert math.isclose(saved.dropout, float(row["dropout"]))
        assert int(row["epochs"]) == len(trial_rows)
        assert float(row["val_accuracy"]) == search.progress(trial_rows)["val_accuracy"]
        assert row["status"] == ("complete" if len(trial_rows) == EPOCHS else "stopped early")
    assert any(row["status"] == "stopped early" for row in rows)
    # Trial 1 is the notebook's own settings.
    assert float(rows[0]["learning_rate"]) == 1e-3 and float(rows[0]["dropout"]) == 0.5
    best = max(rows, key=lambda row: float(row["val_accuracy"]))
    summary = (out / run_folder.SEARCH_TXT).read_text()
    assert f"Best trial: {best['trial']} (" in summary
    # The test set is scored once, for the best trial only.
    scored = sorted(path.parent.name for path in out.glob(f"*/*/{run_folder.METRICS}"))
    assert scored == [best["trial_id"]]
    test_accuracy = run_folder.read_metrics(out / run_folder.SEARCH_TRIALS / best["trial_id"])
    assert f"scored once: {test_accuracy['test']['accuracy']:.2%}" in summary
    epochs_run = sum(len(history) for history in histories.values())
    assert f"ASHA ran {epochs_run} of {6 * EPOCHS} epochs" in summary
    assert (out / run_folder.SEARCH_PNG).stat().st_size > 0

    # Every trial is in MLflow with its settings and each epoch it trained.
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"search {out.resolve()}")
    recorded = {run.data.tags["mlflow.runName"]: run
                for run in client.search_runs([experiment.experiment_id])}  # fmt: skip
    assert sorted(recorded) == sorted(row["trial_id"] for row in rows)
    for row in rows:
        run = recorded[row["trial_id"]]
        assert math.isclose(float(run.data.params["learning_rate"]), float(row["learning_rate"]))
        epochs = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [metric.step for metric in epochs] == list(range(1, int(row["epochs"]) + 1))
    assert "final_test_accuracy" in recorded[best["trial_id"]].data.metrics

    # Each trial's TensorBoard logs hold its sampled settings, named by its trial id.
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for row in rows:
        logs = out / run_folder.SEARCH_TRIALS / row["trial_id"] / run_folder.LOGS
        accumulator = event_accumulator.EventAccumulator(str(logs))
        accumulator.Reload()
        [content] = accumulator.PluginTagToContent("hparams").values()
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert start.group_name == row["trial_id"]
        assert math.isclose(start.hparams["dropout"].number_value, float(row["dropout"]))

    # Run again once finished: Tune restores every trial as ended, nothing trains, and the
    # report is the same, trial 1 still the notebook's settings.
    table = (out / run_folder.SEARCH_CSV).read_bytes()
    histories_before = {path: path.read_bytes() for path in out.glob(f"*/*/{run_folder.HISTORY}")}
    again = start_search(space, moved, out, tmp_path / "third.log")
    try:
        assert again.wait(timeout=600) == 0, (tmp_path / "third.log").read_text()
    finally:
        kill_group(again)
    assert (out / run_folder.SEARCH_CSV).read_bytes() == table
    assert {path: path.read_bytes() for path in histories_before} == histories_before

    # The same folder with another space is refused, and its record stays as it was.
    record = (out / run_folder.SEARCH_RECORD).read_text()
    other = write(tmp_path, SPACE.replace("0.6]", "0.5]"), "other.toml")
    other_data = write_cifar10_archive(tmp_path / "other.tar.gz", per_class=20, seed=1)
    for changed_space, changed_data, expected in ((other, moved, "another space;"),
                                                  (space, other_data, "other data;")):  # fmt: skip
        refused = subprocess.run(
            [sys.executable, "-m", "cifarlab.cli", "search", str(changed_space), "--data",
             str(changed_data), "--trials", "6", "--out", str(out)], capture_output=True,
            text=True,
        )  # fmt: skip
        assert refused.returncode == 2 and f"holds a search of {expected}" in refused.stderr
        assert (out / run_folder.SEARCH_RECORD).read_text() == record
    assert json.loads(record)["trials"] == 6


@pytest.mark.slow
def test_a_trial_that_fails_is_reported_and_never_chosen(tmp_path, tiny_archive):
    space = write(tmp_path, 'epochs = 2\nprecision = "float32"\n'
                  "learning_rate = {choice = [1e6]}\n")  # fmt: skip
    out = tmp_path / "search"
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", "search", str(space), "--data", str(tiny_archive),
         "--trials", "1", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600, start_new_session=True,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("cifarlab: ")]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert errors == [errors[0]] and "1 of 1 trial failed, trial 1 with: Training diverged" in (
        errors[0]
    )
    [row] = read_rows(out)
    assert row["status"].startswith("failed: Training diverged")
    assert "there is no best trial" in (out / run_folder.SEARCH_TXT).read_text()
    assert not list(out.glob(f"*/*/{run_folder.METRICS}"))  # Nothing was scored on the test set.
