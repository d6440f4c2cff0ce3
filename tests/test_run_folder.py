"""The run folder's rules on real files, one function at a time: what reads as finished, which
folder a config may use, what `clear` removes, and how each damaged file is reported.

Each test writes the folder as training does (`Config.to_dict`, the `files` writers) and
then damages one thing, so every refusal is checked against a folder that passes.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cifarlab import config as configs
from cifarlab import run_folder
from cifarlab.errors import UserError
from cifarlab.files import write_json, write_text

BASELINE = configs.override(configs.experiment("baseline"), epochs=3)
RECORD = {"fingerprint": "abc", "source": "a.tar.gz", "images": {"train": 1200, "val": 300,
                                                                 "test": 60}}  # fmt: skip


def _history_rows(count: int) -> list[dict]:
    return [{"epoch": epoch, "loss": 2.0 - epoch / 10, "accuracy": 0.2, "val_loss": 1.9,
             "val_accuracy": 0.25, "seconds": 1.5} for epoch in range(count)]  # fmt: skip


def _metrics(experiment: str = "baseline", epochs: int = 3) -> dict:
    scores = {"loss": 1.5, "accuracy": 0.4}
    return {"experiment": experiment, "params": 2168362, "epochs_run": epochs, "best_epoch": 2,
            "class_names": ["a", "b"], "train": scores, "val": scores, "test": scores}  # fmt: skip


def _run(folder: Path, config=BASELINE, finished: bool = True, record: dict | None = RECORD):
    """A run folder as training leaves it: config, data record, history and (when finished)
    metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / run_folder.CONFIG, config.to_dict())
    if record is not None:
        write_json(folder / run_folder.DATA, record)
    run_folder.write_history(folder, _history_rows(config.epochs))
    if finished:
        write_json(folder / run_folder.METRICS, _metrics(config.name, config.epochs))
    return folder


# Reading files.


def test_json_that_does_not_parse_is_one_sentence_naming_the_file(tmp_path):
    path = write_text(tmp_path / "x.json", "{not json")
    with pytest.raises(UserError, match=r"x\.json is damaged \(not valid JSON\)"):
        run_folder.read_json(path)
    assert run_folder.read_json(write_text(tmp_path / "y.json", '{"a": [1]}')) == {"a": [1]}


def test_history_reads_back_as_written_with_integer_epochs(tmp_path):
    assert run_folder.read_history(tmp_path) == []
    run_folder.write_history(tmp_path, _history_rows(3))
    rows = run_folder.read_history(tmp_path)
    assert rows == _history_rows(3)
    assert [type(row["epoch"]) for row in rows] == [int, int, int]
    assert isinstance(rows[0]["loss"], float)
    run_folder.write_history(tmp_path, _history_rows(1))  # One row names the columns too.
    assert run_folder.read_history(tmp_path) == _history_rows(1)
    run_folder.write_history(tmp_path, [])
    assert not (tmp_path / run_folder.HISTORY).exists()
    run_folder.write_history(tmp_path, [])  # Nothing to remove is no error.


def test_history_read_up_to_an_epoch_ignores_a_torn_row_after_it(tmp_path):
    run_folder.write_history(tmp_path, _history_rows(3))
    path = tmp_path / run_folder.HISTORY
    path.write_text(path.read_text() + "3,0.5,0.")  # A kill tore the row of epoch 3.
    assert run_folder.read_history(tmp_path, epochs=3) == _history_rows(3)
    assert run_folder.read_history(tmp_path, epochs=1) == _history_rows(1)
    with pytest.raises(UserError, match=r"history\.csv is damaged \(not a history table\)"):
        run_folder.read_history(tmp_path)
    with pytest.raises(UserError, match="damaged"):
        run_folder.read_history(tmp_path, epochs=4)


def test_history_rows_are_counted_whole_or_torn(tmp_path):
    assert run_folder.count_history_rows(tmp_path) == 0
    path = tmp_path / run_folder.HISTORY
    path.write_text("epoch,loss\n")
    assert run_folder.count_history_rows(tmp_path) == 0
    path.write_text("epoch,loss\n0,1.5\n\n1,1.\n")  # A blank line does not count; torn does.
    assert run_folder.count_history_rows(tmp_path) == 2


