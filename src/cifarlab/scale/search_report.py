"""The report of a search: every trial's settings, epochs, validation accuracy and status as a
table, the accuracy against each setting as a figure, and a summary in words (the trials from
best to worst, the best trial's test accuracy, what it gained over the base's settings, and the
compute ASHA saved). `cifarlab.scale.search` runs the search and hands its trials here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cifarlab import run_folder
from cifarlab.scale.space import SearchSpace


@dataclass(frozen=True)
class Trial:
    """One trial as the search ended it."""

    number: int  # 1, 2, ... in the order Tune created them.
    trial_id: str
    settings: dict
    epochs: int  # Epochs trained.
    val_accuracy: float | None  # Its checkpoint's, after those epochs.
    status: str  # "complete", "stopped early" or "failed: <why>".

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={_shown(value)}" for key, value in self.settings.items())


@dataclass(frozen=True)
class Result:
    trials: list[Trial]
    best: Trial | None  # Highest validation accuracy.
    test_accuracy: float | None  # The best trial's, scored once.
    epochs_run: int
    epochs_budget: int  # Trials × epochs: what the search would have cost without ASHA.
    folder: Path
    text: str  # The summary, also written beside the table.

    @property
    def trial_folders(self) -> list[Path]:
        trials = self.folder / run_folder.SEARCH_TRIALS
        return [trials / trial.trial_id for trial in self.trials if trial.epochs]


def write_report(
    space: SearchSpace,
    found: list[Trial],
    best: Trial | None,
    test_accuracy: float | None,
    rungs: list[int],
    out: Path,
) -> Result:
    """The search's table, figure and summary in `out`; the result they describe."""
    epochs_run = sum(trial.epochs for trial in found)
    budget = len(found) * space.base.epochs
    rows = [
        {"trial": trial.number, "trial_id": trial.trial_id, **trial.settings,
         "epochs": trial.epochs, "val_accuracy": trial.val_accuracy, "status": trial.status}
        for trial in found
    ]  # fmt: skip
    columns = ["trial", "trial_id", *space.keys, "epochs", "val_accuracy", "status"]
    run_folder.write_csv(out / run_folder.SEARCH_CSV, rows, columns)
    plot(out / run_folder.SEARCH_PNG, space, found, best)
    text = summarise(space, found, best, test_accuracy, epochs_run, budget, rungs)
    run_folder.write_text(out / run_folder.SEARCH_TXT, text + "\n")
    return Result(found, best, test_accuracy, epochs_run, budget, out, text)


def summarise(
    space: SearchSpace,
    found: list[Trial],
    best: Trial | None,
    test_accuracy: float | None,
    epochs_run: int,
    budget: int,
    rungs: list[int],
) -> str:
    """The trials from best to worst, the best trial and what ASHA saved (it compared trials
    at the epochs of `rungs`), in words."""
    epochs = space.base.epochs
    at = f"epoch {rungs[0]}" if len(rungs) == 1 else (
        f"epochs {', '.join(map(str, rungs[:-1]))} and {rungs[-1]}")  # fmt: skip
    stopping = f"ASHA stopped those below the top third at {at}" if rungs else (
        "ASHA had no epoch to stop a trial at")  # fmt: skip
    lines = [
        f"Search of {count_of(len(found), 'trial')} of {space.base.name} ({epochs_text(epochs)} "
        f"each) over "
        f"{'; '.join(dim.describe() for dim in space.dimensions)}; Optuna proposed the "
        f"trials, {stopping}."
    ]
    failed_last = sorted(found, key=lambda trial: (trial.failed or trial.val_accuracy is None,
                                                   -(trial.val_accuracy or 0)))  # fmt: skip
    for trial in failed_last:
        accuracy = ""
        if trial.val_accuracy is not None:
            accuracy = f"val accuracy {trial.val_accuracy:.2%} after {epochs_text(trial.epochs)}, "
        lines.append(f"trial {trial.number} ({trial.label}): {accuracy}{trial.status}")
    if best is not None:
        lines.append(
            f"Best trial: {best.number} ({best.label}), val accuracy {best.val_accuracy:.2%}; "
            f"its test accuracy, scored once: {test_accuracy:.2%}."
        )
        base = space.base_point()
        first = found[0] if found else None
        if base is not None and first is not None and first.val_accuracy is not None:
            lines.append(_against_base(space, found, best, epochs))
    else:
        lines.append("No trial trained an epoch without failing; there is no best trial.")
    saved = 1 - epochs_run / budget if budget else 0
    lines.append(f"ASHA ran {epochs_run} of {budget} epochs ({count_of(len(found), 'trial')} × "
                 f"{epochs}): {saved:.0%} of the compute saved.")  # fmt: skip
    return "\n".join(lines)


