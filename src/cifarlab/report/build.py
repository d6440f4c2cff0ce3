"""The study report, written from run folders alone: no data and no training needed.

`write_report(run_dirs, out_dir)` writes the results table as CSV and JSON (one row per run),
what each change did (computed here once and stored), the overlaid loss and accuracy curves,
copies of the runs' sample and augmentation grids, and the Markdown and HTML pages
(`report.pages`); the file names are `run_folder`'s. Each run's diagnosis is read from its
metrics, where evaluation stored it.

When an experiment has runs with several seeds (`cifarlab study --repeats K`), runs are named
`<experiment>/seed=<s>`, the seed summary (CSV and JSON) holds one row per experiment across
seeds (`scale.statistics`), and the pages add an "Across seeds" section.

    cifarlab report runs/baseline runs/augmented runs/batchnorm --out runs
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cifarlab import diagnosis, run_folder
from cifarlab.config import EXPERIMENTS, describe_differences
from cifarlab.errors import UserError
from cifarlab.report import pages, plots, run_figures
from cifarlab.scale import statistics
from cifarlab.views import Run

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
COPIED_FIGURES = (run_folder.SAMPLES, run_folder.AUGMENTATION)


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the report for `run_dirs` into `out_dir`; return the paths written, by name."""
    run_dirs = find_run_folders(run_dirs)
    if not run_dirs:
        raise UserError("Give at least one run folder to report on.")
    runs = [Run(run_dir) for run_dir in run_dirs]
    for run in runs:
        run.finished_metrics()  # Refuses an unfinished run with one sentence.
    labels = run_labels(runs)
    repeated = any("/" in label for label in labels)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = [results_row(run) for run in runs]
    written = {
        run_folder.RESULTS_CSV: run_folder.write_csv(
            out_dir / run_folder.RESULTS_CSV, rows, RESULT_COLUMNS
        ),
        run_folder.RESULTS_JSON: run_folder.write_json(out_dir / run_folder.RESULTS_JSON, rows),
    }
    summary, differences = [], []
    if repeated:
        values = statistics.metric_values([(run.name, run.metrics) for run in runs])
        summary, differences = (
            statistics.summarise_seeds(values),
            statistics.compare_with_reference(values),
        )
        for name, write, arguments in (
            (run_folder.SEED_SUMMARY_CSV, run_folder.write_csv, (statistics.SUMMARY_COLUMNS,)),
            (run_folder.SEED_SUMMARY_JSON, run_folder.write_json, ()),
        ):
            written[name] = write(out_dir / name, summary, *arguments)
    comparisons = compare_changes(runs, repeated)
    written[run_folder.COMPARISONS] = run_folder.write_json(
        out_dir / run_folder.COMPARISONS,
        {"comparisons": comparisons, "differences": differences},
    )
    for run in runs:
        if run_figures.missing(run.path, run_folder.FILE_FIGURES):
            run_figures.draw_from_files(run)
    written.update(study_figures(runs, labels, out_dir))
    page = pages.Page(
        runs=runs, labels=labels, rows=rows, comparisons=comparisons, out_dir=out_dir,
        rules=diagnosis.rules(len(runs[0].metrics["class_names"])), summary=summary,
        differences=differences,
    )  # fmt: skip
    for name, render in (
        (run_folder.REPORT_MD, pages.markdown),
        (run_folder.REPORT_HTML, pages.html),
    ):
        written[name] = run_folder.write_text(out_dir / name, render(page))
    return written


def find_run_folders(paths: list[str | Path]) -> list[Path]:
    """Run folders from the paths given: each a run folder, or a study folder holding some."""
    found = []
    for path in map(Path, paths):
        if run_folder.holds_config(path) or not path.is_dir():
            found.append(path)
            continue
        inside = sorted(run_folder.finished_runs_in(path), key=_study_order)
        if not inside:
            raise UserError(f"{path} is neither a run folder nor a folder of finished runs.")
        found.extend(inside)
    return found


