"""The study report, built from run folders alone: no data and no training needed.

`build(run_dirs, out_dir)` writes `results.csv` and `results.json` (one row per run),
`compare_loss.png`, `compare_accuracy.png`, copies of the runs' `samples.png` and
`augmentation.png`, and `report.md` and `report.html` (the table, then the diagnosis with
its rules and numbers, then the figures). The HTML embeds its images, so it opens from disk
anywhere; each image also links to its file.

When an experiment has runs with several seeds (`cifarlab study --repeats K`), runs are named
`<experiment>/seed=<s>`, `summary.csv` and `summary.json` hold one row per experiment across
seeds (`cifarlab.seeds`), and the pages add an "Across seeds" section.

    cifarlab report runs/baseline runs/augmented runs/batchnorm --out runs
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cifarlab import diagnosis, plots, render, seeds
from cifarlab.config import EXPERIMENTS
from cifarlab.errors import UserError
from cifarlab.runs import read_history

# One results row per run; the columns in order. Later additions go at the end.
RESULT_COLUMNS = (
    "experiment",
    "params",
    "epochs_run",
    "best_epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "train_seconds",
    "seconds_per_epoch",
    "images_per_second",
    "verdict",
    "seed",
)
RUN_FIGURES = ("curves.png", "confusion.png", "per_class.png", "errors.png", "features.png")
STUDY_FIGURES = ("compare_loss.png", "compare_accuracy.png", "samples.png", "augmentation.png")


@dataclass
class RunRecord:
    """What a finished run folder holds, read once."""

    run_dir: Path
    config: dict
    metrics: dict
    history: list[dict]
    environment: dict
    label: str = ""  # How the report names the run: its experiment, with the seed if repeated.

    @property
    def name(self) -> str:
        return self.metrics.get("experiment") or self.config["name"]

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")


def load_run(run_dir: str | Path) -> RunRecord:
    """A finished run folder, or a `UserError` saying what it lacks."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (it has no config.json).")
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} has no metrics.json; finish it with cifarlab train first.")
    environment_path = run_dir / "environment.json"
    return RunRecord(
        run_dir=run_dir,
        config=json.loads((run_dir / "config.json").read_text()),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
        history=_history(run_dir),
        environment=json.loads(environment_path.read_text()) if environment_path.is_file() else {},
    )


def name_runs(runs: list[RunRecord]) -> bool:
    """Label each run by its experiment, adding `/seed=<s>` if any experiment has several runs.

    Returns whether there were repeats; two runs of one experiment with one seed are refused.
    """
    keys = [(run.name, run.seed) for run in runs]
    if len(set(keys)) != len(keys):
        listed = ", ".join(f"{name} (seed {seed})" for name, seed in keys)
        raise UserError(f"Each experiment and seed may appear once in a report, not {listed}.")
    names = [run.name for run in runs]
    repeated = len(set(names)) != len(names)
    for run in runs:
        run.label = f"{run.name}/seed={run.seed}" if repeated else run.name
    return repeated


def _history(run_dir: Path) -> list[dict]:
    if not (run_dir / "history.csv").is_file():
        raise UserError(f"{run_dir} has no history.csv; it is not a trained run folder.")
    return read_history(run_dir / "history.csv")


def run_folders(paths: list[str | Path]) -> list[Path]:
    """Run folders from the paths given: each a run folder, or a study folder holding some."""
    found = []
    for path in map(Path, paths):
        if (path / "config.json").is_file() or not path.is_dir():
            found.append(path)
            continue
        finished = [*path.glob("*/metrics.json"), *path.glob("*/seed=*/metrics.json")]
        inside = sorted((child.parent for child in finished), key=_study_order)
        if not inside:
            raise UserError(f"{path} is neither a run folder nor a folder of finished runs.")
        found.extend(inside)
    return found


def _experiment_dir(run_dir: Path) -> Path:
    return run_dir.parent if run_dir.name.startswith("seed=") else run_dir


def _study_order(run_dir: Path) -> tuple[int, str, int]:
    """The notebook's experiment order (baseline, augmented, batchnorm), then other names;
    an experiment's `seed=<s>` folders by seed."""
    seed = run_dir.name.removeprefix("seed=")
    if seed != run_dir.name and seed.lstrip("-").isdigit():
        name, number = run_dir.parent.name, int(seed)
    else:
        name, number = run_dir.name, 0
    known = list(EXPERIMENTS)
    return (known.index(name) if name in known else len(known), name, number)


def default_out_dir(run_dirs: list[Path]) -> Path:
    """Where `cifarlab report` writes without --out: the folder holding the run folders
    (for `<experiment>/seed=<s>` folders, the one holding the experiments)."""
    parents = {_experiment_dir(Path(run_dir).resolve()).parent for run_dir in run_dirs}
    return parents.pop() if len(parents) == 1 else Path("report")


