"""Across seeds: each experiment's repeated runs summarised, and experiments compared honestly.

A study run with `--repeats K` has K runs per experiment. `summary_rows` gives one row per
experiment — the number of seeds and, for validation and test accuracy and loss, the mean,
sample standard deviation and 95% confidence interval (`cifarlab.stats`) — and `sentences`
compares every experiment with the baseline on test accuracy, saying when the difference is
within noise: "batchnorm beats baseline by 3.1 ± 0.6 points of test accuracy over 5 seeds".
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from cifarlab import stats

METRICS = ("val_accuracy", "test_accuracy", "val_loss", "test_loss")
STATISTICS = ("mean", "std", "ci_low", "ci_high")
SUMMARY_COLUMNS = (
    "experiment",
    "n",
    *(f"{metric}_{statistic}" for metric in METRICS for statistic in STATISTICS),
)
DISPLAY_COLUMNS = {  # The report's "Across seeds" table: (heading, format) of `display_rows`.
    "experiment": ("Experiment", "{}"),
    "n": ("Seeds", "{}"),
    "val_accuracy": ("Val. acc.", "{}"),
    "test_accuracy": ("Test acc.", "{}"),
    "val_loss": ("Val. loss", "{}"),
    "test_loss": ("Test loss", "{}"),
}
REFERENCE = "baseline"  # What every other experiment is compared with, when it is present.
NOTE = (
    "Mean ± sample standard deviation across seeds, with the Student-t 95% confidence interval "
    "of the mean in parentheses. Each seed changes the validation split, the initial weights and "
    "the order of the batches. Differences are the Welch 95% interval of the difference of the "
    "means; one that includes zero is within noise."
)


def metric_values(runs: list[tuple[str, dict]]) -> dict[str, dict[str, list[float]]]:
    """Per experiment, in first-seen order: each metric's values over its runs.

    `runs` holds (experiment name, the run's `metrics.json` contents) pairs.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for name, metrics in runs:
        experiment = values.setdefault(name, {metric: [] for metric in METRICS})
        for metric in METRICS:
            split, quantity = metric.split("_")
            experiment[metric].append(float(metrics[split][quantity]))
    return values


def summary_rows(values: dict[str, dict[str, list[float]]]) -> list[dict]:
    """One row per experiment: `n`, then mean, std, ci_low and ci_high of every metric."""
    rows = []
    for name, metrics in values.items():
        row = {"experiment": name, "n": len(metrics[METRICS[0]])}
        for metric in METRICS:
            summary = stats.summarize(metrics[metric])
            numbers = (summary.mean, summary.std, summary.low, summary.high)
            for statistic, number in zip(STATISTICS, numbers, strict=True):
                # NaN (the spread of a single seed) is not valid JSON; None is.
                row[f"{metric}_{statistic}"] = None if math.isnan(number) else number
        rows.append(row)
    return rows


def sentences(
    values: dict[str, dict[str, list[float]]], metric: str = "test_accuracy"
) -> list[str]:
    """Every experiment against the baseline (else the first experiment) on `metric`."""
    names = list(values)
    reference = REFERENCE if REFERENCE in values else names[0]
    what = metric.replace("val_", "validation ").replace("test_", "test ")
    return [
        stats.compare(name, values[name][metric], reference, values[reference][metric], what)
        for name in names
        if name != reference
    ]


def display_rows(rows: list[dict]) -> list[dict]:
    """Summary rows as the report's "Across seeds" table shows them: one text per metric."""
    shown = []
    for row in rows:
        cells = {"experiment": row["experiment"], "n": row["n"]}
        for metric in METRICS:
            percent = metric.endswith("accuracy")
            values = [row[f"{metric}_{statistic}"] for statistic in STATISTICS]
            numbers = (math.nan if value is None else value for value in values)
            summary = stats.Summary(*numbers, row["n"])
            cells[metric] = stats.format_summary(summary, percent)
        shown.append(cells)
    return shown


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path
