"""The notebook's questions G and I on hand-made histories: one test per verdict rule and per
comparison sentence, each checking the verdict or direction and the numbers quoted."""

from __future__ import annotations

import math

import pytest

from cifarlab import diagnosis


def history(train_loss, val_loss, train_accuracy=None, val_accuracy=None) -> list[dict]:
    """Rows as `history.csv` holds them; accuracies default to a small, harmless gap."""
    train_accuracy = train_accuracy or [0.5] * len(train_loss)
    val_accuracy = val_accuracy or [0.48] * len(train_loss)
    return [
        {"epoch": epoch, "loss": loss, "val_loss": val, "accuracy": accuracy,
         "val_accuracy": val_acc}
        for epoch, (loss, val, accuracy, val_acc) in enumerate(
            zip(train_loss, val_loss, train_accuracy, val_accuracy, strict=True)
        )
    ]  # fmt: skip


# Falling, low and close: a good fit for ten classes (chance loss ln 10 = 2.303).
GOOD = history([1.6, 1.2, 0.95, 0.85], [1.5, 1.2, 1.0, 0.95], [0.45, 0.58, 0.66, 0.70],
               [0.47, 0.57, 0.63, 0.66])  # fmt: skip


def test_rising_validation_loss_is_overfitting_at_the_epoch_of_its_minimum():
    rows = history([1.5, 1.0, 0.7, 0.5, 0.3], [1.4, 1.1, 0.8, 1.0, 1.2])
    result = diagnosis.diagnose(rows, num_classes=10)
    assert result["verdict"] == "overfitting"
    assert result["best_epoch"] == 3
    assert result["val_loss_rise_percent"] == pytest.approx(50.0)
    assert "epoch 3 (0.800)" in result["reasons"][0] and "50.0%" in result["reasons"][0]


def test_wide_accuracy_gap_is_overfitting_even_while_validation_loss_falls():
    rows = history([0.9, 0.5, 0.2], [1.0, 0.95, 0.9], [0.70, 0.85, 0.95], [0.65, 0.68, 0.70])
    result = diagnosis.diagnose(rows, num_classes=10)
    assert result["val_loss_rise_percent"] == 0.0
    assert result["accuracy_gap_final"] == pytest.approx(0.25)
    assert result["verdict"] == "overfitting"
    assert "25.0 percentage points" in result["reasons"][1]


def test_losses_that_both_stay_high_are_underfitting():
    rows = history([2.30, 2.2, 2.1], [2.31, 2.25, 2.2], [0.1, 0.15, 0.2], [0.1, 0.14, 0.18])
    result = diagnosis.diagnose(rows, num_classes=10)
    assert result["verdict"] == "underfitting"
    assert result["chance_loss"] == pytest.approx(math.log(10))
    assert "2.100" in result["reasons"][0] and "1.151" in result["reasons"][0]


def test_low_close_falling_curves_are_a_good_fit():
    result = diagnosis.diagnose(GOOD, num_classes=10)
    assert result["verdict"] == "good fit"
    assert result["best_epoch"] == 4
    assert result["accuracy_gap_final"] == pytest.approx(0.04)
    assert result["loss_gap_best"] == pytest.approx(0.10)


def test_a_rise_below_the_threshold_is_not_overfitting():
    rise = diagnosis.OVERFIT_VAL_LOSS_RISE_PERCENT / 100 * 0.9
    rows = history([1.2, 0.9, 0.8], [1.0, 0.9, 0.9 * (1 + rise)])
    result = diagnosis.diagnose(rows, num_classes=10)
    assert result["verdict"] == "good fit"
    assert 0 < result["val_loss_rise_percent"] < diagnosis.OVERFIT_VAL_LOSS_RISE_PERCENT


def test_the_underfitting_threshold_follows_the_number_of_classes():
    rows = history([1.2, 1.0], [1.2, 1.05])
    assert diagnosis.diagnose(rows, num_classes=10)["verdict"] == "good fit"  # 1.0 < 1.151
    assert diagnosis.diagnose(rows, num_classes=2)["verdict"] == "underfitting"  # 1.0 > 0.347


def test_roughness_measures_zigzag_not_descent():
    falling = diagnosis.smoothness([1.0, 0.8, 0.6, 0.4])
    zigzag = diagnosis.smoothness([1.0, 0.5, 0.75, 0.4])
    assert falling["roughness"] == pytest.approx(0.0)
    assert falling["mean_abs_change"] == pytest.approx(0.2)
    assert zigzag["mean_abs_change"] == pytest.approx((0.5 + 0.25 + 0.35) / 3)
    assert zigzag["roughness"] == pytest.approx((1.1 - 0.6) / 3)


def test_rules_state_the_thresholds():
    text = " ".join(diagnosis.rules(10))
    assert f"{diagnosis.OVERFIT_VAL_LOSS_RISE_PERCENT:g}%" in text
    assert "ln(10) = 2.303" in text


def entry(comparisons: list[dict], key: str) -> dict:
    (found,) = [item for item in comparisons if item["key"] == key]
    return found


def compare(**histories) -> list[dict]:
    return diagnosis.compare_runs(
        {name: diagnosis.diagnose(rows, num_classes=10) for name, rows in histories.items()}
    )


