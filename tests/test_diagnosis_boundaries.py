"""Each verdict threshold of `cifarlab.diagnosis`, checked exactly at, just above and just below
its boundary, and the comparison sentences' signs: a threshold moved by a point or a standard
error, or a `>=` turned into `>`, changes a verdict here.

The values "exactly at" a boundary are chosen so the floating-point arithmetic lands on it
exactly (0.625 → 0.6875 is a rise of exactly 10%); each test asserts that first.
"""

from __future__ import annotations

import math

import pytest

from cifarlab import diagnosis


def history(train_loss, val_loss, train_accuracy=None, val_accuracy=None) -> list[dict]:
    """Rows as `history.csv` holds them; accuracies default to a small, harmless gap."""
    train_accuracy = train_accuracy or [0.5] * len(train_loss)
    val_accuracy = val_accuracy or [0.48] * len(train_loss)
    columns = zip(train_loss, val_loss, train_accuracy, val_accuracy, strict=True)
    return [
        {"epoch": epoch, "loss": loss, "val_loss": val, "accuracy": accuracy,
         "val_accuracy": val_acc}
        for epoch, (loss, val, accuracy, val_acc) in enumerate(columns)
    ]  # fmt: skip


# A nudge to either side of a boundary: far above rounding, far below any threshold's step.
NUDGE = 1e-4


def verdict(rows: list[dict], num_classes: int = 10, num_val_images: int | None = None) -> str:
    return diagnosis.diagnose(rows, num_classes, num_val_images)["verdict"]


def rising_to(final: float) -> list[dict]:
    """Validation loss lowest (0.625) at epoch 2, then `final`; low losses, a small gap."""
    return history([0.6, 0.5, 0.4], [0.7, 0.625, final])


# Without a count of validation images, and with one large enough that no evidence test bites.
COUNTS = pytest.mark.parametrize("count", [None, 10_000], ids=["no-count", "10000-images"])


@COUNTS
def test_a_validation_loss_rise_of_exactly_ten_percent_is_overfitting(count):
    at = 0.6875  # 0.0625 / 0.625 = 0.1, exactly.
    assert diagnosis.diagnose(rising_to(at), 10)["val_loss_rise_percent"] == 10.0
    assert diagnosis.OVERFIT_VAL_LOSS_RISE_PERCENT == 10.0
    assert verdict(rising_to(at), num_val_images=count) == "overfitting"
    assert verdict(rising_to(at + NUDGE), num_val_images=count) == "overfitting"
    assert verdict(rising_to(at - NUDGE), num_val_images=count) == "good fit"


def gap_of(train_accuracy: float, val_accuracy: float) -> list[dict]:
    """Falling, low losses; final accuracies as given."""
    return history([0.6, 0.5, 0.4], [0.7, 0.6, 0.55], [0.1, 0.15, train_accuracy],
                   [0.05, 0.08, val_accuracy])  # fmt: skip


@COUNTS
def test_an_accuracy_gap_of_exactly_ten_points_is_overfitting(count):
    # Only accuracies this low differ by exactly 0.1 in floating point; with 100 classes they
    # are still far above chance (1%).
    assert diagnosis.diagnose(gap_of(0.2, 0.1), 100)["accuracy_gap_final"] == 0.1  # Exact.
    assert diagnosis.OVERFIT_ACCURACY_GAP == 0.1
    assert verdict(gap_of(0.2, 0.1), 100, count) == "overfitting"
    assert verdict(gap_of(0.2 + NUDGE, 0.1), 100, count) == "overfitting"
    assert verdict(gap_of(0.2 - NUDGE, 0.1), 100, count) == "good fit"


FLOOR = 0.5 * math.log(10)  # Half the chance loss of ten classes: 1.151.


def ending_at(train_loss: float, val_loss: float) -> list[dict]:
    """Both losses falling to the given values, a small accuracy gap."""
    return history([2.5, 2.0, train_loss], [2.6, 2.1, val_loss])