def build(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the report for `run_dirs` into `out_dir`; return the paths written, by name."""
    run_dirs = run_folders(run_dirs)
    if not run_dirs:
        raise UserError("Give at least one run folder to report on.")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    repeated = name_runs(runs)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)

    diagnoses = {run.label: diagnose(run) for run in runs}
    rows = [results_row(run, diagnoses[run.label]) for run in runs]
    written = {"results.csv": write_csv(rows, out_dir / "results.csv")}
    written["results.json"] = out_dir / "results.json"
    written["results.json"].write_text(json.dumps(rows, indent=2) + "\n")
    summary, sentences = [], []
    if repeated:
        values = seeds.metric_values([(run.name, run.metrics) for run in runs])
        summary, sentences = seeds.summary_rows(values), seeds.sentences(values)
        written["summary.csv"] = seeds.write_csv(summary, out_dir / "summary.csv")
        written["summary.json"] = out_dir / "summary.json"
        written["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    for run in runs:
        draw_missing_run_figures(run)
    written.update(study_figures(runs, out_dir))
    page = render.Page(
        runs, rows, diagnoses, change_comparisons(runs, diagnoses, repeated), out_dir,
        diagnosis.rules(num_classes(runs[0])), summary, sentences,
    )  # fmt: skip
    written["report.md"] = out_dir / "report.md"
    written["report.md"].write_text(render.markdown(page))
    written["report.html"] = out_dir / "report.html"
    written["report.html"].write_text(render.html(page))
    return written


def change_comparisons(
    runs: list[RunRecord], diagnoses: dict[str, dict], repeated: bool
) -> list[dict]:
    """What each change did by the diagnosis; with repeats, among the runs of each seed.

    A diagnosis describes one run's curves, so repeated runs are compared seed by seed, each
    sentence beginning with its seed.
    """
    if not repeated:
        return diagnosis.compare(diagnoses)
    entries = []
    for seed in dict.fromkeys(run.seed for run in runs):
        same_seed = {run.name: diagnoses[run.label] for run in runs if run.seed == seed}
        entries += [
            {**entry, "seed": seed, "sentence": f"Seed {seed}: {entry['sentence']}"}
            for entry in diagnosis.compare(same_seed)
        ]
    return entries


def num_classes(run: RunRecord) -> int:
    return len(run.metrics["class_names"])


def diagnose(run: RunRecord) -> dict:
    """The run's diagnosis, computed afresh from its history with the current rules."""
    return diagnosis.diagnose(run.history, num_classes(run))


def results_row(run: RunRecord, run_diagnosis: dict) -> dict:
    """One row of `results.csv`: the run's size, epochs, scores per split, speed and verdict."""
    metrics = run.metrics
    row = {"experiment": run.name}
    for key in ("params", "epochs_run", "best_epoch"):
        row[key] = metrics[key]
    for split in ("train", "val", "test"):
        row[f"{split}_loss"] = round(metrics[split]["loss"], 4)
        row[f"{split}_accuracy"] = round(metrics[split]["accuracy"], 4)
    for key in ("train_seconds", "seconds_per_epoch", "images_per_second"):
        row[key] = metrics.get(key)
    row["verdict"] = run_diagnosis["verdict"]
    row["seed"] = run.seed
    return {column: row[column] for column in RESULT_COLUMNS}


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def draw_run_figures(run: RunRecord) -> list[Path]:
    """The figures drawn from a run folder's files: curves, confusion matrix, per-class bars."""
    metrics, run_dir = run.metrics, run.run_dir
    return [
        plots.curves(
            run.history,
            metrics["best_epoch"],
            run_dir / "curves.png",
            f"{run.name}: training and validation per epoch",
        ),
        plots.confusion(
            metrics["confusion_matrix"], metrics["class_names"], run_dir / "confusion.png"
        ),
        plots.per_class(metrics["per_class"], run_dir / "per_class.png"),
    ]


def draw_missing_run_figures(run: RunRecord) -> None:
    """Draw the file-only figures a run folder lacks (e.g. one trained by `cifarlab train`)."""
    if any(not (run.run_dir / name).is_file() for name in RUN_FIGURES[:3]):
        draw_run_figures(run)


def study_figures(runs: list[RunRecord], out_dir: Path) -> dict[str, Path]:
    """The report folder's figures: the overlaid curves, and copies of samples and augmentation."""
    histories = {run.label: run.history for run in runs}
    written = {
        "compare_loss.png": plots.compare(histories, "loss", out_dir / "compare_loss.png"),
        "compare_accuracy.png": plots.compare(
            histories, "accuracy", out_dir / "compare_accuracy.png"
        ),
    }
    for name in ("samples.png", "augmentation.png"):
        source = next((run.run_dir / name for run in runs if (run.run_dir / name).is_file()), None)
        if source is None:
            continue
        target = out_dir / name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        written[name] = target
    return written