def run_labels(runs: list[Run]) -> list[str]:
    """Each run's name in the report: its experiment, with `/seed=<s>` if any is repeated.

    Two runs of one experiment with one seed are refused.
    """
    keys = [(run.name, run.config.seed) for run in runs]
    if len(set(keys)) != len(keys):
        listed = ", ".join(f"{name} (seed {seed})" for name, seed in keys)
        raise UserError(f"Each experiment and seed may appear once in a report, not {listed}.")
    names = [name for name, _ in keys]
    if len(set(names)) == len(names):
        return names
    return [f"{name}/{run_folder.SEED_PREFIX}{seed}" for name, seed in keys]


def _study_order(run_dir: Path) -> tuple[int, str, int]:
    """The notebook's experiment order (baseline, augmented, batchnorm), then other names;
    an experiment's `seed=<s>` folders by seed."""
    seed = run_dir.name.removeprefix(run_folder.SEED_PREFIX)
    if seed != run_dir.name and seed.lstrip("-").isdigit():
        name, number = run_dir.parent.name, int(seed)
    else:
        name, number = run_dir.name, 0
    known = list(EXPERIMENTS)
    return (known.index(name) if name in known else len(known), name, number)


def default_out_dir(run_dirs: list[Path]) -> Path:
    """Where `cifarlab report` writes without --out: the folder holding the run folders
    (for `<experiment>/seed=<s>` folders, the one holding the experiments)."""
    parents = {run_folder.experiment_folder(Path(run_dir).resolve()).parent for run_dir in run_dirs}
    return parents.pop() if len(parents) == 1 else Path("report")


def compare_changes(runs: list[Run], repeated: bool) -> list[dict]:
    """What each change did by the stored diagnoses: the notebook's questions for its pairs,
    then every other experiment against its base; with repeats, among the runs of each seed."""
    if repeated:
        entries = diagnosis.compare_by_seed(
            {(run.name, run.config.seed): run.diagnosis for run in runs}
        )
    else:
        entries = diagnosis.compare_runs({run.name: run.diagnosis for run in runs})
    by_key = {(run.name, run.config.seed): run for run in runs}
    for run in runs:
        base = by_key.get((run.config.base, run.config.seed))
        if base is None or (run.name, run.config.base) in diagnosis.COMPARISONS:
            continue
        entry = diagnosis.compare_with_base(
            run.name, base.name,
            [item for item in describe_differences(base.config, run.config)
             if not item.startswith("name ")],
            _compared_numbers(run), _compared_numbers(base),
        )  # fmt: skip
        if repeated:
            seed = run.config.seed
            entry = {**entry, "seed": seed, "sentence": f"Seed {seed}: {entry['sentence']}"}
        entries.append(entry)
    return entries


def _compared_numbers(run: Run) -> dict:
    return {"diagnosis": run.diagnosis, "test_accuracy": run.metrics["test"]["accuracy"]}


def results_row(run: Run) -> dict:
    """One row of the results table: the run's size, epochs, scores per split, speed and verdict."""
    metrics = run.metrics
    row = {"experiment": run.name}
    for key in ("params", "epochs_run", "best_epoch"):
        row[key] = metrics[key]
    for split in ("train", "val", "test"):
        row[f"{split}_loss"] = round(metrics[split]["loss"], 4)
        row[f"{split}_accuracy"] = round(metrics[split]["accuracy"], 4)
    for key in ("train_seconds", "seconds_per_epoch", "images_per_second"):
        row[key] = metrics.get(key)
    row["verdict"] = run.diagnosis.get("verdict")
    row["seed"] = run.config.seed
    return {column: row[column] for column in RESULT_COLUMNS}


def study_figures(runs: list[Run], labels: list[str], out_dir: Path) -> dict[str, Path]:
    """The report folder's figures: the overlaid curves, and copies of samples and augmentation."""
    histories = {label: run.history_rows for label, run in zip(labels, runs, strict=True)}
    written = {
        name: plots.compare(histories, metric, out_dir / name)
        for name, metric in (
            (run_folder.COMPARE_LOSS, "loss"),
            (run_folder.COMPARE_ACCURACY, "accuracy"),
        )
    }
    for name in COPIED_FIGURES:
        source = next((run.path / name for run in runs if (run.path / name).is_file()), None)
        if source is None:
            continue
        target = out_dir / name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        written[name] = target
    return written
