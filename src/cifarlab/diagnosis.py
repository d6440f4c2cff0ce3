"""The notebook's questions G and I, computed: is a run over- or underfitting, and what did each
change (augmentation, batch normalization) do to the curves?

Pure functions on a run's history (one row per epoch): `diagnose` gives the numbers and
a verdict by the rules below; `compare` turns two runs' numbers into sentences that quote them
and say whether the data agrees with the textbook. Nothing here reads or writes files.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

# A validation loss that ends this many percent above its minimum has turned upward: the model
# fits its training images at the expense of unseen ones.
OVERFIT_VAL_LOSS_RISE_PERCENT = 10.0
# Training accuracy this far above validation accuracy at the end (10 percentage points) means
# the model knows its training images much better than unseen ones.
OVERFIT_ACCURACY_GAP = 0.10
# Chance loss is ln(num_classes), the cross-entropy of guessing every class equally likely. A
# model whose training and validation losses both end at or above this share of it has not yet
# learned even its training images.
UNDERFIT_LOSS_SHARE = 0.5
# The "early" training loss is read after this share of the epochs (at least one), so two runs
# of equal length are compared at the same point of their descent.
EARLY_SHARE = 0.25
# A difference smaller than this many binomial standard errors of the validation accuracy could
# be a handful of validation images: about 95% of chance differences fall within two.
SAMPLING_ERRORS = 2.0
# A comparison of two runs' curves needs at least this many epochs in each: with one epoch there
# is no curve, and with two a curve has one step, so its roughness is zero by definition and its
# rise from the minimum is a single epoch's noise. Three give two steps to compare.
MIN_COMPARISON_EPOCHS = 3

VERDICTS = ("overfitting", "underfitting", "good fit", "too little evidence")
CURVES = ("loss", "val_loss", "accuracy", "val_accuracy")


def rules(num_classes: int | None = None) -> list[str]:
    """The verdict rules as sentences, with their thresholds, for the report."""
    if num_classes:
        chance = math.log(num_classes)
        floor = (
            f"{UNDERFIT_LOSS_SHARE * chance:.3f} ({UNDERFIT_LOSS_SHARE:g} × the chance loss "
            f"ln({num_classes}) = {chance:.3f})"
        )
    else:
        floor = f"{UNDERFIT_LOSS_SHARE:g} × the chance loss ln(classes)"
    return [
        f"too little evidence (checked first): the final validation accuracy is within "
        f"{SAMPLING_ERRORS:g} standard errors of chance, or the only sign of overfitting is an "
        f"accuracy gap within {SAMPLING_ERRORS:g} standard errors of the validation accuracy, "
        "given the number of validation images.",
        f"overfitting: the validation loss ends at least {OVERFIT_VAL_LOSS_RISE_PERCENT:g}% above "
        f"its minimum, or training accuracy ends at least {OVERFIT_ACCURACY_GAP * 100:g} "
        "percentage points above validation accuracy.",
        f"underfitting (if not overfitting): training and validation loss both end at or above "
        f"{floor}.",
        "good fit: none of the above.",
    ]


def comparison_rules() -> str:
    """When a comparison of two runs says "too little evidence" instead of a finding."""
    return (
        f"A comparison says too little evidence when either run has fewer than "
        f"{MIN_COMPARISON_EPOCHS} epochs; when it compares validation numbers and either run's "
        f"validation accuracy is within {SAMPLING_ERRORS:g} standard errors of chance; or, for "
        f"the accuracy gap, when the difference is within {SAMPLING_ERRORS:g} standard errors "
        "of two validation accuracies, given the number of validation images."
    )


def diagnose(history: list[dict], num_classes: int, num_val_images: int | None = None) -> dict:
    """The numbers behind the verdict, the verdict itself and the reasons, quoting the numbers.

    `history` holds one row per epoch with `loss`, `val_loss`, `accuracy` and `val_accuracy`.
    Epochs are counted from 1. Accuracies are fractions; gaps are training minus validation
    for accuracy and validation minus training for loss, so a positive gap favours training.
    """
    if not history:
        raise ValueError("A diagnosis needs at least one epoch of history.")
    curves = {name: [float(row[name]) for row in history] for name in CURVES}
    val_loss, train_loss = curves["val_loss"], curves["loss"]
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    early = max(1, math.ceil(EARLY_SHARE * len(train_loss)))
    numbers = {
        "epochs": len(history),
        "best_epoch": best + 1,
        "val_loss_min": val_loss[best],
        "val_loss_final": val_loss[-1],
        "val_loss_rise_percent": 100.0 * (val_loss[-1] - val_loss[best]) / val_loss[best],
        "accuracy_gap_best": curves["accuracy"][best] - curves["val_accuracy"][best],
        "accuracy_gap_final": curves["accuracy"][-1] - curves["val_accuracy"][-1],
        "loss_gap_best": val_loss[best] - train_loss[best],
        "loss_gap_final": val_loss[-1] - train_loss[-1],
        "train_loss_final": train_loss[-1],
        "train_loss_min": min(train_loss),
        "early_epoch": early,
        "train_loss_early": train_loss[early - 1],
        "chance_loss": math.log(num_classes),
        "chance_accuracy": 1.0 / num_classes,
        "val_accuracy_final": curves["val_accuracy"][-1],
        "val_images": num_val_images,
        "smoothness": {name: smoothness(values) for name, values in curves.items()},
    }
    verdict, reasons = judge(numbers)
    return {**numbers, "verdict": verdict, "reasons": reasons}


def smoothness(values: list[float]) -> dict:
    """How a curve moves from epoch to epoch.

    `mean_abs_change` is the mean absolute epoch-to-epoch change. `roughness` is the part of it
    that goes up and down rather than along the trend, (Σ|Δ| − |ΣΔ|) / (epochs − 1): zero for a
    curve that only falls (or only rises), larger the more it zig-zags.
    """
    steps = [after - before for before, after in itertools.pairwise(values)]
    if not steps:
        return {"mean_abs_change": 0.0, "roughness": 0.0}
    travel = sum(abs(step) for step in steps)
    return {
        "mean_abs_change": travel / len(steps),
        "roughness": (travel - abs(sum(steps))) / len(steps),
    }


def sampling_error(accuracy: float, num_images: int) -> float:
    """The binomial standard error of an accuracy measured on `num_images` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / num_images)