def test_a_config_reads_back_equal_and_every_other_file_is_refused_by_name(tmp_path):
    with pytest.raises(UserError, match=r"is not a run folder \(it has no config\.json\)"):
        run_folder.read_config(tmp_path)
    _run(tmp_path)
    assert run_folder.read_config(tmp_path) == BASELINE
    # Another program's config: one of the keys cifarlab always writes is missing.
    for key in ("name", "epochs", "batch_size", "learning_rate", "seed"):
        values = BASELINE.to_dict()
        del values[key]
        write_json(tmp_path / run_folder.CONFIG, values)
        with pytest.raises(UserError, match="was not written by cifarlab"):
            run_folder.read_config(tmp_path)
    write_json(tmp_path / run_folder.CONFIG, [1, 2])
    with pytest.raises(UserError, match="was not written by cifarlab"):
        run_folder.read_config(tmp_path)
    write_json(tmp_path / run_folder.CONFIG, {**BASELINE.to_dict(), "epochs": "three"})
    with pytest.raises(UserError) as refused:
        run_folder.read_config(tmp_path)
    # The config's own sentence, lower-cased and without its full stop, inside this one.
    with pytest.raises(UserError) as own:
        configs.Config.from_dict({**BASELINE.to_dict(), "epochs": "three"})
    reason = str(own.value)
    assert reason.startswith("The setting epochs must") and reason.endswith(".")
    assert str(refused.value) == (
        f"{tmp_path / run_folder.CONFIG} is damaged (t{reason[1:-1]}); remove the run."
    )


def test_only_a_best_checkpoint_beside_cifarlabs_config_belongs_to_a_run(tmp_path):
    run = _run(tmp_path / "run")
    assert run_folder.run_folder_of(run / run_folder.BEST_MODEL) == run
    assert run_folder.run_folder_of(run / "model.keras") is None
    assert run_folder.run_folder_of(tmp_path / "bare" / run_folder.BEST_MODEL) is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    write_json(foreign / run_folder.CONFIG, {"name": "resnet"})
    assert run_folder.run_folder_of(foreign / run_folder.BEST_MODEL) is None


def test_the_data_record_needs_a_fingerprint(tmp_path):
    assert run_folder.read_data_record(tmp_path) is None
    write_json(tmp_path / run_folder.DATA, RECORD)
    assert run_folder.read_data_record(tmp_path) == RECORD
    for damaged in ({"source": "a"}, {"fingerprint": 5}, ["abc"]):
        write_json(tmp_path / run_folder.DATA, damaged)
        with pytest.raises(UserError, match=r"dataset\.json is damaged \(no data fingerprint\)"):
            run_folder.read_data_record(tmp_path)


# What counts as finished.


def test_whole_metrics_of_this_run_count_as_finished(tmp_path):
    run = _run(tmp_path)
    assert run_folder.metrics_problem(run) is None
    assert run_folder.read_metrics(run) == _metrics()
    assert run_folder.is_finished(run)


@pytest.mark.parametrize(("change", "problem"), [
    ({"experiment": 5}, "has no experiment of type str"),
    ({"params": "many"}, "has no params of type int"),
    ({"params": True}, "has no params of type int"),
    ({"epochs_run": None}, "has no epochs_run of type int"),
    ({"best_epoch": 1.0}, "has no best_epoch of type int"),
    ({"class_names": "ab"}, "has no class_names of type list"),
    ({"train": None}, "has no train loss and accuracy"),
    ({"val": {"loss": 1.0}}, "has no val loss and accuracy"),
    ({"test": {"loss": 1.0, "accuracy": "high"}}, "has no test loss and accuracy"),
    ({"experiment": "batchnorm"}, "was written for experiment batchnorm, not this run's"),
    ({"epochs_run": 5}, "records 5 epochs but history.csv has 3"),
])  # fmt: skip
def test_metrics_that_are_not_this_runs_do_not_count_and_say_why(tmp_path, change, problem):
    run = _run(tmp_path)
    write_json(run / run_folder.METRICS, {**_metrics(), **change})
    assert run_folder.metrics_problem(run) == problem
    assert run_folder.read_metrics(run) == {}
    assert not run_folder.is_finished(run)


def test_missing_torn_or_foreign_metrics_do_not_count(tmp_path):
    run = _run(tmp_path, finished=False)
    assert run_folder.metrics_problem(run) == "is missing"
    write_text(run / run_folder.METRICS, '{"experiment": "base')
    assert run_folder.metrics_problem(run) == "is torn or not JSON"
    write_json(run / run_folder.METRICS, [1])
    assert run_folder.metrics_problem(run) == "is not a table of metrics"


def test_metrics_without_a_config_or_history_beside_them_are_taken_as_they_are(tmp_path):
    write_json(tmp_path / run_folder.METRICS, _metrics("anything", epochs=7))
    assert run_folder.metrics_problem(tmp_path) is None


# Which folder a config may use.


