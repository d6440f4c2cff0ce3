"""Statistics across seeds on hand-made numbers, with the arithmetic written out."""

from __future__ import annotations

import math

import numpy as np
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
    with pytest.raises(ValueError, match="^Cannot summarise an empty list of values[.]$"):
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


def test_values_without_spread_have_a_zero_width_interval():
    summary = statistics.summarize([0.5, 0.5, 0.5])
    # No spread: the standard deviation is 0 and the interval is the mean itself, not NaN.
    assert (summary.mean, summary.std, summary.low, summary.high, summary.n) == (
        0.5, 0.0, 0.5, 0.5, 3
    )  # fmt: skip


def test_one_value_is_its_own_interval():
    summary = statistics.summarize([0.7])
    assert (summary.low, summary.high) == (0.7, 0.7) and summary.half_width == 0


def test_a_lower_confidence_gives_a_narrower_interval():
    # Mean 3, standard error √2.5 / √5 = 0.7071; t(4) at 90% is 2.132 and at 95% 2.776.
    narrow = statistics.summarize([1, 2, 3, 4, 5], confidence=0.90)
    assert narrow.half_width == pytest.approx(student_t.ppf(0.95, 4) * math.sqrt(0.5))
    assert narrow.half_width == pytest.approx(1.508, abs=1e-3)
    wide = statistics.difference([0.60, 0.61, 0.62], [0.50, 0.51, 0.52], confidence=0.90)
    # Welch df 4 as above, standard error 0.008165: 2.132 · 0.008165 = 0.01741.
    assert wide.half_width == pytest.approx(0.01741, abs=1e-4)


def test_an_interval_touching_zero_is_within_noise():
    # Zero is inside a closed interval that ends on it.
    assert statistics.Difference(0.1, 0.0, 0.2, 3, 3).within_noise
    assert statistics.Difference(-0.1, -0.2, 0.0, 3, 3).within_noise
    assert statistics.Difference(0.0, -0.5, 0.5, 3, 3).within_noise
    assert not statistics.Difference(0.5, 0.2, 0.8, 3, 3).within_noise
    assert not statistics.Difference(-0.5, -0.8, -0.2, 3, 3).within_noise
    assert statistics.Difference(0.1, math.nan, math.nan, 1, 3).within_noise


def test_one_seed_on_either_side_gives_no_interval():
    for a, b in (([0.6], [0.50, 0.55, 0.60]), ([0.50, 0.55, 0.60], [0.6])):
        result = statistics.difference(a, b)
        assert math.isnan(result.low) and math.isnan(result.high)
        assert (result.n_a, result.n_b) == (len(a), len(b))
    assert statistics.difference([0.6], [0.5, 0.55, 0.6]).mean == pytest.approx(0.05)


def test_zero_spread_on_one_side_still_has_an_interval():
    result = statistics.difference([0.7, 0.7, 0.7], [0.5, 0.6, 0.7])
    # Only b varies: variance 0.01, standard error √(0.01 / 3) = 0.05774, and Welch's degrees
    # of freedom are b's own n - 1 = 2: half-width t(2) · 0.05774 = 4.303 · 0.05774 = 0.2484.
    assert result.mean == pytest.approx(0.1)
    assert (result.low, result.high) == pytest.approx((0.1 - 0.2484, 0.1 + 0.2484), abs=1e-4)
    assert (result.n_a, result.n_b) == (3, 3) and result.within_noise


def test_nearly_identical_seeds_give_a_narrow_interval_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy's precision-loss warning would fail the test.
        result = statistics.difference([0.7, 0.7, 0.7 + 1e-15], [0.6, 0.6, 0.6 + 1e-15])
    assert result.mean == pytest.approx(0.1) and result.half_width < 1e-9
    assert not result.within_noise


def test_a_small_gain_under_one_point_is_named():
    # Each side: variance 1e-6, standard error √(2e-6 / 3) = 8.165e-4, df 4:
    # half-width 2.776 · 8.165e-4 = 0.00227, so 0.5 ± 0.2 points.
    sentence = statistics.compare_sentence("a", [0.701, 0.702, 0.703], "b", [0.696, 0.697, 0.698])
    assert sentence == "a beats b by 0.5 ± 0.2 points of test accuracy over 3 seeds."


