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


# The numbers behind the verdicts and sentences, each worked out by hand.


def test_an_empty_history_is_refused_in_a_sentence():
    with pytest.raises(ValueError, match=r"^A diagnosis needs at least one epoch of history\.$"):
        diagnosis.diagnose([], num_classes=10)


def test_the_diagnosis_quotes_the_best_epochs_gap_the_lowest_loss_and_the_early_epoch():
    rows = history([2.0, 1.5, 1.2, 1.1, 1.0, 0.9, 0.95, 0.8], [1.9, 1.6, 1.4, 1.3, 1.35, 1.4,
                   1.5, 1.6], [0.3] * 8, [0.25, 0.3, 0.35, 0.40, 0.4, 0.4, 0.4, 0.4])  # fmt: skip
    numbers = diagnosis.diagnose(rows, num_classes=10)
    assert numbers["best_epoch"] == 4  # Validation loss 1.3, at 0-based epoch 3.
    assert numbers["accuracy_gap_best"] == pytest.approx(0.3 - 0.40)
    assert numbers["train_loss_min"] == 0.8
    # A quarter of 8 epochs is 2: the early training loss is epoch 2's.
    assert (numbers["early_epoch"], numbers["train_loss_early"]) == (2, 1.5)
    one = diagnosis.diagnose(rows[:1], num_classes=10)
    assert (one["early_epoch"], one["train_loss_early"]) == (1, 2.0)  # At least one epoch.


def test_a_curve_of_one_epoch_has_no_movement():
    assert diagnosis.smoothness([1.5]) == {"mean_abs_change": 0.0, "roughness": 0.0}
    assert diagnosis.smoothness([]) == {"mean_abs_change": 0.0, "roughness": 0.0}
    # Steps -0.5, +0.25: travel 0.75 over 2 steps; net 0.25, so roughness (0.75 - 0.25) / 2.
    assert diagnosis.smoothness([1.0, 0.5, 0.75]) == {"mean_abs_change": 0.375, "roughness": 0.25}


def test_the_rules_and_reasons_state_the_accuracy_gap_in_points():
    rules = diagnosis.rules()
    assert "training accuracy ends at least 10 percentage points above" in rules[1]
    assert "at or above 0.5 × the chance loss ln(classes)." in rules[2]
    result = diagnosis.diagnose(OVERFITTING, num_classes=10)
    assert "35.0 percentage points above validation accuracy (threshold 10)." in (
        result["reasons"][1]
    )


def test_a_gap_of_exactly_the_threshold_counts_as_the_only_sign_of_overfitting():
    # 0.2 - 0.1 is exactly 0.1 in binary floating point, the threshold itself. A hundred
    # classes put chance at 1%, so 10% validation accuracy on 20 images is not near chance (two
    # standard errors: 4.4 points), but the gap is within two of 10%'s (13.4 points on 20).
    rows = history([5.0, 4.9, 4.8], [5.0, 4.95, 4.9], [0.2] * 3, [0.1] * 3)
    thin = diagnosis.diagnose(rows, num_classes=100, num_val_images=20)
    assert thin["accuracy_gap_final"] == 0.1
    assert thin["verdict"] == "too little evidence"
    assert thin["reasons"][0] == (
        "The 10.0-point accuracy gap is within 2 standard errors (13.4 points) of the "
        "validation accuracy on 20 images, about 2 images: too few to call it overfitting."
    )


def _diagnoses(epochs=4, val_images=(1000, 1000), accuracies=(0.6, 0.6), gaps=(0.2, 0.05)):
    """Two diagnoses, baseline and augmented, with the given validation images, final
    validation accuracies and final accuracy gaps."""
    made = {}
    for name, images, accuracy, gap in zip(("baseline", "augmented"), val_images, accuracies,
                                           gaps, strict=True):  # fmt: skip
        rows = history([1.0 - 0.1 * e for e in range(epochs)], [1.1 - 0.1 * e for e in
                       range(epochs)], [accuracy + gap] * epochs, [accuracy] * epochs)  # fmt: skip
        made[name] = diagnosis.diagnose(rows, num_classes=10, num_val_images=images)
    return made