@pytest.mark.parametrize(
    "train_loss, val_loss, expected",
    [
        (FLOOR, FLOOR, "underfitting"),  # Both exactly at the threshold.
        (FLOOR + NUDGE, FLOOR + NUDGE, "underfitting"),
        (FLOOR - NUDGE, FLOOR + 0.5, "good fit"),  # Training loss below it: it has learned.
        (FLOOR + 0.5, FLOOR - NUDGE, "good fit"),  # Validation loss below it: it has learned.
    ],
)
def test_underfitting_needs_both_losses_at_or_above_half_the_chance_loss(
    train_loss, val_loss, expected
):
    assert diagnosis.UNDERFIT_LOSS_SHARE * diagnosis.diagnose(ending_at(1, 1), 10)[
        "chance_loss"
    ] == pytest.approx(FLOOR, abs=0)
    assert verdict(ending_at(train_loss, val_loss)) == expected


def near_chance(val_accuracy: float) -> list[dict]:
    """Ten classes, losses near chance, a small accuracy gap: underfitting unless too thin."""
    return history([2.3, 2.2, 2.1], [2.3, 2.25, 2.2], [0.12, 0.15, val_accuracy + 0.02],
                   [0.1, 0.12, val_accuracy])  # fmt: skip


def test_validation_accuracy_two_standard_errors_above_chance_is_enough_evidence():
    count = 50
    error = diagnosis.sampling_error(0.1, count)  # √(0.1 · 0.9 / 50) = 4.2 points.
    at = 0.1 + 2 * error
    assert at - 0.1 == 2 * error and diagnosis.SAMPLING_ERRORS == 2.0  # Exactly at.
    assert verdict(near_chance(at), num_val_images=count) == "underfitting"
    assert verdict(near_chance(0.1 + 2.02 * error), num_val_images=count) == "underfitting"
    assert verdict(near_chance(0.1 + 1.98 * error), num_val_images=count) == "too little evidence"
    # One standard error more or less moves the line well past these: 1 and 3 errors away.
    assert verdict(near_chance(0.1 + 1.5 * error), num_val_images=count) == "too little evidence"
    assert verdict(near_chance(0.1 + 2.5 * error), num_val_images=count) == "underfitting"


def gap_only(train_accuracy: float) -> list[dict]:
    """Validation accuracy 50%, losses low and falling: only the accuracy gap says overfitting."""
    return history([0.9, 0.7, 0.5], [1.0, 0.9, 0.85], [0.4, 0.5, train_accuracy],
                   [0.4, 0.45, 0.5])  # fmt: skip


def test_an_accuracy_gap_of_two_standard_errors_is_enough_evidence_of_overfitting():
    count = 64
    error = diagnosis.sampling_error(0.5, count)  # √(0.25 / 64) = 0.0625, exactly.
    assert error == 0.0625
    at = 0.5 + 2 * error  # A gap of 12.5 points: above the 10-point threshold.
    assert diagnosis.diagnose(gap_only(at), 10)["accuracy_gap_final"] == 2 * error
    assert verdict(gap_only(at), num_val_images=count) == "overfitting"
    assert verdict(gap_only(at + NUDGE), num_val_images=count) == "overfitting"
    assert verdict(gap_only(at - NUDGE), num_val_images=count) == "too little evidence"
    # One error fewer (1.5 errors, 9.4 points) is under the gap threshold, so 1.75 errors: a
    # line drawn at 1 error would call it overfitting.
    assert verdict(gap_only(0.5 + 1.75 * error), num_val_images=count) == "too little evidence"
    # Three errors would be 18.75 points; 2.5 errors (15.6 points) is enough at two.
    assert verdict(gap_only(0.5 + 2.5 * error), num_val_images=count) == "overfitting"
    # Without a count of validation images there is no evidence test at all.
    assert verdict(gap_only(at - NUDGE)) == "overfitting"


def test_a_rise_with_a_thin_gap_is_still_overfitting():
    # On 30 images two errors are 18 points, so the 12.5-point gap alone would be too thin;
    # the evidence test spares only a verdict resting on the gap alone, and a 10% rise stands.
    rows = history([0.9, 0.7, 0.5], [1.0, 0.625, 0.6875], [0.4, 0.5, 0.625], [0.4, 0.45, 0.5])
    assert verdict(rows, num_val_images=30) == "overfitting"
    gap_alone = history([0.9, 0.7, 0.5], [1.0, 0.625, 0.6], [0.4, 0.5, 0.625], [0.4, 0.45, 0.5])
    assert verdict(gap_alone, num_val_images=30) == "too little evidence"