def test_sentences_with_two_seeds_each():
    # Variances 5e-5 each (deviations ±0.005): standard error √(2 · 5e-5 / 2) = 0.007071, Welch
    # df 2: half-width t(2) · 0.007071 = 4.303 · 0.007071 = 0.03043, i.e. 3.0 points.
    sentence = statistics.compare_sentence("a", [0.695, 0.705], "b", [0.595, 0.605])
    assert sentence == "a beats b by 10.0 ± 3.0 points of test accuracy over 2 seeds."
    sentence = statistics.compare_sentence("a", [0.695, 0.705], "b", [0.685, 0.695])
    assert sentence == (
        "a and b are within noise on test accuracy: the difference is +1.0 ± 3.0 points "
        "over 2 seeds."
    )


def test_within_noise_sentence_gives_the_signed_difference_and_its_spread():
    # Equal spreads as in test_welch_difference_of_equal_spreads: half-width 0.02267.
    sentence = statistics.compare_sentence(
        "augmented", [0.59, 0.60, 0.61], "baseline", [0.60, 0.61, 0.62], what="validation accuracy"
    )
    assert sentence == (
        "augmented and baseline are within noise on validation accuracy: the difference is "
        "-1.0 ± 2.3 points over 3 seeds."
    )


def test_one_seed_sentences_name_the_higher_score_first():
    tail = "; with one seed there is no interval, so this may be noise."
    assert statistics.compare_sentence("batchnorm", [0.55], "baseline", [0.60]) == (
        "baseline scores 5.0 points of test accuracy above batchnorm over 1 seed" + tail
    )
    # A tie keeps the order the names were given in.
    assert statistics.compare_sentence("batchnorm", [0.6], "baseline", [0.6]) == (
        "batchnorm scores 0.0 points of test accuracy above baseline over 1 seed" + tail
    )
    assert statistics.compare_sentence("a", [0.6], "b", [0.5, 0.52]).startswith(
        "a scores 9.0 points of test accuracy above b over 1 and 2 seeds;"
    )


def test_zero_spread_sentence_gives_the_difference():
    sentence = statistics.compare_sentence("batchnorm", [0.7] * 3, "baseline", [0.6] * 3)
    assert sentence == (
        "The seeds cannot tell batchnorm and baseline apart on test accuracy: every seed of each "
        "scored the same, so there is no spread to judge a +10.0-point difference over 3 seeds by."
    )


def test_format_summary_of_accuracies_and_losses():
    # Accuracies: mean 0.41, std 0.01, half-width t(2) · 0.01 / √3 = 4.303 · 0.005774 = 0.02484.
    accuracy = statistics.summarize([0.40, 0.41, 0.42])
    assert statistics.format_summary(accuracy) == "41.0 ± 1.0% (95% CI 38.5–43.5, 3 seeds)"
    # Losses: mean 1.2, std 0.2, half-width 4.303 · 0.2 / √3 = 0.4968, to four decimals.
    loss = statistics.summarize([1.0, 1.2, 1.4])
    half = student_t.ppf(0.975, 2) * 0.2 / math.sqrt(3)
    assert statistics.format_summary(loss, percent=False) == (
        f"1.2000 ± 0.2000 (95% CI {1.2 - half:.4f}–{1.2 + half:.4f}, 3 seeds)"
    )
    assert (f"{1.2 - half:.4f}", f"{1.2 + half:.4f}") == ("0.7032", "1.6968")
    single = statistics.summarize([0.7])
    assert statistics.format_summary(single) == "70.0% (1 seed, no interval)"
    assert statistics.format_summary(single, percent=False) == "0.7000 (1 seed, no interval)"


def run_metrics(val_accuracy, test_accuracy, val_loss, test_loss) -> dict:
    """The `val` and `test` parts of a run's metrics, as a run folder records them."""
    return {
        "val": {"accuracy": val_accuracy, "loss": val_loss},
        "test": {"accuracy": test_accuracy, "loss": test_loss},
    }


