"""A run folder as a Python object: its config, metrics, history and best model, read lazily.

run = cifarlab.open_run("runs/baseline")
run.metrics["test"]["accuracy"], run.history["val_loss"], run.plot_curves()
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cifarlab.config import Config
from cifarlab.errors import UserError


def read_history(path: str | Path) -> list[dict]:
    """`history.csv` as rows of floats (`epoch` stays Keras's 0-based integer); empty if none."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as file:
        return [
            {key: (int(value) if key == "epoch" else float(value)) for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


@dataclass(frozen=True)
class Run:
    """One run folder: what was trained (`config`), how it went (`history`) and `metrics`."""

    path: Path

    def __post_init__(self) -> None:
        if not (Path(self.path) / "config.json").is_file():
            raise UserError(f"{self.path} is not a run folder (it has no config.json).")
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def config(self) -> Config:
        return Config.load(self.path / "config.json")

    @property
    def metrics(self) -> dict:
        """The contents of `metrics.json`; empty until the run has been evaluated."""
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Per-epoch columns of `history.csv` (loss, accuracy, val_loss, val_accuracy, ...)."""
        rows = read_history(self.path / "history.csv")
        keys = rows[0].keys() if rows else ()
        return {key: np.array([row[key] for row in rows]) for key in keys}

    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file()

    def model(self):
        """The best checkpoint as a `keras.Model`."""
        from cifarlab.evaluation import load_best

        return load_best(self.path)

    def plot_curves(self):
        """Training and validation accuracy and loss per epoch, as a matplotlib Figure."""
        from cifarlab import plots

        history = read_history(self.path / "history.csv")
        return plots.curves_figure(history, self.metrics.get("best_epoch"), self.name)

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
    and the report built from them."""

    path: Path

    def __post_init__(self) -> None:
        if not (Path(self.path) / "results.json").is_file():
            raise UserError(f"{self.path} holds no study report (no results.json).")
        object.__setattr__(self, "path", Path(self.path))

    @property
    def results(self) -> list[dict]:
        """One row per run, as in `results.csv`."""
        return json.loads((self.path / "results.json").read_text())

    @property
    def summary(self) -> list[dict]:
        """One row per experiment across its seeds, as in `summary.csv`; empty without repeats."""
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else []

    @property
    def runs(self) -> dict[str, Run]:
        """The study's runs by experiment name, or by "<experiment>/seed=<s>" with repeats."""
        rows = self.results
        names = [row["experiment"] for row in rows]
        if len(set(names)) == len(names):
            return {name: Run(self.path / name) for name in names}
        return {
            f"{row['experiment']}/seed={row['seed']}": Run(
                self.path / row["experiment"] / f"seed={row['seed']}"
            )
            for row in rows
        }

    @property
    def differences(self) -> list[str]:
        """Each experiment against the baseline on test accuracy across seeds, as sentences."""
        from cifarlab import seeds

        if not self.summary:
            return []
        runs = [(run.name, run.metrics) for run in self.runs.values()]
        return seeds.sentences(seeds.metric_values(runs))

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def comparisons(self) -> list[dict]:
        """The diagnosis's comparison sentences, each with whether it agrees with the textbook."""
        from cifarlab import diagnosis

        if not self.summary:
            diagnoses = {name: run.metrics["diagnosis"] for name, run in self.runs.items()}
            return diagnosis.compare(diagnoses)
        # A diagnosis describes one run's curves, so repeated runs are compared seed by seed.
        by_seed: dict[int, dict[str, dict]] = {}
        for run in self.runs.values():
            by_seed.setdefault(run.config.seed, {})[run.name] = run.metrics["diagnosis"]
        return [
            {**entry, "seed": seed, "sentence": f"Seed {seed}: {entry['sentence']}"}
            for seed, diagnoses in by_seed.items()
            for entry in diagnosis.compare(diagnoses)
        ]

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {', '.join(self.runs)})"

    def _repr_html_(self) -> str:
        from cifarlab import render

        verdicts = "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(run.metrics['diagnosis']['verdict'])}"
            "</li>"
            for name, run in self.runs.items()
        )
        sentences = "".join(f"<li>{html.escape(c['sentence'])}</li>" for c in self.comparisons)
        columns = render.results_columns(repeated=bool(self.summary))
        return (
            f"{self._summary_html()}{render.html_table(columns, self.results)}"
            f"<p><b>Verdicts</b></p><ul>{verdicts}</ul>"
            f"<p><b>What each change did</b></p><ul>{sentences}</ul>"
            f"<p>Full report: <code>{html.escape(str(self.report))}</code></p>"
        )

    def _summary_html(self) -> str:
        """The table across seeds and the comparisons it supports; empty without repeats."""
        from cifarlab import render, seeds

        if not self.summary:
            return ""
        differences = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in self.differences)
        return (
            "<p><b>Across seeds</b></p>"
            f"{render.html_table(seeds.DISPLAY_COLUMNS, seeds.display_rows(self.summary))}"
            f"<ul>{differences}</ul><p><b>Every run</b></p>"
        )