def test_too_few_epochs_name_each_short_run():
    gap = diagnosis.AUGMENTATION_COMPARISONS[0]
    diagnoses = _diagnoses()
    diagnoses["baseline"] = _diagnoses(epochs=2)["baseline"]
    diagnoses["augmented"] = _diagnoses(epochs=1)["augmented"]
    assert diagnosis.thin_comparison(gap, diagnoses) == (
        "baseline ran 2 epochs and augmented ran 1 epoch; a comparison of curves needs at "
        "least 3 in each run"
    )


def test_an_accuracy_gap_difference_quotes_its_images_and_standard_errors():
    gap = diagnosis.AUGMENTATION_COMPARISONS[0]
    # √(0.6 · 0.4 / 100 + 0.6 · 0.4 / 400) = 0.05477: two standard errors are 11 points.
    thin = diagnosis.thin_comparison(gap, _diagnoses(val_images=(100, 400), gaps=(0.2, 0.15)))
    assert thin == ("the difference of 5 points is within 2 standard errors (11 points) of two "
                    "validation accuracies measured on 100 and 400 images")  # fmt: skip
    same = diagnosis.thin_comparison(gap, _diagnoses(val_images=(100, 100), gaps=(0.2, 0.15)))
    assert same.endswith("measured on 100 images each")


def test_each_comparison_entry_names_both_runs_and_its_finding():
    entries = diagnosis.compare_runs(_diagnoses())
    assert [(e["candidate"], e["reference"], e["key"]) for e in entries] == [
        ("augmented", "baseline", comparison.key)
        for comparison in diagnosis.AUGMENTATION_COMPARISONS
    ]
    assert entries[0]["finding"] == "agrees"  # 15 points narrower, on 1,000 images each.


def test_a_sentence_without_a_reason_to_doubt_draws_its_finding_in_display_units():
    gap, loss = diagnosis.AUGMENTATION_COMPARISONS[0], diagnosis.BATCHNORM_COMPARISONS[0]
    # 0.05 → 0.30 as fractions is 25 points higher: the gap widened, against the textbook.
    widened = diagnosis.sentence(gap, "baseline", 0.05, "augmented", 0.30)
    assert "augmented is 25 points higher. This contradicts" in widened
    # A loss half a unit higher: "higher" whatever the size of the difference.
    assert "batchnorm is 0.5 higher" in diagnosis.sentence(loss, "baseline", 1.0, "batchnorm", 1.5)


def test_repeated_runs_are_compared_seed_by_seed():
    first, second = _diagnoses(), _diagnoses(gaps=(0.05, 0.2))
    entries = diagnosis.compare_by_seed({
        ("baseline", 0): first["baseline"], ("augmented", 0): first["augmented"],
        ("baseline", 1): second["baseline"], ("augmented", 1): second["augmented"],
    })  # fmt: skip
    assert [(e["seed"], e["key"]) for e in entries] == [
        (seed, comparison.key) for seed in (0, 1)
        for comparison in diagnosis.AUGMENTATION_COMPARISONS
    ]
    for seed, diagnoses in ((0, first), (1, second)):
        own = [e for e in entries if e["seed"] == seed]
        plain = diagnosis.compare_runs(diagnoses)
        assert [e["sentence"] for e in own] == [f"Seed {seed}: {e['sentence']}" for e in plain]
        assert [e["finding"] for e in own] == [e["finding"] for e in plain]
    assert entries[0]["finding"] == "agrees" and entries[3]["finding"] == "contradicts"


def test_a_change_against_its_base_lists_every_setting_changed():
    runs = _diagnoses()
    candidate = {"diagnosis": runs["augmented"], "test_accuracy": 0.61}
    reference = {"diagnosis": runs["baseline"], "test_accuracy": 0.58}
    entry_ = diagnosis.compare_with_base("small", "baseline", ["dropout 0.5 → 0.25", "epochs 4 "
                                         "→ 8"], candidate, reference)  # fmt: skip
    assert {key: entry_[key] for key in ("candidate", "reference", "key", "kind", "agrees")} == {
        "candidate": "small", "reference": "baseline", "key": "base", "kind": "base",
        "agrees": None}  # fmt: skip
    assert entry_["sentence"].startswith(
        "small against its base baseline (dropout 0.5 → 0.25; epochs 4 → 8): "
    )
    assert "test accuracy 61.0% vs 58.0% (+3.0 points)" in entry_["sentence"]
    unchanged = diagnosis.compare_with_base("copy", "baseline", [], candidate, reference)
    assert unchanged["sentence"].startswith("copy against its base baseline (no setting): ")
