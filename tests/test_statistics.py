"""Statistics across seeds on hand-made numbers, with the arithmetic written out."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from cifarlab.scale import statistics


def test_summary_of_five_values():
    summary = statistics.summarize([1, 2, 3, 4, 5])
    # Mean 3; squared deviations 4+1+0+1+4 = 10 over n-1 = 4 gives variance 2.5.
    assert summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(2.5))
    # Half-width t(4) · s / √n = 2.776 · 1.5811 / 2.2361 = 1.963.
    assert summary.half_width == pytest.approx(1.963, abs=1e-3)
    assert (summary.low, summary.high) == pytest.approx((3 - 1.963, 3 + 1.963), abs=1e-3)
    assert summary.n == 5


def test_one_value_has_no_interval():
    summary = statistics.summarize([0.7])
    assert summary.mean == 0.7 and summary.n == 1
    assert math.isnan(summary.std)
    assert "no interval" in statistics.format_summary(summary)


def test_empty_values_are_refused():
    with pytest.raises(ValueError, match="empty"):
        statistics.summarize([])


def test_welch_difference_of_equal_spreads():
    better, worse = [0.60, 0.61, 0.62], [0.50, 0.51, 0.52]
    result = statistics.difference(better, worse)
    # Each side: variance 1e-4, so the standard error is √(2 · 1e-4 / 3) = 0.008165 and
    # Welch's degrees of freedom come to exactly 4: half-width 2.776 · 0.008165 = 0.02267.
    assert result.mean == pytest.approx(0.10)
    assert result.half_width == pytest.approx(0.02267, abs=1e-4)
    assert not result.within_noise
    sentence = statistics.compare_sentence("batchnorm", better, "baseline", worse)
    assert (
        sentence == "batchnorm beats baseline by 10.0 ± 2.3 points of test accuracy over 3 seeds."
    )


def test_comparison_names_the_winner_whichever_side_it_is_on():
    sentence = statistics.compare_sentence(
        "baseline", [0.50, 0.51, 0.52], "batchnorm", [0.60, 0.61, 0.62]
    )
    assert sentence.startswith("batchnorm beats baseline by 10.0 ± 2.3 points")


def test_overlapping_runs_are_within_noise():
    a, b = [0.60, 0.62, 0.58], [0.61, 0.59, 0.60]
    result = statistics.difference(a, b)
    # Mean difference 0; the interval straddles zero.
    assert result.low < 0 < result.high
    assert result.within_noise
    assert "within noise" in statistics.compare_sentence("augmented", a, "baseline", b)


def test_a_small_but_consistent_gain_is_not_noise_and_a_large_noisy_one_is():
    steady = statistics.difference([0.701, 0.702, 0.703, 0.704], [0.691, 0.692, 0.693, 0.694])
    noisy = statistics.difference([0.80, 0.50, 0.95], [0.60, 0.70, 0.40])
    assert not steady.within_noise and steady.mean == pytest.approx(0.01)
    assert noisy.within_noise and noisy.mean > steady.mean


def test_unequal_numbers_of_seeds():
    result = statistics.difference([0.60, 0.62, 0.64, 0.66, 0.68], [0.50, 0.54])
    # Variances 0.001/5 = 2e-4 and 0.0008/2 = 4e-4: standard error √6e-4 = 0.02449;
    # Welch df = (6e-4)² / ((2e-4)²/4 + (4e-4)²/1) = 3.6e-7 / 1.7e-7 = 2.118.
    assert result.mean == pytest.approx(0.12)
    assert result.half_width == pytest.approx(student_t.ppf(0.975, 2.118) * 0.02449, rel=1e-3)
    assert "over 5 and 2 seeds" in statistics.compare_sentence(
        "a", [0.6, 0.62, 0.64, 0.66, 0.68], "b", [0.5, 0.54]
    )


def test_one_seed_each_says_it_may_be_noise():
    sentence = statistics.compare_sentence("batchnorm", [0.63], "baseline", [0.60])
    assert sentence.startswith("batchnorm scores 3.0 points of test accuracy above baseline")
    assert "may be noise" in sentence and "over 1 seed" in sentence


def test_zero_spread_on_both_sides_names_no_winner():
    # Every seed of each scored the same: no spread, so no interval and no winner.
    result = statistics.difference([0.7, 0.7, 0.7], [0.6, 0.6, 0.6])
    assert math.isnan(result.low) and result.within_noise
    sentence = statistics.compare_sentence("batchnorm", [0.7] * 3, "baseline", [0.6] * 3)
    assert sentence.startswith("The seeds cannot tell batchnorm and baseline apart")
    assert "beats" not in sentence
