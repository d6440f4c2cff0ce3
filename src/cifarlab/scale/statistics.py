"""Across seeds: each experiment's repeated runs summarised, and experiments compared honestly.

One run cannot tell a real improvement from seed luck, so repeated runs are summarised as mean
± sample standard deviation with a Student-t 95% interval of the mean (`scipy.stats.t`), and
two experiments are compared by Welch's interval of the difference of their means
(`scipy.stats.ttest_ind(equal_var=False)`), which assumes neither equal spreads nor equal
numbers of seeds. A difference is "within noise" when that interval includes zero.

`summarise_seeds` gives one row per experiment and `compare_with_reference` the sentences:
"batchnorm beats baseline by 3.1 ± 0.6 points of test accuracy over 5 seeds".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
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


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and the 95% interval of the mean of n values.

    With a single value the spread and interval are unknown: `std` is NaN and the interval
    collapses to the value itself, so callers can still print it but `n` says how little it means.
    """

    mean: float
    std: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width: the `x` in `mean ± x`."""
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference:
    """`mean(a) - mean(b)` with its Welch 95% interval (NaN bounds when it cannot be had)."""

    mean: float
    low: float
    high: float
    n_a: int
    n_b: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def within_noise(self) -> bool:
        """True when the interval includes zero, or is unknown."""
        return math.isnan(self.low) or not (self.low > 0 or self.high < 0)


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std and the t-interval `mean ± t(n-1) · std / √n` of `values`."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("Cannot summarise an empty list of values.")
    mean = float(array.mean())
    if array.size == 1:
        return Summary(mean, math.nan, mean, mean, 1)
    std = float(array.std(ddof=1))
    if np.ptp(array) == 0:
        return Summary(mean, 0.0, mean, mean, int(array.size))
    low, high = scipy_stats.t.interval(
        confidence, array.size - 1, loc=mean, scale=scipy_stats.sem(array)
    )
    return Summary(mean, std, float(low), float(high), int(array.size))


def difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """Welch's interval for `mean(a) - mean(b)`; NaN bounds with one value or no spread."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return Difference(mean, math.nan, math.nan, int(a.size), int(b.size))
    with warnings.catch_warnings():
        # SciPy warns of precision loss when the values are nearly identical; the interval is
        # then simply narrow, which is the right answer.
        warnings.simplefilter("ignore", RuntimeWarning)  # pragma: no mutate (SciPy warns no other)
        interval = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return Difference(mean, float(interval.low), float(interval.high), int(a.size), int(b.size))


def compare_sentence(
    name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], what: str = "test accuracy"
) -> str:
    """One sentence comparing two sets of accuracies (fractions), in percentage points.

    "batchnorm beats baseline by 3.1 ± 0.6 points of test accuracy over 5 seeds", where
    ± is the half-width of the 95% interval of the difference, or "... within noise ...".
    """
    result = difference(a, b)
    seeds = _seeds(result.n_a, result.n_b)
    points = 100 * result.mean
    if min(result.n_a, result.n_b) < 2:
        leader, other = (name_a, name_b) if points >= 0 else (name_b, name_a)
        return (
            f"{leader} scores {abs(points):.1f} points of {what} above {other} {seeds}; "
            "with one seed there is no interval, so this may be noise."
        )
    if math.isnan(result.low):
        return (
            f"The seeds cannot tell {name_a} and {name_b} apart on {what}: every seed of each "
            f"scored the same, so there is no spread to judge a {points:+.1f}-point "
            f"difference {seeds} by."
        )
    spread = 100 * result.half_width
    if result.within_noise:
        return (
            f"{name_a} and {name_b} are within noise on {what}: the difference is "
            f"{points:+.1f} ± {spread:.1f} points {seeds}."
        )
    leader, other = (name_a, name_b) if points > 0 else (name_b, name_a)
    return f"{leader} beats {other} by {abs(points):.1f} ± {spread:.1f} points of {what} {seeds}."


def format_summary(summary: Summary, percent: bool = True) -> str:
    """`41.2 ± 1.3% (95% CI 39.6–42.8, 3 seeds)`, or plain numbers for losses."""
    scale, unit = (100, "%") if percent else (1, "")
    digits = 1 if percent else 4
    if summary.n == 1:
        return f"{scale * summary.mean:.{digits}f}{unit} (1 seed, no interval)"
    return (
        f"{scale * summary.mean:.{digits}f} ± {scale * summary.std:.{digits}f}{unit} "
        f"(95% CI {scale * summary.low:.{digits}f}–{scale * summary.high:.{digits}f}, "
        f"{summary.n} seeds)"
    )


def _seeds(n_a: int, n_b: int) -> str:
    if n_a == n_b:
        return "over 1 seed" if n_a == 1 else f"over {n_a} seeds"
    return f"over {n_a} and {n_b} seeds"


def metric_values(runs: list[tuple[str, dict]]) -> dict[str, dict[str, list[float]]]:
    """Per experiment, in first-seen order: each metric's values over its runs.

    `runs` holds (experiment name, the run's metrics) pairs.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for name, metrics in runs:
        experiment = values.setdefault(name, {metric: [] for metric in METRICS})
        for metric in METRICS:
            split, quantity = metric.split("_")
            experiment[metric].append(float(metrics[split][quantity]))
    return values


def summary_row(values: dict[str, list[float]]) -> dict:
    """`n`, then mean, std, ci_low and ci_high of every metric (None where unknown)."""
    row: dict = {"n": len(values[METRICS[0]])}
    for metric in METRICS:
        summary = summarize(values[metric]) if values[metric] else None
        numbers = (
            (summary.mean, summary.std, summary.low, summary.high) if summary else (math.nan,) * 4
        )
        for statistic, number in zip(STATISTICS, numbers, strict=True):
            # NaN (the spread of a single seed) is not valid JSON; None is.
            row[f"{metric}_{statistic}"] = None if math.isnan(number) else number
    return row


def summarise_seeds(values: dict[str, dict[str, list[float]]]) -> list[dict]:
    """One row per experiment: its name, `n`, then each metric's statistics."""
    return [{"experiment": name, **summary_row(metrics)} for name, metrics in values.items()]


def compare_with_reference(
    values: dict[str, dict[str, list[float]]], metric: str = "test_accuracy"
) -> list[str]:
    """Every experiment against the baseline (else the first experiment) on `metric`."""
    names = list(values)
    reference = REFERENCE if REFERENCE in values else names[0]
    what = metric.replace("val_", "validation ").replace("test_", "test ")
    return [
        compare_sentence(name, values[name][metric], reference, values[reference][metric], what)
        for name in names
        if name != reference
    ]


def display_rows(rows: list[dict]) -> list[dict]:
    """Summary rows as the report's "Across seeds" table shows them: one text per metric."""
    shown = []
    for row in rows:
        cells = {"experiment": row["experiment"], "n": row["n"]}
        for metric in METRICS:
            values = [row[f"{metric}_{statistic}"] for statistic in STATISTICS]
            numbers = (math.nan if value is None else value for value in values)
            cells[metric] = format_summary(
                Summary(*numbers, row["n"]), percent=metric.endswith("accuracy")
            )
        shown.append(cells)
    return shown