RUNS = [
    ("batchnorm", run_metrics(0.62, 0.60, 1.0, 1.1)),
    ("baseline", run_metrics(0.52, 0.50, 1.4, 1.5)),
    ("batchnorm", run_metrics(0.63, 0.61, 1.2, 1.3)),
    ("baseline", run_metrics(0.53, 0.51, 1.6, 1.7)),
    ("batchnorm", run_metrics(0.64, 0.62, 1.4, 1.5)),
    ("baseline", run_metrics(0.54, 0.52, 1.8, 1.9)),
]


def test_metric_values_group_runs_by_experiment_in_first_seen_order():
    values = statistics.metric_values(RUNS)
    assert list(values) == ["batchnorm", "baseline"]
    assert values["batchnorm"] == {
        "val_accuracy": [0.62, 0.63, 0.64],
        "test_accuracy": [0.60, 0.61, 0.62],
        "val_loss": [1.0, 1.2, 1.4],
        "test_loss": [1.1, 1.3, 1.5],
    }
    assert values["baseline"]["test_loss"] == [1.5, 1.7, 1.9]
    # Integers in a metrics file are read as floats.
    (loss,) = statistics.metric_values([("a", run_metrics(1, 0, 2, 3))])["a"]["val_loss"]
    assert loss == 2.0 and isinstance(loss, float)


def test_summary_rows_hold_every_statistic_of_every_metric():
    rows = statistics.summarise_seeds(statistics.metric_values(RUNS))
    assert [row["experiment"] for row in rows] == ["batchnorm", "baseline"]
    assert all(list(row) == list(statistics.SUMMARY_COLUMNS) for row in rows)
    batchnorm = rows[0]
    assert batchnorm["n"] == 3
    # Test accuracy 0.60, 0.61, 0.62: mean 0.61, std 0.01, half-width 4.303 · 0.01 / √3.
    half = student_t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert batchnorm["test_accuracy_mean"] == pytest.approx(0.61)
    assert batchnorm["test_accuracy_std"] == pytest.approx(0.01)
    assert batchnorm["test_accuracy_ci_low"] == pytest.approx(0.61 - half)
    assert batchnorm["test_accuracy_ci_high"] == pytest.approx(0.61 + half)
    # Validation loss 1.0, 1.2, 1.4: mean 1.2, std 0.2.
    assert batchnorm["val_loss_mean"] == pytest.approx(1.2)
    assert batchnorm["val_loss_std"] == pytest.approx(0.2)
    assert rows[1]["test_loss_mean"] == pytest.approx(1.7)
    assert rows[1]["val_accuracy_mean"] == pytest.approx(0.53)


def test_a_single_seed_row_has_no_spread_and_an_empty_one_nothing():
    (row,) = statistics.summarise_seeds(statistics.metric_values(RUNS[:1]))
    # The spread of one seed is unknown: None, which JSON can hold; the interval is the value.
    assert row["n"] == 1 and row["test_accuracy_std"] is None
    assert row["test_accuracy_mean"] == row["test_accuracy_ci_low"] == 0.60
    assert row["test_accuracy_ci_high"] == 0.60
    empty = statistics.summary_row({metric: [] for metric in statistics.METRICS})
    assert empty == {"n": 0, **{column: None for column in statistics.SUMMARY_COLUMNS[2:]}}


def test_every_experiment_is_compared_with_the_baseline():
    values = statistics.metric_values(RUNS)
    # Test accuracy: both sides have std 0.01 and 3 seeds, so df 4 and half-width
    # 2.776 · √(2 · 1e-4 / 3) = 0.02267, as in test_welch_difference_of_equal_spreads.
    assert statistics.compare_with_reference(values) == [
        "batchnorm beats baseline by 10.0 ± 2.3 points of test accuracy over 3 seeds."
    ]
    # Validation accuracy: 0.63 against 0.53, the same spreads.
    assert statistics.compare_with_reference(values, "val_accuracy") == [
        "batchnorm beats baseline by 10.0 ± 2.3 points of validation accuracy over 3 seeds."
    ]