# Comparisons: a difference within the tolerance is no change, one beyond it takes a side.


def test_a_difference_of_exactly_the_tolerance_is_no_clear_difference():
    (comparison,) = [c for c in diagnosis.AUGMENTATION_COMPARISONS
                     if c.key == "val_loss_rise_percent"]  # fmt: skip
    assert comparison.tolerance == 2.0 and comparison.expected == "lower"
    reference, at = 12.5, 10.5  # A rise of 12.5% for the baseline, 2 points less: exact.
    assert diagnosis.agreement(comparison, reference, at) is None
    assert diagnosis.agreement(comparison, reference, at + NUDGE) is None
    assert diagnosis.agreement(comparison, reference, at - NUDGE) is True  # Lower, as expected.
    assert diagnosis.agreement(comparison, reference, 14.5) is None
    assert diagnosis.agreement(comparison, reference, 14.5 + NUDGE) is False


def test_the_comparison_with_a_base_quotes_candidate_minus_base():
    candidate = {
        "diagnosis": {"val_loss_min": 0.8, "accuracy_gap_final": 0.05, "verdict": "good fit"},
        "test_accuracy": 0.7,
    }
    base = {
        "diagnosis": {"val_loss_min": 1.0, "accuracy_gap_final": 0.2, "verdict": "overfitting"},
        "test_accuracy": 0.6,
    }
    entry = diagnosis.compare_with_base(
        "less_dropout", "baseline", ["dropout 0.5 → 0.25"], candidate, base
    )
    assert entry["sentence"] == (
        "less_dropout against its base baseline (dropout 0.5 → 0.25): best validation loss "
        "0.800 vs 1.000 (-0.200); test accuracy 70.0% vs 60.0% (+10.0 points); train–validation "
        "accuracy gap at the end 5.0 vs 20.0 points; verdict good fit vs overfitting."
    )
    assert (entry["candidate"], entry["reference"], entry["agrees"]) == (
        "less_dropout",
        "baseline",
        None,
    )
    swapped = diagnosis.compare_with_base("baseline", "less_dropout", [], base, candidate)
    assert "(+0.200)" in swapped["sentence"] and "(-10.0 points)" in swapped["sentence"]


# Comparisons on thin evidence: "too little evidence", never a finding, on the thin side of each
# boundary (epochs, validation accuracy above chance, the accuracy gap's standard error).


def ending(
    epochs: int,
    train_accuracy: float = 0.875,
    val_accuracy: float = 0.5,
    train_loss_end: float = 0.6,
) -> list[dict]:
    """`epochs` epochs of losses falling in equal steps to `train_loss_end` (validation 0.1
    above), accuracies climbing to the final values given."""
    steps = range(epochs)
    return history([train_loss_end + 0.2 * (epochs - 1 - step) for step in steps],
                   [train_loss_end + 0.1 + 0.2 * (epochs - 1 - step) for step in steps],
                   [train_accuracy - 0.01 * (epochs - 1 - step) for step in steps],
                   [val_accuracy - 0.01 * (epochs - 1 - step) for step in steps])  # fmt: skip


def findings(count: int | None = None, **histories) -> dict[tuple[str, str], dict]:
    """Each comparison entry by (candidate, key), the runs diagnosed with `count` validation
    images each."""
    diagnoses = {name: diagnosis.diagnose(rows, 10, count) for name, rows in histories.items()}
    return {(entry["candidate"], entry["key"]): entry
            for entry in diagnosis.compare_runs(diagnoses)}  # fmt: skip


THIN = diagnosis.TOO_LITTLE_EVIDENCE


