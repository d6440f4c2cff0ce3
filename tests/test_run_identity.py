"""A run is exactly what it says: what a user declares is what trains, a run folder records the
data it trained on, and only its owner writes it. Each case goes through the real command line
(`cli.main`, in process) on real-format data: the official CIFAR-10 archive layout and class
folders of image files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli, load_data, run_folder, train
from tests.conftest import write_cifar10_archive

FAST = ("--epochs", "1", "--precision", "float32", "--quiet")


def cifarlab(*arguments: object) -> int:
    return cli.main([str(argument) for argument in arguments])


def stored(run_dir: Path, name: str = "config.json") -> dict:
    return json.loads((run_dir / name).read_text())


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def other_archive(tmp_path_factory) -> Path:
    """The same layout and sizes as `tiny_archive`, other images: another dataset."""
    folder = tmp_path_factory.mktemp("other")
    return write_cifar10_archive(folder / "cifar-10-python.tar.gz", seed=1)


@pytest.fixture(scope="module")
def fruit_folders(tmp_path_factory) -> Path:
    """Three classes of 20 PNG photos each, with no test/ folder: a test share is carved out."""
    root = tmp_path_factory.mktemp("fruit")
    rng = np.random.default_rng(0)
    for index, name in enumerate(("apple", "banana", "cherry")):
        (root / name).mkdir()
        for number in range(20):
            colour = np.array([(200, 30, 30), (230, 210, 40), (40, 30, 160)][index])
            pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{number:02}.png")
    return root


@pytest.fixture(scope="module")
def trained_once(tiny_archive, tmp_path_factory) -> Path:
    """A finished one-epoch baseline run, trained once for the module: tests change copies."""
    out = tmp_path_factory.mktemp("finished") / "baseline"
    with pytest.MonkeyPatch.context() as patch:
        # Module-scoped, so set up before conftest's per-test cache: point at the same one here.
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", out, *FAST) == 0
    return out


@pytest.fixture
def finished_run(trained_once, tmp_path) -> Path:
    """The test's own copy of `trained_once`, alone in its parent folder as a study's run."""
    out = tmp_path / "baseline"
    shutil.copytree(trained_once, out)
    return out


# 1. Command-line defaults never overwrite what an experiment or a TOML file declares.


def test_train_modern_records_and_uses_its_recipes_validation_share(tiny_archive, tmp_path):
    out = tmp_path / "modern"
    assert cifarlab("train", "modern", "--data", tiny_archive, "--out", out, *FAST) == 0
    assert (stored(out)["val_fraction"], stored(out)["max_val_images"]) == (0.2, 1000)
    # 20% of 80 images, under modern's limit of 1,000.
    assert stored(out, "dataset.json")["images"]["val"] == 20
    # 60 images to learn from: its batch of 1,024 halved to 2 for 16 steps an epoch or more,
    # and its learning rate with it.
    environment = stored(out, "environment.json")
    assert (environment["batch_size"], environment["learning_rate"]) == (2, 0.9 * 2 / 1024)
    assert stored(out)["batch_size"] == 1024  # The config is what was declared.


def test_a_toml_files_split_and_precision_take_effect_and_flags_override_them(
    tiny_archive, tmp_path
):
    declared = tmp_path / "study.toml"
    declared.write_text(
        '[experiments.half]\nbase = "baseline"\nepochs = 1\nval_fraction = 0.5\n'
        'precision = "float32"\n'
    )
    out = tmp_path / "half"
    assert cifarlab("train", "half", "--experiments", declared, "--data", tiny_archive,
                    "--out", out, "--quiet") == 0  # fmt: skip
    assert (stored(out)["val_fraction"], stored(out)["precision"]) == (0.5, "float32")
    assert stored(out, "dataset.json")["images"]["val"] == 40
    assert stored(out, "environment.json")["precision"] == "float32"

    flagged = tmp_path / "flagged"
    assert cifarlab("train", "half", "--experiments", declared, "--data", tiny_archive,
                    "--out", flagged, "--quiet", "--val-fraction", "0.25",
                    "--precision", "bfloat16") == 0  # fmt: skip
    assert (stored(flagged)["val_fraction"], stored(flagged)["precision"]) == (0.25, "bfloat16")
    assert stored(flagged, "dataset.json")["images"]["val"] == 20


# 2. A run records the split it was given, and `evaluate` scores that same split.


def test_loaded_class_folders_record_their_test_share_and_evaluate_reuses_it(
    fruit_folders, tmp_path
):
    data = load_data(fruit_folders, test_fraction=0.5, quiet=True)
    out = tmp_path / "fruit"
    run = train("baseline", data=data, out=out, epochs=1, precision="float32", quiet=True)
    assert run.config.test_fraction == 0.5
    assert stored(out, "dataset.json")["images"]["test"] == 30 == len(data.y_test)
    assert cifarlab("evaluate", out, "--data", fruit_folders) == 0
    again = stored(out, "evaluation.json")
    assert sum(scores["support"] for scores in again["per_class"].values()) == 30
    assert again["test"] == run.metrics["test"]


# 3. A study splits the data as each experiment asks, loading each split once.


def test_a_study_gives_each_experiment_its_own_split_and_image_size(tiny_archive, tmp_path):
    declared = tmp_path / "mixed.toml"
    declared.write_text(
        "[experiments.baseline]\n[experiments.modern]\n"
        '[experiments.capped]\nbase = "modern"\nmax_val_images = 10\n'
        '[experiments.larger]\nbase = "baseline"\nimage_size = 40\n'
    )
    out = tmp_path / "study"
    assert cifarlab("study", "--experiments", declared, "--data", tiny_archive, "--out", out,
                    *FAST) == 0  # fmt: skip
    validation = {name: stored(out / name, "dataset.json")["images"]["val"]
                  for name in ("baseline", "modern", "capped", "larger")}  # fmt: skip
    assert validation == {"baseline": 20, "modern": 20, "capped": 10, "larger": 20}
    assert stored(out / "capped")["max_val_images"] == 10
    assert "(None, 40, 40, 3)" in (out / "larger" / "summary.txt").read_text()
    assert "(None, 32, 32, 3)" in (out / "baseline" / "summary.txt").read_text()


# 4. A run's identity includes its data: resuming or reusing it on other data is refused.


def test_resuming_on_other_data_is_refused_naming_both_sources(
    finished_run, other_archive, tiny_archive, capsys
):
    # What a kill during the final evaluation leaves: every epoch, no metrics.
    (finished_run / "metrics.json").unlink()
    history = (finished_run / "history.csv").read_bytes()
    assert cifarlab("train", "baseline", "--data", other_archive, "--out", finished_run,
                    *FAST) == 2  # fmt: skip
    line = error_line(capsys)
    assert "trained on other data" in line
    assert str(tiny_archive) in line and str(other_archive) in line
    assert (finished_run / "history.csv").read_bytes() == history
    assert not (finished_run / "metrics.json").exists()
    # On its own data it resumes and finishes.
    assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", finished_run,
                    *FAST) == 0  # fmt: skip


def test_a_study_does_not_reuse_a_run_finished_on_other_data(finished_run, other_archive, capsys):
    metrics = (finished_run / "metrics.json").read_bytes()
    assert cifarlab("study", "--experiments", "baseline", "--data", other_archive,
                    "--out", finished_run.parent, *FAST) == 2  # fmt: skip
    assert "trained on other data" in error_line(capsys)
    assert (finished_run / "metrics.json").read_bytes() == metrics


def test_a_run_from_before_data_was_recorded_resumes_and_says_what_it_lacks(
    finished_run, tiny_archive, capsys
):
    (finished_run / "dataset.json").unlink()
    (finished_run / "metrics.json").unlink()
    assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", finished_run,
                    *FAST) == 0  # fmt: skip
    assert "records no data fingerprint" in capsys.readouterr().err
    assert not (finished_run / "dataset.json").exists()  # Not guessed after the fact.


# 5. `evaluate` reads a run; it never makes one look finished or scores it on other data.


def test_evaluate_refuses_an_interrupted_run_and_the_resume_still_trains(
    tiny_archive, tmp_path, capsys
):
    out = tmp_path / "baseline"
    assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", out, *FAST) == 0
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert cifarlab("evaluate", out, "--data", tiny_archive) == 2
    assert "cifarlab train" in error_line(capsys)
    assert not (out / "metrics.json").exists()
    # Still unfinished and still a 1-epoch run: a longer study is refused, not handed it.
    assert cifarlab("study", "--experiments", "baseline", "--data", tiny_archive,
                    "--out", tmp_path, "--epochs", "2", "--precision", "float32",
                    "--quiet") == 2  # fmt: skip
    assert "epochs 1 → 2" in error_line(capsys)
    assert cifarlab("study", "--experiments", "baseline", "--data", tiny_archive,
                    "--out", tmp_path, *FAST) == 0  # fmt: skip
    assert run_folder.is_finished(out)


def test_evaluate_refuses_a_run_being_trained(finished_run, tiny_archive, capsys):
    metrics = (finished_run / "metrics.json").read_bytes()
    with run_folder.exclusive(finished_run):  # The lock a training process holds.
        assert cifarlab("evaluate", finished_run, "--data", tiny_archive) == 2
    assert "being written by another cifarlab process" in error_line(capsys)
    assert (finished_run / "metrics.json").read_bytes() == metrics


def test_evaluate_refuses_other_classes_either_way_and_keeps_the_runs_metrics(
    finished_run, fruit_folders, tiny_archive, tmp_path, capsys
):
    metrics = (finished_run / "metrics.json").read_bytes()
    assert cifarlab("evaluate", finished_run, "--data", fruit_folders) == 2
    assert "classes" in error_line(capsys)
    assert (finished_run / "metrics.json").read_bytes() == metrics

    fruit_run = tmp_path / "fruit"
    assert cifarlab("train", "baseline", "--data", fruit_folders, "--out", fruit_run, *FAST) == 0
    capsys.readouterr()
    assert cifarlab("evaluate", fruit_run, "--data", tiny_archive) == 2
    assert "classes" in error_line(capsys)


def test_evaluate_writes_beside_the_runs_own_metrics(finished_run, tiny_archive):
    metrics = (finished_run / "metrics.json").read_bytes()
    assert cifarlab("evaluate", finished_run, "--data", tiny_archive) == 0
    assert (finished_run / "metrics.json").read_bytes() == metrics
    assert stored(finished_run, "evaluation.json")["test"] == json.loads(metrics)["test"]


# 6. `--overwrite` removes only what cifarlab wrote.


def test_overwrite_refuses_a_folder_holding_another_programs_config(tiny_archive, tmp_path, capsys):
    folder = tmp_path / "thesis"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "config.json").write_text('{"theme": "dark", "font_size": 12}\n')
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", folder, "--overwrite",
                    *FAST) == 2  # fmt: skip
    assert "not written by cifarlab" in error_line(capsys)
    assert all(path.read_bytes() == content for path, content in before.items())


def test_overwrite_replaces_the_run_and_keeps_everything_else(finished_run, tiny_archive):
    (finished_run / "notes.md").write_text("my notes\n")
    (finished_run / "exports").mkdir()
    (finished_run / "exports" / "model.onnx").write_bytes(b"onnx")
    assert cifarlab("train", "baseline", "--data", tiny_archive, "--out", finished_run,
                    "--overwrite", *FAST) == 0  # fmt: skip
    assert (finished_run / "notes.md").read_text() == "my notes\n"
    assert (finished_run / "exports" / "model.onnx").read_bytes() == b"onnx"
    assert run_folder.is_finished(finished_run)


# Old and hand-edited run folders.


def test_a_modern_run_from_before_the_network_setting_still_reads_as_modern():
    from cifarlab import config

    old = {key: value for key, value in config.MODERN.to_dict().items() if key != "network"}
    old.update(model="cifarlab.models:residual_network", model_sha256="0" * 64)
    assert config.Config.from_dict(old) == config.MODERN


@pytest.mark.parametrize(
    ("key", "value"), [("epochs", "three"), ("filters", 5), ("learning_rate", None)]
)
def test_a_hand_edited_config_is_refused_in_one_sentence(finished_run, key, value, capsys):
    values = stored(finished_run)
    values[key] = value
    (finished_run / "config.json").write_text(json.dumps(values))
    assert cifarlab("report", finished_run, "--out", finished_run.parent / "report") == 2
    line = error_line(capsys)
    assert "is damaged" in line and key in line


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"experiment": "batchnorm"}, "was written for experiment batchnorm"),
        ({"epochs_run": 7}, "records 7 epochs but history.csv has 1"),
        ({"experiment": 5}, "has no experiment of type str"),
        ({"test": {"loss": "low"}}, "has no test loss and accuracy"),
    ],
)
def test_metrics_that_are_not_this_runs_leave_it_out_by_name(finished_run, change, problem, capsys):
    metrics = stored(finished_run, "metrics.json")
    (finished_run / "metrics.json").write_text(json.dumps({**metrics, **change}))
    assert not run_folder.is_finished(finished_run)
    assert cifarlab("report", finished_run) == 2
    assert problem in error_line(capsys)
    # In a study folder it is left out with a warning naming it, not silently.
    with pytest.warns(UserWarning, match=f"{finished_run.name} is left out: .*{problem}"):
        assert run_folder.finished_runs_in(finished_run.parent) == []


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}  # fmt: skip


def test_a_quick_train_after_the_main_job_goes_to_its_own_folder(
    tiny_archive, other_archive, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    # The README's main job first: a study writes runs/baseline (one epoch here).
    assert cifarlab("study", "--experiments", "baseline", "--data", tiny_archive, "--out", "runs",
                    *FAST) == 0  # fmt: skip
    study_run = files_of(Path("runs/baseline"))
    capsys.readouterr()
    # Then the README's quick run, another config, without --out: it trains, beside the study.
    quick = ("train", "baseline", "--data", tiny_archive, "--precision", "float32")
    assert cifarlab(*quick, "--epochs", "2") == 0
    out = capsys.readouterr().out.splitlines()
    assert "baseline: run folder runs/train/baseline (no --out given)." in out
    assert "Run folder: runs/train/baseline (figures: " in "\n".join(out)
    assert stored(Path("runs/train/baseline"))["epochs"] == 2
    assert files_of(Path("runs/baseline")) == study_run
    # Another config, or other data, gets the next free folder; the study's is never touched.
    assert cifarlab(*quick, "--epochs", "1", "--quiet") == 0
    assert "Run folder: runs/train/baseline-2 (" in capsys.readouterr().out
    assert cifarlab("train", "baseline", "--data", other_archive, "--precision", "float32",
                    "--epochs", "2", "--quiet") == 0  # fmt: skip
    assert "Run folder: runs/train/baseline-3 (" in capsys.readouterr().out
    assert stored(Path("runs/train/baseline-3"), "dataset.json")["source"] == str(other_archive)
    # The same command again finds its own finished run, and says what to do.
    assert cifarlab(*quick, "--epochs", "2") == 2
    assert error_line(capsys) == (
        "cifarlab: runs/train/baseline holds a finished run; pass --overwrite to train it again."
    )
    assert files_of(Path("runs/baseline")) == study_run
    assert sorted(path.name for path in Path("runs/train").iterdir()) == [
        "baseline", "baseline-2", "baseline-3"
    ]  # fmt: skip