def test_a_folder_is_reused_only_for_the_same_config(tmp_path):
    run_folder.check_same_config(tmp_path, BASELINE)  # Nothing there: anything may start.
    _run(tmp_path)
    run_folder.check_same_config(tmp_path, BASELINE)
    other = configs.override(BASELINE, epochs=5, batch_size=64)
    with pytest.raises(UserError) as refused:
        run_folder.check_same_config(tmp_path, other)
    message = str(refused.value)
    differences = "; ".join(configs.describe_differences(BASELINE, other))
    assert "epochs" in differences and "batch_size" in differences
    assert message.startswith(f"{tmp_path} holds a run with a different config ({differences})")
    assert message.endswith("; choose another --out or remove it.")
    with pytest.raises(UserError, match=r"; rerun with --overwrite\.$"):
        run_folder.check_same_config(tmp_path, other, "rerun with --overwrite")
    # The same rule, with the data checked after the config.
    with pytest.raises(UserError, match=r"different config .*; choose another --out or remove"):
        run_folder.check_same_run(tmp_path, other, RECORD)
    with pytest.raises(UserError, match=r"different config .*; start over\.$"):
        run_folder.check_same_run(tmp_path, other, RECORD, "start over")
    with pytest.raises(UserError, match="other data"):
        run_folder.check_same_run(tmp_path, BASELINE, {"fingerprint": "new"})
    run_folder.check_same_run(tmp_path, BASELINE)


def test_a_folder_is_reused_only_for_the_same_data(tmp_path):
    run_folder.check_same_data(tmp_path, {"fingerprint": "other"})  # No run: nothing to check.
    run = _run(tmp_path)
    run_folder.check_same_data(run, RECORD)
    other = {"fingerprint": "def", "source": "b", "images": {"train": 80, "val": None}}
    with pytest.raises(UserError) as refused:
        run_folder.check_same_data(run, other)
    assert str(refused.value) == (
        f"{run} was trained on other data (1,200/300/60 train/val/test images from a.tar.gz) "
        "than given now (80/?/? train/val/test images from b); pass the data it was trained "
        "on, or choose another --out."
    )
    with pytest.raises(UserError, match=r"\(\?/\?/\? train/val/test images from an unknown "
                                         r"source\); start over\.$"):  # fmt: skip
        run_folder.check_same_data(run, {"fingerprint": "x"}, "start over")


def test_a_run_from_before_data_records_is_let_through_with_a_warning(tmp_path):
    run = _run(tmp_path, record=None)
    with pytest.warns(UserWarning, match="records no data fingerprint"):
        run_folder.check_same_data(run, RECORD)
    (run / run_folder.HISTORY).unlink()  # Nothing trained yet: nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.check_same_data(run, RECORD)


def test_finished_with_reuses_only_a_finished_run_of_the_same_config_and_data(tmp_path):
    assert not run_folder.finished_with(tmp_path / "none", BASELINE, RECORD)
    unfinished = _run(tmp_path / "unfinished", finished=False)
    assert not run_folder.finished_with(unfinished, BASELINE, RECORD)
    finished = _run(tmp_path / "finished")
    assert run_folder.finished_with(finished, BASELINE, RECORD)
    assert run_folder.finished_with(finished, BASELINE)  # Data unknown: the config decides.
    with pytest.raises(UserError, match="different config"):
        run_folder.finished_with(finished, configs.override(BASELINE, seed=1), RECORD)
    with pytest.raises(UserError, match="other data"):
        run_folder.finished_with(finished, BASELINE, {"fingerprint": "other"})


def test_train_without_out_finds_its_own_run_or_the_next_free_folder(tmp_path):
    first = run_folder.train_folder(BASELINE, RECORD, tmp_path)
    assert first == tmp_path / "baseline"
    _run(first)
    assert run_folder.train_folder(BASELINE, RECORD, tmp_path) == first
    other = configs.override(BASELINE, epochs=2)
    second = run_folder.train_folder(other, RECORD, tmp_path)
    assert second == tmp_path / "baseline-2"
    _run(second, other)
    third = run_folder.train_folder(BASELINE, {**RECORD, "fingerprint": "new"}, tmp_path)
    assert third == tmp_path / "baseline-3"
    assert run_folder.train_folder(other, RECORD, tmp_path) == second


# Removing a run.