def near_chance(accuracy: float, chance: float, num_images: int) -> bool:
    """True if `accuracy` on `num_images` images is within `SAMPLING_ERRORS` binomial standard
    errors of chance: the model has not measurably learned anything."""
    return accuracy - chance < SAMPLING_ERRORS * sampling_error(chance, num_images)


def judge(numbers: dict) -> tuple[str, list[str]]:
    """The verdict by the rules of `rules()`, and the sentences that justify it."""
    rise = numbers["val_loss_rise_percent"]
    gap = numbers["accuracy_gap_final"]
    rise_sentence = (
        f"Validation loss was lowest at epoch {numbers['best_epoch']} "
        f"({numbers['val_loss_min']:.3f}) and ended at {numbers['val_loss_final']:.3f}, "
        f"{rise:.1f}% above that minimum (threshold {OVERFIT_VAL_LOSS_RISE_PERCENT:g}%)."
    )
    gap_sentence = (
        f"Training accuracy ended {gap * 100:.1f} percentage points above validation accuracy "
        f"(threshold {OVERFIT_ACCURACY_GAP * 100:g})."
    )
    thin = _thin_evidence(numbers, rise)
    if thin:
        return "too little evidence", [thin, rise_sentence, gap_sentence]
    if rise >= OVERFIT_VAL_LOSS_RISE_PERCENT or gap >= OVERFIT_ACCURACY_GAP:
        return "overfitting", [rise_sentence, gap_sentence]
    floor = UNDERFIT_LOSS_SHARE * numbers["chance_loss"]
    loss_sentence = (
        f"Training loss ended at {numbers['train_loss_final']:.3f} and validation loss at "
        f"{numbers['val_loss_final']:.3f}, against the threshold {floor:.3f} "
        f"({UNDERFIT_LOSS_SHARE:g} × the chance loss {numbers['chance_loss']:.3f})."
    )
    if min(numbers["train_loss_final"], numbers["val_loss_final"]) >= floor:
        return "underfitting", [loss_sentence, rise_sentence]
    return "good fit", [rise_sentence, gap_sentence, loss_sentence]


