"""Views of a run folder and a study folder for notebooks and scripts: `Run` and `Study` read
what `cifarlab.run_folder` wrote and show it as tables and figures in Jupyter.

    run = cifarlab.open_run("runs/baseline")
    run.metrics["test"]["accuracy"], run.history["val_loss"], run.plot_curves()
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.run_folder import (
    COMPARISONS,
    CONFIG,
    ENVIRONMENT,
    METRICS,
    REPORT_HTML,
    RESULTS_JSON,
    SEED_PREFIX,
    SEED_SUMMARY_JSON,
    holds_config,
    is_finished,
    load_best_model,
    metrics_problem,
    read_config,
    read_history,
    read_json,
    read_metrics,
    seed_folder,
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One run folder: what was trained (`config`), how it went (`history`) and `metrics`."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not holds_config(self.path):
            raise UserError(f"{self.path} is not a run folder (it has no {CONFIG}).")

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def config(self) -> Config:
        return read_config(self.path)

    @property
    def metrics(self) -> dict:
        """The contents of the run's metrics file; empty until the run has been evaluated."""
        return read_metrics(self.path)

    @property
    def finished(self) -> bool:
        return is_finished(self.path)

    @property
    def history_rows(self) -> list[dict]:
        """One dict per finished epoch, as in the history table."""
        return read_history(self.path)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Per-epoch columns of the history table (loss, accuracy, val_loss, val_accuracy, ...)."""
        rows = self.history_rows
        keys = rows[0].keys() if rows else ()
        return {key: np.array([row[key] for row in rows]) for key in keys}

    @property
    def environment(self) -> dict:
        path = self.path / ENVIRONMENT
        return read_json(path) if path.is_file() else {}

    @property
    def diagnosis(self) -> dict:
        """The verdict and its numbers, stored with its metrics when the run was evaluated."""
        return self.finished_metrics().get("diagnosis") or {}

    def finished_metrics(self) -> dict:
        """`metrics`, or a `UserError` if the run has not been evaluated."""
        metrics = self.metrics
        if not metrics:
            problem = metrics_problem(self.path)
            raise UserError(
                f"{self.path} is not finished (its {METRICS} {problem}); finish it with "
                "cifarlab train first."
            )
        return metrics

    def model(self):
        """The best checkpoint as a `keras.Model`."""
        return load_best_model(self.path)

    def plot_curves(self):
        """Training and validation accuracy and loss per epoch, as a matplotlib Figure."""
        from cifarlab.report import plots

        return plots.curves_figure(self.history_rows, self.metrics.get("best_epoch"), self.name)

    def __repr__(self) -> str:
        test = self.metrics.get("test", {})
        accuracy = f", test accuracy {test['accuracy']:.2%}" if test else ""
        return f"Run({str(self.path)!r}, {self.name}{accuracy})"

    def _repr_html_(self) -> str:
        metrics = self.metrics
        if not metrics:
            return f"<p>Run <code>{html.escape(str(self.path))}</code> (not evaluated yet)</p>"
        cells = "".join(
            f"<tr><td>{split}</td><td>{metrics[split]['loss']:.4f}</td>"
            f"<td>{metrics[split]['accuracy']:.2%}</td></tr>"
            for split in ("train", "val", "test")
        )
        verdict = metrics.get("diagnosis", {}).get("verdict", "")
        return (
            f"<p><b>{html.escape(self.name)}</b> — <code>{html.escape(str(self.path))}</code>, "
            f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
            f"{', ' + html.escape(verdict) if verdict else ''}</p>"
            f"<table><tr><th>split</th><th>loss</th><th>accuracy</th></tr>{cells}</table>"
        )


@dataclass(frozen=True)
class Study:
    """A study folder: one run folder per experiment (or per experiment and seed, with repeats)
    and the report built from them, read back as written."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not (self.path / RESULTS_JSON).is_file():
            raise UserError(f"{self.path} holds no study report (no {RESULTS_JSON}).")

    @property
    def results(self) -> list[dict]:
        """One row per run, as in the results table."""
        return read_json(self.path / RESULTS_JSON)

    @property
    def summary(self) -> list[dict]:
        """One row per experiment across its seeds, as in the summary table; empty without
        repeats."""
        path = self.path / SEED_SUMMARY_JSON
        return read_json(path) if path.is_file() else []

    @property
    def runs(self) -> dict[str, Run]:
        """The study's runs by experiment name, or by "<experiment>/seed=<s>" with repeats."""
        rows = self.results
        names = [row["experiment"] for row in rows]
        if len(set(names)) == len(names):
            return {name: Run(self.path / name) for name in names}
        return {
            f"{row['experiment']}/{SEED_PREFIX}{row['seed']}": Run(
                seed_folder(self.path / row["experiment"], row["seed"])
            )
            for row in rows
        }

    @property
    def comparisons(self) -> list[dict]:
        """The diagnosis's comparison sentences, each with whether it agrees with the textbook."""
        return self._stored_comparisons()["comparisons"]

    @property
    def differences(self) -> list[str]:
        """Each experiment against the baseline on test accuracy across seeds, as sentences."""
        return self._stored_comparisons()["differences"]

    @property
    def report(self) -> Path:
        return self.path / REPORT_HTML

    def _stored_comparisons(self) -> dict:
        path = self.path / COMPARISONS
        return read_json(path) if path.is_file() else {"comparisons": [], "differences": []}

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {', '.join(self.runs)})"

    def _repr_html_(self) -> str:
        from cifarlab.report import rendering

        return rendering.study_summary_html(self)