def test_without_a_baseline_the_first_experiment_is_the_reference():
    values = {
        "augmented": {"test_accuracy": [0.60, 0.61, 0.62]},
        "batchnorm": {"test_accuracy": [0.70, 0.71, 0.72]},
        "dropout": {"test_accuracy": [0.50, 0.51, 0.52]},
    }
    assert statistics.compare_with_reference(values) == [
        "batchnorm beats augmented by 10.0 ± 2.3 points of test accuracy over 3 seeds.",
        "augmented beats dropout by 10.0 ± 2.3 points of test accuracy over 3 seeds.",
    ]


def test_display_rows_format_accuracies_as_percentages_and_losses_as_numbers():
    rows = statistics.summarise_seeds(statistics.metric_values(RUNS))
    shown = statistics.display_rows(rows)
    assert list(shown[0]) == list(statistics.DISPLAY_COLUMNS)
    assert shown[0]["experiment"] == "batchnorm" and shown[0]["n"] == 3
    # Test accuracy as above: mean 61.0%, std 1.0, half-width 4.303 · 1.0 / √3 = 2.484 points.
    assert shown[0]["test_accuracy"] == "61.0 ± 1.0% (95% CI 58.5–63.5, 3 seeds)"
    assert shown[0]["val_accuracy"] == "63.0 ± 1.0% (95% CI 60.5–65.5, 3 seeds)"
    # Validation loss 1.0, 1.2, 1.4: half-width 4.303 · 0.2 / √3 = 0.4968.
    assert shown[0]["val_loss"] == "1.2000 ± 0.2000 (95% CI 0.7032–1.6968, 3 seeds)"
    assert shown[1]["test_loss"] == "1.7000 ± 0.2000 (95% CI 1.2032–2.1968, 3 seeds)"
    (single,) = statistics.display_rows(
        statistics.summarise_seeds(statistics.metric_values(RUNS[:1]))
    )
    assert single["test_accuracy"] == "60.0% (1 seed, no interval)"
    assert single["test_loss"] == "1.1000 (1 seed, no interval)"


def test_single_precision_values_are_summarised_in_double_precision():
    """NumPy would average float32 values in float32 (mean 0.33250001 here, not 0.33250000)."""
    single = [np.float32(value) for value in (0.1, 0.2, 0.7, 0.33)]
    double = [float(value) for value in single]
    assert statistics.summarize(single) == statistics.summarize(double)
    assert statistics.difference(single, [0.5, 0.6]) == statistics.difference(double, [0.5, 0.6])
    assert statistics.difference([0.5, 0.6], single) == statistics.difference([0.5, 0.6], double)


def test_a_seed_with_a_nan_loss_makes_that_summary_unknown():
    # A diverged seed's loss is NaN, and so is every statistic of it: None in the row.
    values = {"a": {"val_accuracy": [0.5, 0.6, 0.7], "test_accuracy": [0.5, 0.6, 0.7],
                    "val_loss": [1.0, math.nan, 1.2], "test_loss": [1.0, 2.0, 3.0]}}  # fmt: skip
    (row,) = statistics.summarise_seeds(values)
    assert [row[f"val_loss_{statistic}"] for statistic in statistics.STATISTICS] == [None] * 4
    (shown,) = statistics.display_rows([row])
    assert shown["val_loss"] == "nan ± nan (95% CI nan–nan, 3 seeds)"
    # Test loss 1, 2, 3: mean 2, std 1, half-width 4.303 · 1 / √3 = 2.4841.
    assert shown["test_loss"] == "2.0000 ± 1.0000 (95% CI -0.4841–4.4841, 3 seeds)"


def test_the_baseline_is_the_reference_wherever_it_is_listed():
    values = {
        "augmented": {"test_accuracy": [0.60, 0.61, 0.62]},
        "baseline": {"test_accuracy": [0.50, 0.51, 0.52]},
        "batchnorm": {"test_accuracy": [0.70, 0.71, 0.72]},
    }
    # Each difference: std 0.01 on both sides, 3 seeds, so half-width 0.02267 as above.
    assert statistics.compare_with_reference(values) == [
        "augmented beats baseline by 10.0 ± 2.3 points of test accuracy over 3 seeds.",
        "batchnorm beats baseline by 20.0 ± 2.3 points of test accuracy over 3 seeds.",
    ]