def test_clear_removes_only_the_runs_own_files_and_their_partial_copies(tmp_path):
    run = _run(tmp_path / "run")
    for name in (run_folder.BEST_MODEL, run_folder.CURVES, run_folder.TEST_PROBABILITIES):
        write_text(run / name, "x")
    (run / run_folder.BACKUP).mkdir()
    write_text(run / run_folder.BACKUP / "weights.h5", "x")
    write_text(run / f".{run_folder.BEST_MODEL}.part", "x")  # A kill mid-write left these.
    write_text(run / f".{run_folder.METRICS}.tmp123", "x")
    kept = [write_text(run / "notes.txt", "mine"), write_text(run / ".hidden", "mine")]
    elsewhere = write_text(tmp_path / "elsewhere.txt", "mine")
    (run / run_folder.LOGS).symlink_to(tmp_path / "logs-target", target_is_directory=True)
    (tmp_path / "logs-target").mkdir()
    run_folder.clear(run)
    assert sorted(path.name for path in run.iterdir()) == sorted(path.name for path in kept)
    assert elsewhere.read_text() == "mine" and (tmp_path / "logs-target").is_dir()


def test_clear_takes_nothing_from_a_folder_holding_another_programs_config(tmp_path):
    write_json(tmp_path / run_folder.CONFIG, {"model": "resnet"})
    write_text(tmp_path / run_folder.HISTORY, "theirs")
    with pytest.raises(UserError, match="was not written by cifarlab"):
        run_folder.clear(tmp_path)
    assert (tmp_path / run_folder.HISTORY).read_text() == "theirs"


def test_a_second_writer_is_refused_until_the_first_is_done(tmp_path):
    run = tmp_path / "new" / "run"
    with run_folder.exclusive(run):
        assert run.is_dir()
        refused = pytest.raises(UserError, match="is being written by another cifarlab process")
        with refused, run_folder.exclusive(run):
            pass
    with run_folder.exclusive(run):  # Released: the next writer gets it.
        pass


# A writer in another process: holds the run until it reads a line, notes that it let go just
# before it does, then exits.
_WRITER = """
import sys
from pathlib import Path
from cifarlab import run_folder
with run_folder.exclusive(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.readline()
    Path(sys.argv[2]).write_text("done")
"""


def test_a_reader_waits_for_the_writer_to_let_go_but_no_longer_than_it_is_told(tmp_path):
    run, done = tmp_path / "run", tmp_path / "done"
    run_folder.wait_for_writer(run, 60)  # No writer ever: nothing to wait for, nothing made.
    assert not run.exists()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(done)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline() == "holding\n"
        run_folder.wait_for_writer(run, 0.5)  # Still held after that: it gives up, silently.
        refused = pytest.raises(UserError, match="is being written by another")
        with refused, run_folder.exclusive(run):
            pass
        writer.stdin.write("go\n")
        writer.stdin.flush()
        run_folder.wait_for_writer(run, 60)
        assert done.read_text() == "done"  # It returned once the writer had let go.
    finally:
        writer.kill()
        writer.wait()


# Study folders.


def test_seed_folders_belong_to_their_experiment(tmp_path):
    seeded = run_folder.seed_folder(tmp_path / "baseline", 3)
    assert seeded == tmp_path / "baseline" / "seed=3"
    assert run_folder.experiment_folder(seeded) == tmp_path / "baseline"
    assert run_folder.experiment_folder(tmp_path / "baseline") == tmp_path / "baseline"


def test_a_studys_finished_runs_are_found_one_seed_level_down_and_the_rest_named(tmp_path):
    plain = _run(tmp_path / "baseline")
    seeded = _run(run_folder.seed_folder(tmp_path / "augmented", 0),
                  configs.override(configs.experiment("augmented"), epochs=3))  # fmt: skip
    _run(tmp_path / "unfinished", finished=False)
    broken = _run(tmp_path / "broken")
    write_json(broken / run_folder.METRICS, _metrics("batchnorm"))
    with pytest.warns(UserWarning) as warned:
        found = run_folder.finished_runs_in(tmp_path)
    assert sorted(found) == sorted([plain, seeded])
    assert [str(w.message) for w in warned] == [
        f"{broken} is left out: its metrics.json was written for experiment batchnorm, not "
        "this run's; rerun its cifarlab train command to evaluate it again."
    ]


def test_a_runs_checkpoint_loads_compiled_or_not_and_a_missing_one_is_one_sentence(tmp_path):
    import keras

    run = _run(tmp_path / "run")
    with pytest.raises(UserError, match=r"has no best\.keras; train it first"):
        run_folder.load_best_model(run)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.save(run / run_folder.BEST_MODEL)
    bare = tmp_path / "bare"  # A checkpoint with no config beside it loads as it is.
    bare.mkdir()
    model.save(bare / run_folder.BEST_MODEL)
    inputs = np.array([[0.5, -1.0]], dtype=np.float32)
    for folder in (run, bare):
        loaded = run_folder.load_best_model(folder)
        np.testing.assert_array_equal(loaded.predict(inputs, verbose=0),
                                      model.predict(inputs, verbose=0))  # fmt: skip
        assert loaded.compiled
        assert not run_folder.load_best_model(folder, compile=False).compiled