def test_a_comparison_needs_three_epochs_in_each_run():
    assert diagnosis.MIN_COMPARISON_EPOCHS == 3

    def runs(baseline_epochs: int, other_epochs: int) -> dict:
        return findings(
            baseline=ending(baseline_epochs),
            augmented=ending(other_epochs, train_accuracy=0.6),
            batchnorm=ending(other_epochs, train_loss_end=0.3),
        )

    at = runs(3, 3)
    assert len(at) == 6 and THIN not in {entry["finding"] for entry in at.values()}
    assert at["augmented", "accuracy_gap_final"]["finding"] == "agrees"  # 27.5 points narrower.
    assert at["batchnorm", "train_loss_final"]["finding"] == "agrees"  # 0.3 lower.
    for below in (runs(2, 2), runs(3, 2), runs(2, 3)):
        assert {entry["finding"] for entry in below.values()} == {THIN}
        assert {entry["agrees"] for entry in below.values()} == {None}
    sentence = runs(3, 2)["batchnorm", "train_loss_final"]["sentence"]
    assert "too little evidence to test the textbook expectation that batch normalization" in (
        sentence
    )
    assert "batchnorm ran 2 epochs; a comparison of curves needs at least 3 in each run" in sentence
    assert "contradicts" not in sentence and "as the textbook expects" not in sentence
    assert (
        "(both runs ran 1 epoch; a comparison"
        in runs(1, 1)["augmented", "loss_gap_final"]["sentence"]
    )


def test_validation_numbers_need_runs_measurably_above_chance():
    count = 50
    error = diagnosis.sampling_error(0.1, count)  # √(0.1 · 0.9 / 50) = 4.2 points.
    at = 0.1 + 2 * error
    assert at - 0.1 == 2 * error  # Exactly at the boundary.

    def runs(baseline_val_accuracy: float) -> dict:
        baseline = ending(3, train_accuracy=baseline_val_accuracy + 0.3,
                          val_accuracy=baseline_val_accuracy)  # fmt: skip
        return findings(count, baseline=baseline, augmented=ending(3, 0.6, 0.5),
                        batchnorm=ending(3, 0.6, 0.5, train_loss_end=0.3))  # fmt: skip

    validation_keys = ("loss_gap_final", "val_loss_rise_percent")
    for enough in (at, at + NUDGE):
        assert all(runs(enough)["augmented", key]["finding"] != THIN for key in validation_keys)
    thin = runs(at - NUDGE)
    for key in (*validation_keys, "accuracy_gap_final"):
        assert thin["augmented", key]["finding"] == THIN
    assert (
        "baseline's validation accuracy (18.5%) is within 2 standard errors of chance"
        in (thin["augmented", "loss_gap_final"]["sentence"])
    )
    # The training loss's comparisons do not rest on the validation images.
    assert thin["batchnorm", "train_loss_final"]["finding"] == "agrees"


def test_an_accuracy_gap_difference_needs_two_standard_errors_of_two_accuracies():
    count = 32
    # Two validation accuracies of 50% on 32 images each: √(2 · 0.25 / 32) = 0.125, exactly.
    error = math.sqrt(2 * diagnosis.sampling_error(0.5, count) ** 2)
    assert error == 0.125 and diagnosis.SAMPLING_ERRORS == 2.0

    def gap_finding(augmented_train_accuracy: float, images: int = count) -> dict:
        # The baseline's gap is 37.5 points; the augmented run's 12.5 at 0.625: 25 points, or
        # exactly two errors, less.
        found = findings(images, baseline=ending(3, 0.875, 0.5),
                         augmented=ending(3, augmented_train_accuracy, 0.5))  # fmt: skip
        return found["augmented", "accuracy_gap_final"]

    assert gap_finding(0.625)["finding"] == "agrees"
    assert gap_finding(0.625 - NUDGE)["finding"] == "agrees"
    thin = gap_finding(0.625 + NUDGE)
    assert thin["finding"] == THIN and thin["agrees"] is None
    assert (
        "the difference of 25 points is within 2 standard errors (25 points) of two validation "
        "accuracies measured on 32 images each" in thin["sentence"]
    )
    # A line drawn at one error or at three would move these: 1.5 and 2.5 errors apart.
    assert gap_finding(0.875 - 1.5 * error)["finding"] == THIN
    assert gap_finding(0.875 - 2.5 * error)["finding"] == "agrees"
    # The same 20-point difference on 10,000 images each is a finding; without counts as well.
    assert gap_finding(0.675, 10_000)["finding"] == "agrees"
    assert gap_finding(0.675, None)["finding"] == "agrees"
    assert gap_finding(0.675)["finding"] == THIN
