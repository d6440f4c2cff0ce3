"""What both report pages and a notebook's view of a study share: table cells and Jinja2.

Tables are handed to the templates as headings and already formatted cells; the templates in
`templates/` are rendered by one Jinja2 environment per output kind, with autoescaping for HTML.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import jinja2

from cifarlab.scale import statistics

COLUMNS = {  # Results column: (heading, format).
    "experiment": ("Experiment", "{}"),
    "params": ("Parameters", "{:,}"),
    "epochs_run": ("Epochs", "{}"),
    "best_epoch": ("Best epoch", "{}"),
    "train_loss": ("Train loss", "{:.3f}"),
    "train_accuracy": ("Train acc.", "{:.1%}"),
    "val_loss": ("Val. loss", "{:.3f}"),
    "val_accuracy": ("Val. acc.", "{:.1%}"),
    "test_loss": ("Test loss", "{:.3f}"),
    "test_accuracy": ("Test acc.", "{:.1%}"),
    "train_seconds": ("Train s", "{:.1f}"),
    "seconds_per_epoch": ("s / epoch", "{:.1f}"),
    "images_per_second": ("Images / s", "{:,.0f}"),
    "verdict": ("Verdict", "{}"),
}


def results_columns(repeated: bool) -> dict:
    """The results table's columns, with the seed after the experiment for repeated runs."""
    if not repeated:
        return COLUMNS
    return {"experiment": COLUMNS["experiment"], "seed": ("Seed", "{}"), **COLUMNS}


def cell(value, spec: tuple) -> str:
    """A value as its column shows it; an optional third entry scales it (100: to points)."""
    if value is None:
        return "–"
    _, template, *scale = spec
    return template.format(value * scale[0] if scale else value)


def table(columns: dict, rows: list[dict]) -> dict:
    """Headings and formatted cells, for the templates."""
    return {
        "headings": [spec[0] for spec in columns.values()],
        "columns": list(columns),
        "rows": [[cell(row.get(key), spec) for key, spec in columns.items()] for row in rows],
    }


@functools.cache
def environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cifarlab.report", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["css_class"] = lambda text: str(text).replace(" ", "-")
    environment.filters["embed"] = embedded_png
    return environment


def embedded_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def study_summary_html(study) -> str:
    """A study's results, verdicts and comparisons, for Jupyter's display of a `Study`."""
    repeated = bool(study.summary)
    template = environment(True).get_template("study_summary.html.j2")
    return template.render(
        results=table(results_columns(repeated), study.results),
        seeds=table(statistics.DISPLAY_COLUMNS, statistics.display_rows(study.summary)),
        differences=study.differences,
        verdicts={name: run.diagnosis.get("verdict", "") for name, run in study.runs.items()},
        comparisons=study.comparisons,
        report=str(study.report),
    )