def _thin_evidence(numbers: dict, rise: float) -> str:
    """Why the validation set cannot support a verdict, or "" if it can."""
    count = numbers.get("val_images")
    if not count:
        return ""
    accuracy, chance = numbers["val_accuracy_final"], numbers["chance_accuracy"]
    error = sampling_error(chance, count)
    if near_chance(accuracy, chance, count):
        return (
            f"Validation accuracy ended at {accuracy:.1%}, within {SAMPLING_ERRORS:g} standard "
            f"errors ({SAMPLING_ERRORS * error:.1%}) of chance ({chance:.1%}) on {count} "
            "validation images: the model has not learned enough to judge how it fits."
        )
    gap, error = numbers["accuracy_gap_final"], sampling_error(accuracy, count)
    only_gap = rise < OVERFIT_VAL_LOSS_RISE_PERCENT and gap >= OVERFIT_ACCURACY_GAP
    if only_gap and gap < SAMPLING_ERRORS * error:
        return (
            f"The {gap * 100:.1f}-point accuracy gap is within {SAMPLING_ERRORS:g} standard errors "
            f"({SAMPLING_ERRORS * error * 100:.1f} points) of the validation accuracy on {count} "
            f"images, about {round(gap * count)} images: too few to call it overfitting."
        )
    return ""


@dataclass(frozen=True)
class Comparison:
    """One number compared between a candidate run and a reference run."""

    key: str  # A number in each run's diagnosis; dots reach into nested values.
    description: str  # What the number is, as the sentence's subject.
    expectation: str  # The textbook's claim, completing "the textbook expects that ...".
    tolerance: float  # Differences within this many display units count as no change.
    unit: str = ""  # Display unit after scaling, e.g. "points" or "%".
    scale: float = 1.0  # Multiplies the stored value for display (100: fraction to points).
    expected: str = "lower"  # Whether the textbook expects the candidate's number lower or higher.
    # What the number is read from, and so what evidence it needs besides the epochs:
    # "training" curves alone; "validation" curves, which say something only for models that
    # score measurably above chance on the validation images; or the "validation accuracy",
    # whose difference must also exceed its binomial standard error (`thin_comparison`).
    evidence: str = "validation"


AUGMENTATION_COMPARISONS = (
    Comparison("accuracy_gap_final", "The train–validation accuracy gap at the end",
               "augmentation narrows the gap", tolerance=1.0, unit=" points", scale=100.0,
               evidence="validation accuracy"),
    Comparison("loss_gap_final", "The validation-minus-training loss gap at the end",
               "augmentation narrows the gap", tolerance=0.02),
    Comparison("val_loss_rise_percent", "The validation loss's rise from its minimum to the end",
               "augmentation stops the validation loss from rising", tolerance=2.0, unit="%"),
)  # fmt: skip
BATCHNORM_COMPARISONS = (
    Comparison("train_loss_final", "The training loss at the end",
               "batch normalization trains to a lower loss", tolerance=0.02,
               evidence="training"),
    Comparison("train_loss_early", "The training loss after the first quarter of the epochs",
               "batch normalization makes the training loss fall faster", tolerance=0.02,
               evidence="training"),
    Comparison("smoothness.loss.roughness", "The training loss's roughness (ups and downs "
               "beyond its trend, per epoch)", "batch normalization makes the training loss "
               "fall more smoothly", tolerance=0.005, evidence="training"),
)  # fmt: skip
# (candidate, reference) experiment names and what to compare between them.
COMPARISONS = {
    ("augmented", "baseline"): AUGMENTATION_COMPARISONS,
    ("batchnorm", "baseline"): BATCHNORM_COMPARISONS,
}


def value(diagnosis: dict, key: str) -> float:
    """The number at `key` in a diagnosis; "a.b" reads `diagnosis["a"]["b"]`."""
    for part in key.split("."):
        diagnosis = diagnosis[part]
    return float(diagnosis)


