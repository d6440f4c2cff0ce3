"""`cifarlab study` and `cifarlab report` through the CLI on the tiny official-format archive:
every figure and report file, a report rebuilt without training, and a study resumed."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli, diagnosis
from cifarlab.report import build

EXPERIMENTS = ("baseline", "augmented", "batchnorm")
RUN_FIGURES = ("curves.png", "confusion.png", "per_class.png", "errors.png", "features.png")
REPORT_FILES = ("report.html", "report.md", "results.csv", "results.json", "samples.png",
                "augmentation.png", "compare_loss.png", "compare_accuracy.png")  # fmt: skip


@pytest.fixture(scope="module")
def study_folder(tiny_archive, tmp_path_factory) -> Path:
    """The three experiments, two epochs each, studied through the CLI's own entry point."""
    out = tmp_path_factory.mktemp("study")
    arguments = ["study", "--data", str(tiny_archive), "--out", str(out), "--epochs", "2"]
    assert cli.main([*arguments, "--quiet"]) == 0
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class References(HTMLParser):
    """Collects every src and href of an HTML page."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def references(page: Path) -> list[str]:
    parser = References()
    parser.feed(page.read_text())
    return parser.found


def test_study_writes_every_figure_and_report_file(study_folder):
    for name in REPORT_FILES:
        assert (study_folder / name).is_file(), name
    for experiment in EXPERIMENTS:
        for name in (*RUN_FIGURES, "samples.png"):
            assert (study_folder / experiment / name).is_file(), f"{experiment}/{name}"
    assert (study_folder / "augmented" / "augmentation.png").is_file()
    assert not (study_folder / "baseline" / "augmentation.png").exists()


def test_every_png_decodes_and_is_not_blank(study_folder):
    pngs = sorted(study_folder.rglob("*.png"))
    assert len(pngs) == 4 + 3 * 6 + 1  # Report folder, six per run, augmentation in its run.
    for path in pngs:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
        assert min(pixels.shape) > 100, path
        assert pixels.std() > 5.0, f"{path} looks blank"


def test_results_have_one_row_per_run_with_the_promised_columns(study_folder):
    with open(study_folder / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["experiment"] for row in rows] == list(EXPERIMENTS)
    assert tuple(rows[0]) == build.RESULT_COLUMNS
    for row in rows:
        assert row["verdict"] in diagnosis.VERDICTS
        assert int(row["epochs_run"]) == 2 and 1 <= int(row["best_epoch"]) <= 2
        assert 0 <= float(row["test_accuracy"]) <= 1 and float(row["images_per_second"]) > 0
    assert json.loads((study_folder / "results.json").read_text())[0]["experiment"] == "baseline"


def test_diagnosis_is_saved_in_each_runs_metrics(study_folder):
    rows = json.loads((study_folder / "results.json").read_text())
    for row in rows:
        metrics = json.loads((study_folder / row["experiment"] / "metrics.json").read_text())
        assert metrics["diagnosis"]["verdict"] == row["verdict"]
        # The checkpoint the evaluation used is the epoch the diagnosis calls best.
        assert metrics["diagnosis"]["best_epoch"] == metrics["best_epoch"]
        assert set(metrics["diagnosis"]["smoothness"]) == set(diagnosis.CURVES)


def test_html_references_only_files_that_exist(study_folder):
    found = references(study_folder / "report.html")
    links = [reference for reference in found if not reference.startswith("data:")]
    assert len(links) == 4 + 3 * 5  # Every figure is linked, and embedded as data.
    assert len(found) == 2 * len(links)
    for link in links:
        assert (study_folder / link).is_file(), link


def test_report_names_classes_hardware_and_thresholds(study_folder):
    page = (study_folder / "report.html").read_text()
    assert "airplane" in page and "truck" in page
    assert "backend tensorflow" in page or "backend jax" in page or "backend torch" in page
    assert f"{diagnosis.OVERFIT_VAL_LOSS_RISE_PERCENT:g}%" in page
    markdown = (study_folder / "report.md").read_text()
    assert (
        markdown.index("## Results") < markdown.index("## Diagnosis") < markdown.index("## Figures")
    )
    assert "augmented" in markdown and "textbook" in markdown


def test_a_two_epoch_study_draws_no_textbook_conclusions(study_folder):
    # Two epochs are fewer than a comparison of curves needs: every one of the notebook's six
    # comparisons says so, in the stored comparisons and on both pages, and none takes a side.
    stored = json.loads((study_folder / "comparisons.json").read_text())["comparisons"]
    assert len(stored) == 6
    assert {entry["finding"] for entry in stored} == {diagnosis.TOO_LITTLE_EVIDENCE}
    page = (study_folder / "report.html").read_text()
    assert page.count("[too little evidence]</span>") == 6
    assert "[contradicts]" not in page and "[agrees]" not in page
    assert "fewer than 3 epochs" in page  # The rule, stated above the sentences.
    markdown = (study_folder / "report.md").read_text()
    assert markdown.count("- (too little evidence) ") == 6 and "(contradicts)" not in markdown


def test_report_rebuilds_the_same_report_without_training(study_folder):
    before = {name: (study_folder / name).read_bytes()
              for name in ("report.md", "results.csv", "results.json")}  # fmt: skip
    runs_before = {name: snapshot(study_folder / name) for name in EXPERIMENTS}
    run_dirs = [str(study_folder / name) for name in EXPERIMENTS]
    assert cli.main(["report", *run_dirs]) == 0
    for name, content in before.items():
        assert (study_folder / name).read_bytes() == content, name
    for name in EXPERIMENTS:
        assert snapshot(study_folder / name) == runs_before[name], name


def test_report_into_another_folder_links_back_to_the_runs(study_folder, tmp_path):
    out = tmp_path / "elsewhere"
    assert cli.main(["report", str(study_folder), "--out", str(out)]) == 0
    assert (out / "results.csv").read_text() == (study_folder / "results.csv").read_text()
    links = [link for link in references(out / "report.html") if not link.startswith("data:")]
    assert any(link.startswith("../") for link in links)
    for link in links:
        assert (out / link).is_file(), link


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "neither a run folder nor a folder of finished runs" in capsys.readouterr().err


def test_study_refuses_an_unknown_experiment(tiny_archive, tmp_path, capsys):
    arguments = ["study", "--data", str(tiny_archive), "--out", str(tmp_path), "--quiet"]
    assert cli.main([*arguments, "--experiments", "baseline,dropout"]) == 2
    assert "Unknown experiment 'dropout'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_interrupted_study_resumes_without_retraining_finished_runs(
    study_folder, tiny_archive, tmp_path
):
    # baseline finished; batchnorm interrupted after training, before its evaluation;
    # augmented never started.
    shutil.copytree(study_folder / "baseline", tmp_path / "baseline")
    shutil.copytree(study_folder / "batchnorm", tmp_path / "batchnorm")
    (tmp_path / "batchnorm" / "metrics.json").unlink()
    baseline_before = snapshot(tmp_path / "baseline")
    checkpoint = (tmp_path / "batchnorm" / "best.keras").stat().st_mtime_ns
    history = (tmp_path / "batchnorm" / "history.csv").read_text()

    arguments = ["study", "--data", str(tiny_archive), "--out", str(tmp_path), "--epochs", "2"]
    assert cli.main([*arguments, "--quiet"]) == 0

    assert snapshot(tmp_path / "baseline") == baseline_before
    # The interrupted run is evaluated, not trained again: same checkpoint, same epochs.
    assert (tmp_path / "batchnorm" / "best.keras").stat().st_mtime_ns == checkpoint
    assert (tmp_path / "batchnorm" / "history.csv").read_text() == history
    assert (tmp_path / "batchnorm" / "metrics.json").is_file()
    assert (tmp_path / "augmented" / "metrics.json").is_file()
    assert len((tmp_path / "augmented" / "history.csv").read_text().splitlines()) == 1 + 2
    with open(tmp_path / "results.csv", newline="") as file:
        assert [row["experiment"] for row in csv.DictReader(file)] == list(EXPERIMENTS)


def test_the_report_reads_well_on_a_phone_and_states_its_thresholds(study_folder):
    page = (study_folder / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('<div class="table-scroll">') >= 2  # Results and diagnosis tables.
    # The underfitting rule prints its threshold itself, then how it is made.
    markdown = (study_folder / "report.md").read_text()
    assert "at or above 1.151 (0.5 × the chance loss ln(10) = 2.303)" in markdown
    # The two train losses are told apart: inference-mode scores vs training-mode curves.
    assert "batch normalization using its running averages" in markdown