OVERFITTING = history([1.5, 1.0, 0.6, 0.3], [1.4, 1.1, 1.2, 1.5], [0.5, 0.7, 0.85, 0.95],
                      [0.5, 0.6, 0.62, 0.6])  # fmt: skip


def test_augmentation_narrowing_the_accuracy_gap_agrees_with_the_textbook():
    found = entry(compare(baseline=OVERFITTING, augmented=GOOD), "accuracy_gap_final")
    assert found["agrees"] is True
    assert "augmented 4 points, baseline 35 points" in found["sentence"]
    assert "31 points lower, as the textbook expects" in found["sentence"]


def test_augmentation_widening_the_accuracy_gap_is_reported_as_a_contradiction():
    found = entry(compare(baseline=GOOD, augmented=OVERFITTING), "accuracy_gap_final")
    assert found["agrees"] is False
    assert "31 points higher" in found["sentence"] and "contradicts" in found["sentence"]


def test_augmentation_narrowing_the_loss_gap():
    found = entry(compare(baseline=OVERFITTING, augmented=GOOD), "loss_gap_final")
    assert found["agrees"] is True
    assert "augmented 0.1, baseline 1.2" in found["sentence"]


def test_augmentation_stopping_the_validation_loss_rise():
    found = entry(compare(baseline=OVERFITTING, augmented=GOOD), "val_loss_rise_percent")
    assert found["agrees"] is True
    # Baseline: minimum 1.1 at epoch 2, ending at 1.5, a rise of 36.4%.
    assert "augmented 0%, baseline 36.4%" in found["sentence"]


def test_batchnorm_lower_final_training_loss_agrees():
    batchnorm = history([1.2, 0.6, 0.4, 0.2], [1.1, 0.9, 0.9, 0.95])
    found = entry(compare(baseline=GOOD, batchnorm=batchnorm), "train_loss_final")
    assert found["agrees"] is True
    assert "batchnorm 0.2, baseline 0.85; batchnorm is 0.65 lower" in found["sentence"]


def test_batchnorm_falling_faster_is_measured_after_the_first_quarter():
    batchnorm = history([1.0, 0.9, 0.85, 0.84], [1.1, 1.0, 0.95, 0.95])
    found = entry(compare(baseline=GOOD, batchnorm=batchnorm), "train_loss_early")
    assert found["agrees"] is True  # Epoch 1 of 4: 1.0 against the baseline's 1.6.
    assert "batchnorm 1, baseline 1.6" in found["sentence"]


def test_batchnorm_zigzagging_more_contradicts_the_smoothness_expectation():
    batchnorm = history([1.6, 0.9, 1.2, 0.7], [1.5, 1.1, 1.2, 1.0])
    found = entry(compare(baseline=GOOD, batchnorm=batchnorm), "smoothness.loss.roughness")
    assert found["agrees"] is False
    assert "batchnorm 0.2, baseline 0" in found["sentence"]
    assert "the data shows the opposite" in found["sentence"]


def test_differences_within_tolerance_are_no_clear_difference():
    found = entry(compare(baseline=GOOD, batchnorm=GOOD), "train_loss_final")
    assert found["agrees"] is None
    assert "no clear difference" in found["sentence"]


def test_comparisons_need_both_runs():
    comparisons = compare(baseline=GOOD, batchnorm=GOOD)
    assert {item["candidate"] for item in comparisons} == {"batchnorm"}
    assert compare(augmented=GOOD, batchnorm=GOOD) == []


def test_a_gap_of_a_few_validation_images_is_too_little_evidence():
    # 40 validation images at 60%: one standard error is √(0.6 · 0.4 / 40) = 7.7 points, so a
    # 13-point gap (about 5 images) is within two of them; on 10,000 images it is overfitting.
    rows = history([1.2, 1.0, 0.9], [1.3, 1.2, 1.15], [0.55, 0.65, 0.73], [0.52, 0.58, 0.60])
    thin = diagnosis.diagnose(rows, num_classes=10, num_val_images=40)
    assert thin["verdict"] == "too little evidence"
    assert (
        "13.0-point accuracy gap" in thin["reasons"][0] and "about 5 images" in thin["reasons"][0]
    )
    assert (
        diagnosis.diagnose(rows, num_classes=10, num_val_images=10_000)["verdict"] == "overfitting"
    )


def test_validation_accuracy_near_chance_is_too_little_evidence():
    # Chance is 10%; two standard errors on 200 images are 2 · √(0.1 · 0.9 / 200) = 4.2 points.
    rows = history([2.2, 2.1, 2.0], [2.3, 2.35, 2.5], [0.15, 0.2, 0.3], [0.1, 0.11, 0.12])
    result = diagnosis.diagnose(rows, num_classes=10, num_val_images=200)
    assert result["verdict"] == "too little evidence"
    assert "within 2 standard errors (4.2%) of chance (10.0%)" in result["reasons"][0]


def test_rules_print_the_underfitting_threshold_itself():
    underfitting = next(rule for rule in diagnosis.rules(10) if rule.startswith("underfitting"))
    assert "at or above 1.151 (0.5 × the chance loss ln(10) = 2.303)" in underfitting