def _against_base(space, found: list[Trial], best: Trial, epochs: int) -> str:
    """What the search gained over trial 1, the base experiment's own settings, or by how much
    the runner-up fell short of them."""
    name, first = space.base.name, found[0]
    if first is best:
        others = [trial for trial in found[1:] if trial.val_accuracy is not None and
                  not trial.failed]  # fmt: skip
        if not others:
            return f"Trial 1 is {name}'s own settings, the only trial with a score."
        runner = max(others, key=lambda trial: trial.val_accuracy)
        return (f"Trial 1 is {name}'s own settings, and no other trial beat it: the runner-up, "
                f"trial {runner.number} ({runner.label}), reached {runner.val_accuracy:.2%} after "
                f"{epochs_text(runner.epochs)}, "
                f"{100 * (runner.val_accuracy - first.val_accuracy):+.2f} points.")  # fmt: skip
    gain = 100 * (best.val_accuracy - first.val_accuracy)
    if first.epochs < epochs:
        return (f"Trial 1, {name}'s own settings, reached {first.val_accuracy:.2%} before ASHA "
                f"stopped it after {epochs_text(first.epochs)}; the best trial is {gain:+.2f} "
                "points above that.")  # fmt: skip
    return (
        f"Against trial 1, {name}'s own settings, at the same {epochs_text(epochs)}: "
        f"{gain:+.2f} points of validation accuracy."
    )


def epochs_text(count: int) -> str:
    """`1 epoch`, `3 epochs`."""
    return count_of(count, "epoch")


def count_of(count: int, noun: str) -> str:
    """`1 trial`, `6 trials`."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def plot(path: Path, space: SearchSpace, found: list[Trial], best) -> None:
    """One panel per sampled setting: each trial's validation accuracy against its value,
    trials ASHA stopped hollow, the best one ringed."""
    from matplotlib.figure import Figure  # A bare Figure needs no GUI backend.

    dimensions = space.dimensions
    figure = Figure(figsize=(4.5 * len(dimensions), 3.8), layout="constrained")
    scored = [trial for trial in found if trial.val_accuracy is not None and not trial.failed]
    for axes, dim in zip(figure.subplots(1, len(dimensions), squeeze=False)[0], dimensions,
                         strict=True):  # fmt: skip
        choices = [_shown(value) for value in dim.values] if dim.distribution == "choice" else None
        for stopped in (False, True):
            members = [trial for trial in scored if (trial.status != "complete") == stopped]
            positions = [_position(trial.settings[dim.key], choices) for trial in members]
            label = "stopped early (fewer epochs)" if stopped else "complete"
            axes.scatter(positions, [100 * trial.val_accuracy for trial in members],
                         facecolors="none" if stopped else "C0", edgecolors="C0",
                         label=label)  # fmt: skip
        if best is not None:
            axes.scatter([_position(best.settings[dim.key], choices)], [100 * best.val_accuracy],
                         s=160, facecolors="none", edgecolors="C3", label="best")  # fmt: skip
        axes.set_xlabel(dim.key)
        axes.set_ylabel("validation accuracy (%)")
        if dim.distribution == "loguniform":
            axes.set_xscale("log")
        if choices is not None:
            axes.set_xticks(range(len(choices)), choices)
    figure.axes[0].legend(fontsize="small")
    figure.suptitle(f"{len(found)} trials of {space.base.name}: validation accuracy of each "
                    "trial's checkpoint")  # fmt: skip
    with run_folder.atomic_path(path, suffix=".png") as partial:
        figure.savefig(partial, dpi=100)


def _position(value: object, choices: list[str] | None) -> float:
    return choices.index(_shown(value)) if choices is not None else float(value)


def _shown(value: object) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)
