"""Statistics across seeds: mean, spread and 95% confidence intervals, and honest comparisons.

One run per experiment cannot tell a real improvement from seed luck, so repeated runs are
summarised as mean ± sample standard deviation with a Student-t 95% interval for the mean,
and two experiments are compared by the Welch t-interval of the difference of their means
(it does not assume equal spreads or equal numbers of seeds). A difference is "within noise"
when that interval includes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

CONFIDENCE = 0.95


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
    """`mean(a) - mean(b)` with its Welch 95% interval."""

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
        """True when the interval includes zero, or is unknown because a side has one value."""
        return not (self.low > 0 or self.high < 0) or math.isnan(self.low)


def t_critical(degrees_of_freedom: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t quantile: 2.776 for 4 degrees of freedom at 95%."""
    return float(student_t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std and the t-interval `mean ± t(n-1) · std / √n` of `values`."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("Cannot summarise an empty list of values.")
    mean = float(array.mean())
    if array.size == 1:
        return Summary(mean, math.nan, mean, mean, 1)
    std = float(array.std(ddof=1))
    half_width = t_critical(array.size - 1, confidence) * std / math.sqrt(array.size)
    return Summary(mean, std, mean - half_width, mean + half_width, int(array.size))


def difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference:
    """Welch's interval for `mean(a) - mean(b)`; NaN bounds if either side has one value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(mean, math.nan, math.nan, int(a.size), int(b.size))
    var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    standard_error = math.sqrt(var_a + var_b)
    if standard_error == 0:
        return Difference(mean, mean, mean, int(a.size), int(b.size))
    # Welch–Satterthwaite degrees of freedom.
    degrees = (var_a + var_b) ** 2 / (var_a**2 / (a.size - 1) + var_b**2 / (b.size - 1))
    half_width = t_critical(degrees, confidence) * standard_error
    return Difference(mean, mean - half_width, mean + half_width, int(a.size), int(b.size))


def compare(
    name_a: str,
    a: Sequence[float],
    name_b: str,
    b: Sequence[float],
    what: str = "test accuracy",
) -> str:
    """One sentence comparing two sets of accuracies (fractions), in percentage points.

    "batchnorm beats baseline by 3.1 ± 0.6 points of test accuracy over 5 seeds", where
    ± is the half-width of the 95% interval of the difference, or "... is within noise ...".
    """
    result = difference(a, b)
    seeds = _seeds(result.n_a, result.n_b)
    points = 100 * result.mean
    if math.isnan(result.low):
        leader, other = (name_a, name_b) if points >= 0 else (name_b, name_a)
        return (
            f"{leader} scores {abs(points):.1f} points of {what} above {other} {seeds}; "
            "with one seed there is no interval, so this may be noise."
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