def compare_runs(diagnoses: dict[str, dict]) -> list[dict]:
    """Every comparison of `COMPARISONS` whose two runs are present, as report entries.

    Each entry has the candidate, reference, key, `finding` (one of `FINDINGS`' values, or
    "too little evidence" when `thin_comparison` says the runs cannot carry it), `agrees`
    (True, False, or None when the difference is within tolerance or the evidence too thin)
    and the sentence.
    """
    entries = []
    for (candidate, reference), comparisons in COMPARISONS.items():
        if candidate not in diagnoses or reference not in diagnoses:
            continue
        for comparison in comparisons:
            candidate_value = value(diagnoses[candidate], comparison.key)
            reference_value = value(diagnoses[reference], comparison.key)
            thin = thin_comparison(
                comparison, {candidate: diagnoses[candidate], reference: diagnoses[reference]}
            )
            agrees = None if thin else agreement(comparison, reference_value, candidate_value)
            sentence_text = sentence(
                comparison, reference, reference_value, candidate, candidate_value, thin
            )
            entries.append(
                {
                    "candidate": candidate,
                    "reference": reference,
                    "key": comparison.key,
                    "finding": TOO_LITTLE_EVIDENCE if thin else FINDINGS[agrees],
                    "agrees": agrees,
                    "sentence": sentence_text,
                }
            )
    return entries


FINDINGS = {True: "agrees", False: "contradicts", None: "no clear difference"}
TOO_LITTLE_EVIDENCE = "too little evidence"


def thin_comparison(comparison: Comparison, diagnoses: dict[str, dict]) -> str:
    """Why the runs' diagnoses (by name) cannot carry `comparison`, as a clause, or "" if they
    can: too few epochs; for validation numbers, a run not measurably above chance on its
    validation images; for the validation accuracy, a difference within `SAMPLING_ERRORS`
    binomial standard errors of the difference of two accuracies on that many images."""
    epochs = {name: int(numbers["epochs"]) for name, numbers in diagnoses.items()}
    short = {name: count for name, count in epochs.items() if count < MIN_COMPARISON_EPOCHS}
    if short:
        if len(set(epochs.values())) == 1:
            ran = f"both runs ran {_epochs(next(iter(epochs.values())))}"
        else:
            ran = " and ".join(f"{name} ran {_epochs(count)}" for name, count in short.items())
        return f"{ran}; a comparison of curves needs at least {MIN_COMPARISON_EPOCHS} in each run"
    if comparison.evidence == "training":
        return ""
    for name, numbers in diagnoses.items():
        count, accuracy = numbers.get("val_images"), numbers["val_accuracy_final"]
        chance = numbers["chance_accuracy"]
        if count and near_chance(accuracy, chance, count):
            return (
                f"{name}'s validation accuracy ({accuracy:.1%}) is within {SAMPLING_ERRORS:g} "
                f"standard errors of chance ({chance:.1%}) on {count} images"
            )
    counts = [numbers.get("val_images") for numbers in diagnoses.values()]
    if comparison.evidence != "validation accuracy" or not all(counts):
        return ""
    # Two independent binomial errors add in quadrature. Training accuracy is measured on
    # several times as many images, so the validation images dominate the difference's error.
    error = math.sqrt(sum(
        sampling_error(numbers["val_accuracy_final"], count) ** 2
        # pragma below: `counts` holds one entry per diagnosis, so `strict` never matters.
        for numbers, count in zip(diagnoses.values(), counts, strict=True)  # pragma: no mutate
    ))  # fmt: skip
    first, second = (value(numbers, comparison.key) for numbers in diagnoses.values())
    difference = abs(first - second)
    if difference >= SAMPLING_ERRORS * error:
        return ""
    unit, scale = comparison.unit, comparison.scale
    images = " and ".join(map(str, dict.fromkeys(counts)))
    images += " images each" if len(set(counts)) == 1 else " images"
    return (
        f"the difference of {difference * scale:.3g}{unit} is within {SAMPLING_ERRORS:g} "
        f"standard errors ({SAMPLING_ERRORS * error * scale:.3g}{unit}) of two validation "
        f"accuracies measured on {images}"
    )


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def agreement(comparison: Comparison, reference_value: float, candidate_value: float):
    """True if the candidate moved as the textbook expects, False if the other way, None if tied."""
    difference = (candidate_value - reference_value) * comparison.scale
    if abs(difference) <= comparison.tolerance:
        return None
    # `difference` is never 0 here (the tolerance took it), so `<` and `<=` agree.
    return (difference < 0) == (comparison.expected == "lower")  # pragma: no mutate


