"""`cifarlab study --repeats K` through the CLI on a local Ray: one run folder per experiment
and seed, statistics across seeds that match NumPy and SciPy, interval-based comparisons in
the report, a report rebuilt from the folders, and a rerun that trains nothing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cifarlab import api, cli, run_folder
from cifarlab.errors import UserError
from cifarlab.report import build
from cifarlab.views import Study
from tests.conftest import write_cifar10_archive

EXPERIMENTS = ("baseline", "batchnorm")
SEEDS = (0, 1)
RUN_FIGURES = ("curves.png", "confusion.png", "per_class.png", "errors.png", "features.png")


def study_arguments(tiny_archive: Path, out: Path, epochs: int = 1) -> list[str]:
    return [
        "study", "--data", str(tiny_archive), "--out", str(out), "--epochs", str(epochs),
        "--experiments", ",".join(EXPERIMENTS), "--repeats", "2", "--workers", "2", "--quiet",
        "--tensorboard",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def repeated_study(tiny_archive, tmp_path_factory) -> Path:
    """Two experiments × two seeds, one epoch each, two runs at a time on a local Ray."""
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("repeated")
    with pytest.MonkeyPatch.context() as patch:
        # Ray's workers inherit the environment it starts with: give them the test cache.
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
        assert cli.main(study_arguments(tiny_archive, out)) == 0
    return out


def run_metrics(out: Path, experiment: str) -> list[dict]:
    return [
        json.loads((out / experiment / f"seed={seed}" / "metrics.json").read_text())
        for seed in SEEDS
    ]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_each_experiment_and_seed_is_an_ordinary_run_folder(repeated_study):
    for experiment in EXPERIMENTS:
        assert not (repeated_study / experiment / "config.json").exists()
        for seed in SEEDS:
            run_dir = repeated_study / experiment / f"seed={seed}"
            config = run_folder.read_config(run_dir)
            assert (config.name, config.seed, config.epochs) == (experiment, seed, 1)
            assert "verdict" in json.loads((run_dir / "metrics.json").read_text())["diagnosis"]
            # Figures that need the images are drawn for the first seed only.
            expected = (*RUN_FIGURES, "samples.png") if seed == SEEDS[0] else RUN_FIGURES[:3]
            assert sorted(path.name for path in run_dir.glob("*.png")) == sorted(expected)
    with open(repeated_study / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == build.RESULT_COLUMNS and build.RESULT_COLUMNS[-1] == "seed"
    assert [(row["experiment"], int(row["seed"])) for row in rows] == [
        (experiment, seed) for experiment in EXPERIMENTS for seed in SEEDS
    ]


@pytest.mark.slow
def test_summary_matches_numpy_and_scipy_on_the_run_metrics(repeated_study):
    with open(repeated_study / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {key: str(value) for key, value in row.items()}
        for row in json.loads((repeated_study / "summary.json").read_text())
    ]
    assert [row["experiment"] for row in rows] == list(EXPERIMENTS)
    for row in rows:
        runs = run_metrics(repeated_study, row["experiment"])
        assert int(row["n"]) == len(SEEDS)
        for split in ("val", "test"):
            for name in ("accuracy", "loss"):
                values = np.array([run[split][name] for run in runs])
                half_width = scipy_stats.t.ppf(0.975, len(values) - 1) * scipy_stats.sem(values)
                prefix = f"{split}_{name}"
                assert float(row[f"{prefix}_mean"]) == pytest.approx(values.mean())
                assert float(row[f"{prefix}_std"]) == pytest.approx(values.std(ddof=1))
                assert float(row[f"{prefix}_ci_low"]) == pytest.approx(values.mean() - half_width)
                assert float(row[f"{prefix}_ci_high"]) == pytest.approx(values.mean() + half_width)


@pytest.mark.slow
# SciPy warns when one side's values are all equal (one epoch on tiny data often scores 10%).
@pytest.mark.filterwarnings("ignore:Precision loss occurred")
def test_report_compares_experiments_with_intervals_across_seeds(repeated_study):
    baseline, batchnorm = (
        np.array([run["test"]["accuracy"] for run in run_metrics(repeated_study, name)])
        for name in EXPERIMENTS
    )
    page = (repeated_study / "report.html").read_text()
    markdown = (repeated_study / "report.md").read_text()
    assert "Across seeds" in page and "## Across seeds" in markdown
    sentence = next(line for line in markdown.splitlines() if "over 2 seeds" in line)
    assert "batchnorm" in sentence and "baseline" in sentence and "test accuracy" in sentence
    if np.all(batchnorm == batchnorm[0]) and np.all(baseline == baseline[0]):
        return  # No spread at all: SciPy's interval is undefined; the sentence exists.
    welch = scipy_stats.ttest_ind(batchnorm, baseline, equal_var=False).confidence_interval()
    half_width = 100 * (welch.high - welch.low) / 2
    assert f"± {half_width:.1f} points" in sentence
    assert ("within noise" in sentence) == (welch.low <= 0 <= welch.high)
    assert sentence.removeprefix("- ") in page
    # The diagnosis still compares the runs, seed by seed.
    assert "Seed 0: " in markdown and "Seed 1: " in markdown


@pytest.mark.slow
def test_report_command_rebuilds_the_same_files_from_the_folders(repeated_study):
    names = ("report.md", "results.csv", "results.json", "summary.csv", "summary.json")
    before = {name: (repeated_study / name).read_bytes() for name in names}
    runs_before = {name: snapshot(repeated_study / name) for name in EXPERIMENTS}
    (repeated_study / "summary.csv").unlink()
    assert cli.main(["report", str(repeated_study)]) == 0
    for name, content in before.items():
        assert (repeated_study / name).read_bytes() == content, name
    for name in EXPERIMENTS:
        assert snapshot(repeated_study / name) == runs_before[name], name


@pytest.mark.slow
def test_rerunning_the_study_trains_nothing(repeated_study, tiny_archive, capsys):
    runs_before = {name: snapshot(repeated_study / name) for name in EXPERIMENTS}
    arguments = [arg for arg in study_arguments(tiny_archive, repeated_study) if arg != "--quiet"]
    assert cli.main(arguments) == 0
    assert "4 of 4 runs already finished" in capsys.readouterr().out
    for name in EXPERIMENTS:
        assert snapshot(repeated_study / name) == runs_before[name], name


@pytest.mark.slow
def test_a_changed_setting_is_refused_before_anything_runs(repeated_study, tiny_archive, capsys):
    runs_before = {name: snapshot(repeated_study / name) for name in EXPERIMENTS}
    assert cli.main(study_arguments(tiny_archive, repeated_study, epochs=2)) == 2
    assert "holds a run with a different config" in capsys.readouterr().err
    for name in EXPERIMENTS:
        assert snapshot(repeated_study / name) == runs_before[name], name


@pytest.mark.slow
def test_other_data_is_refused_before_anything_runs(repeated_study, tmp_path, capsys):
    runs_before = {name: snapshot(repeated_study / name) for name in EXPERIMENTS}
    other = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", seed=1)
    assert cli.main(study_arguments(other, repeated_study)) == 2
    assert "was trained on other data" in capsys.readouterr().err
    for name in EXPERIMENTS:
        assert snapshot(repeated_study / name) == runs_before[name], name


@pytest.mark.slow
def test_study_object_keys_runs_by_experiment_and_seed(repeated_study):
    study = Study(repeated_study)
    assert list(study.runs) == [f"{name}/seed={seed}" for name in EXPERIMENTS for seed in SEEDS]
    assert [row["experiment"] for row in study.summary] == list(EXPERIMENTS)
    assert len(study.results) == 4
    assert study.differences and "over 2 seeds" in study.differences[0]
    assert all(entry["sentence"].startswith("Seed ") for entry in study.comparisons)
    page = study._repr_html_()
    assert "Across seeds" in page and page.index("Across seeds") < page.index("Verdicts")


def test_a_report_refuses_the_same_experiment_and_seed_twice(trained_run, tmp_path, capsys):
    for copy in ("first", "second"):
        shutil.copytree(trained_run, tmp_path / copy / "baseline")
    run_dirs = [str(tmp_path / copy / "baseline") for copy in ("first", "second")]
    assert cli.main(["report", *run_dirs, "--out", str(tmp_path / "report")]) == 2
    assert "Each experiment and seed may appear once" in capsys.readouterr().err


def test_repeats_need_the_datas_path_not_loaded_data(tiny_archive, tmp_path):
    data = api.load_data(tiny_archive, quiet=True)
    with pytest.raises(UserError, match="give the data's path"):
        api.study(["baseline"], data=data, out=tmp_path, repeats=2)
    assert not any(tmp_path.iterdir())


def test_each_repeated_run_logs_its_hparams_under_its_own_name(repeated_study):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for experiment in EXPERIMENTS:
        for seed in SEEDS:
            logs = repeated_study / experiment / f"seed={seed}" / "logs"
            accumulator = event_accumulator.EventAccumulator(str(logs))
            accumulator.Reload()
            [content] = accumulator.PluginTagToContent("hparams").values()
            start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
            assert start.hparams["seed"].number_value == seed
            assert start.hparams["name"].string_value == experiment
            assert start.group_name == f"{experiment}/seed={seed}"  # Named as in MLflow.