def sentence(
    comparison: Comparison,
    reference: str,
    reference_value: float,
    candidate: str,
    candidate_value: float,
    thin: str = "",
) -> str:
    """One sentence comparing two runs' values of one number, quoting both and the difference;
    with `thin` (why the evidence cannot carry it), it says so instead of drawing a finding."""
    shown = comparison.scale
    unit = comparison.unit
    difference = (candidate_value - reference_value) * shown
    numbers = (
        f"{comparison.description}: {candidate} {candidate_value * shown:.3g}{unit}, "
        f"{reference} {reference_value * shown:.3g}{unit}"
    )
    if thin:
        return (
            f"{numbers}; too little evidence to test the textbook expectation that "
            f"{comparison.expectation} ({thin})."
        )
    agrees = agreement(comparison, reference_value, candidate_value)
    if agrees is None:
        return (
            f"{numbers}; no clear difference (within {comparison.tolerance:g}{unit}), although "
            f"the textbook expects that {comparison.expectation}."
        )
    direction = "lower" if difference < 0 else "higher"  # Never 0: agreement() said None.
    change = f"{candidate} is {abs(difference):.3g}{unit} {direction}"
    if agrees:
        return f"{numbers}; {change}, as the textbook expects ({comparison.expectation})."
    return (
        f"{numbers}; {change}. This contradicts the textbook expectation that "
        f"{comparison.expectation}: in this run the data shows the opposite."
    )


def compare_by_seed(diagnoses: dict[tuple[str, int], dict]) -> list[dict]:
    """`compare_runs` among the runs of each seed, for studies with repeats.

    A diagnosis describes one run's curves, so repeated runs are compared seed by seed, each
    sentence beginning with its seed. `diagnoses` is keyed by (experiment, seed).
    """
    by_seed: dict[int, dict[str, dict]] = {}
    for (name, seed), result in diagnoses.items():
        by_seed.setdefault(seed, {})[name] = result
    return [
        {**entry, "seed": seed, "sentence": f"Seed {seed}: {entry['sentence']}"}
        for seed, same_seed in by_seed.items()
        for entry in compare_runs(same_seed)
    ]


def compare_with_base(
    name: str, base: str, differences: list[str], candidate: dict, reference: dict
) -> dict:
    """What a user's change did, against the experiment it was stated against, in numbers.

    `candidate` and `reference` hold each run's `diagnosis` and `test_accuracy`; `differences`
    name the settings that differ ("dropout 0.5 → 0.25"). The textbook has no expectation
    here, so the entry's `agrees` is None and its `kind` is "base".
    """
    ours, theirs = candidate["diagnosis"], reference["diagnosis"]
    loss, base_loss = ours["val_loss_min"], theirs["val_loss_min"]
    accuracy, base_accuracy = candidate["test_accuracy"], reference["test_accuracy"]
    gap, base_gap = 100 * ours["accuracy_gap_final"], 100 * theirs["accuracy_gap_final"]
    changed = "; ".join(differences) or "no setting"
    sentence = (
        f"{name} against its base {base} ({changed}): best validation loss {loss:.3f} vs "
        f"{base_loss:.3f} ({loss - base_loss:+.3f}); test accuracy {accuracy:.1%} vs "
        f"{base_accuracy:.1%} ({100 * (accuracy - base_accuracy):+.1f} points); train–validation "
        f"accuracy gap at the end {gap:.1f} vs {base_gap:.1f} points; verdict "
        f"{ours['verdict']} vs {theirs['verdict']}."
    )
    return {"candidate": name, "reference": base, "key": "base", "kind": "base", "agrees": None,
            "sentence": sentence}  # fmt: skip
