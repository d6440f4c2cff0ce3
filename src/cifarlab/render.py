"""The report's two pages, Markdown and HTML, from what `cifarlab.report` gathered.

Both lead with the results table, then (for repeated runs) the statistics across seeds, then
the diagnosis (rules with thresholds, each run's verdict with its numbers, the comparison
sentences), then the figures. The HTML is one self-contained file: the CSS of `report.css` and
the PNGs embedded as data, each linking to its file beside it.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from html import escape as _escape
from pathlib import Path

from cifarlab import seeds

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
FILE_FIGURES = ("curves.png", "confusion.png", "per_class.png")  # Drawn without the images.
DIAGNOSIS_COLUMNS = {  # Diagnosis number: (heading, format).
    "best_epoch": ("Min. val. loss at epoch", "{}"),
    "val_loss_rise_percent": ("Val. loss rise since min.", "{:.1f}%"),
    "accuracy_gap_best": ("Acc. gap at best", "{:.1f} pt", 100),
    "accuracy_gap_final": ("Acc. gap at end", "{:.1f} pt", 100),
    "loss_gap_best": ("Loss gap at best", "{:.3f}"),
    "loss_gap_final": ("Loss gap at end", "{:.3f}"),
    "train_loss_final": ("Train loss at end", "{:.3f}"),
    "train_loss_min": ("Min. train loss", "{:.3f}"),
    "smoothness.loss.roughness": ("Train-loss roughness", "{:.4f}"),
    "smoothness.val_loss.roughness": ("Val.-loss roughness", "{:.4f}"),
}
DIAGNOSIS_TABLE = {"experiment": ("Experiment", "{}"), **DIAGNOSIS_COLUMNS}
FIGURE_CAPTIONS = {
    "compare_loss.png": "Loss of every run: training solid, validation dashed.",
    "compare_accuracy.png": "Accuracy of every run: training solid, validation dashed.",
    "samples.png": "Training images with their class names.",
    "augmentation.png": "One training image and augmented versions of it, as 'augmented' sees.",
    "curves.png": "Accuracy and loss per epoch; the dotted line marks the saved checkpoint.",
    "confusion.png": "Confusion matrix on the test set, each row normalized, with counts.",
    "per_class.png": "Precision and recall per class on the test set.",
    "errors.png": "The test images the model got wrong most confidently.",
    "features.png": "Penultimate-layer (512-d) features of test images, projected to 2-D.",
}
SCORES_NOTE = (
    "Scores are those of each run's saved checkpoint (its epoch of lowest validation loss), "
    "evaluated without dropout or augmentation; the diagnosis reads the per-epoch curves "
    "recorded during training. Timings are wall-clock on the hardware below, shared or not."
)
DIAGNOSIS_NOTE = (
    "Read from the per-epoch history. Accuracy gap: training minus validation accuracy, in "
    "percentage points (pt); loss gap: validation minus training loss; 'best' is the epoch of "
    "minimum validation loss. Roughness: the mean epoch-to-epoch change beyond the curve's "
    "trend, zero for a curve that only falls."
)
WIDE_FIGURES = ("curves.png", "errors.png", "augmentation.png")  # Too detailed for half width.
MARKS = {True: "agrees", False: "contradicts", None: "no clear difference"}
CSS = (Path(__file__).parent / "report.css").read_text()


@dataclass
class Page:
    """Everything one report page shows."""

    runs: list  # report.RunRecord, in report order.
    rows: list[dict]
    diagnoses: dict[str, dict]
    comparisons: list[dict]
    out_dir: Path
    rules: list[str]
    summary: list[dict] = field(default_factory=list)  # Across seeds; empty without repeats.
    sentences: list[str] = field(default_factory=list)  # Experiments compared across seeds.

    @property
    def title(self) -> str:
        return "cifarlab study: " + ", ".join(dict.fromkeys(run.name for run in self.runs))

    @property
    def columns(self) -> dict:
        return results_columns(repeated=bool(self.summary))


def results_columns(repeated: bool) -> dict:
    """The results table's columns, with the seed after the experiment for repeated runs."""
    return {"experiment": None, "seed": ("Seed", "{}"), **COLUMNS} if repeated else COLUMNS


def cell(column: str, value, columns: dict = COLUMNS) -> str:
    """A value as its column shows it; an optional third entry scales it (100: to points)."""
    if value is None:
        return "–"
    _, template, *scale = columns[column]
    return template.format(value * scale[0] if scale else value)


def diagnosis_rows(page: Page) -> list[dict]:
    """One row per run of the diagnosis table: its numbers, by `DIAGNOSIS_COLUMNS` key."""
    return [
        {"experiment": label, **{key: diagnosis_value(result, key) for key in DIAGNOSIS_COLUMNS}}
        for label, result in page.diagnoses.items()
    ]


def diagnosis_value(diagnosis: dict, key: str):
    for part in key.split("."):
        diagnosis = diagnosis[part]
    return diagnosis


def context_lines(page: Page) -> list[tuple[str, str]]:
    """(label, text) pairs stating data source, split, seed, hardware, backend and versions."""
    first = page.runs[0]
    environment = first.environment
    hardware = sorted({hardware_line(run.environment) for run in page.runs})
    versions = ", ".join(
        f"{name} {version}" for name, version in environment.get("versions", {}).items()
    )
    seeds = sorted({str(run.config.get("seed")) for run in page.runs})
    classes = first.metrics["class_names"]
    return [
        (
            "Data",
            f"{environment.get('data', 'unknown')} ({first.metrics.get('dataset', '')}, "
            f"{len(classes)} classes: {', '.join(classes)})",
        ),
        (
            "Split",
            f"{first.config.get('val_fraction'):.0%} of the training images held out for "
            "validation; the test set is used only for the final scores",
        ),
        ("Seed", ", ".join(seeds)),
        ("Hardware", "; ".join(hardware)),
        ("Versions", versions or "unknown"),
    ]


def hardware_line(environment: dict) -> str:
    if not environment:
        return "unknown"
    device = (
        environment.get("gpu") or f"{environment.get('cpu')} ({environment.get('cpu_count')} cores)"
    )
    return (
        f"{device}, {environment.get('platform', '')}; backend {environment.get('backend')}, "
        f"precision {environment.get('precision')}"
    )


def figure_path(page: Page, folder: Path, name: str) -> str | None:
    """The figure's path relative to the report folder, or None if it does not exist."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    return Path(os.path.relpath(path, page.out_dir)).as_posix()


def figure_sections(page: Page) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """(heading, [(figure name, relative path or None)]) for the study and for every run."""
    study = [
        (name, figure_path(page, page.out_dir, name))
        for name in FIGURE_CAPTIONS
        if name.startswith("compare") or (page.out_dir / name).is_file()
    ]
    sections = [("All runs", study)]
    first_seeds: dict[str, int] = {}
    for run in page.runs:
        names = [*FILE_FIGURES, "errors.png", "features.png"]
        # A repeated study draws the figures that need the images for its first seed only.
        if first_seeds.setdefault(run.name, run.seed) != run.seed:
            names = [name for name in names if (run.run_dir / name).is_file()]
        sections.append(
            (run.label, [(name, figure_path(page, run.run_dir, name)) for name in names])
        )
    return sections


def missing_note(name: str) -> str:
    return f"{name} is missing: `cifarlab study` draws it after training (it needs the images)."


def markdown(page: Page) -> str:
    """The report as Markdown, images linked by relative path."""
    lines = [f"# {page.title}", ""]
    lines += [f"- **{label}:** {text}" for label, text in context_lines(page)]
    lines += ["", "## Results", "", _markdown_table(page.columns, page.rows), "", SCORES_NOTE, ""]
    if page.summary:
        table = _markdown_table(seeds.DISPLAY_COLUMNS, seeds.display_rows(page.summary))
        lines += ["## Across seeds", "", table, "", seeds.NOTE, ""]
        lines += [f"- {sentence}" for sentence in page.sentences] + [""]
    lines += ["## Diagnosis", "", "Verdict rules:", ""]
    lines += [f"- {rule}" for rule in page.rules]
    lines += ["", _markdown_table(DIAGNOSIS_TABLE, diagnosis_rows(page)), "", DIAGNOSIS_NOTE, ""]
    for name, result in page.diagnoses.items():
        lines.append(f"- **{name}: {result['verdict']}.** " + " ".join(result["reasons"]))
    if page.comparisons:
        lines += ["", "### What each change did", ""]
        lines += [f"- ({MARKS[entry['agrees']]}) {entry['sentence']}" for entry in page.comparisons]
    lines += ["", "## Figures"]
    for heading, figures in figure_sections(page):
        lines += ["", f"### {heading}", ""]
        for name, path in figures:
            lines.append(
                f"![{FIGURE_CAPTIONS[name]}]({path})" if path else f"*{missing_note(name)}*"
            )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _markdown_table(columns: dict, rows: list[dict]) -> str:
    header = "| " + " | ".join(spec[0] for spec in columns.values()) + " |"
    rule = "|" + "|".join("---" if key == "experiment" else "---:" for key in columns) + "|"
    body = [
        "| " + " | ".join(cell(key, row[key], columns) for key in columns) + " |" for row in rows
    ]
    return "\n".join([header, rule, *body])


def html(page: Page) -> str:
    """The report as one self-contained HTML page."""
    escape = html_escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(page.title)}</h1><p class='context'>",
    ]
    parts += [f"<b>{escape(label)}:</b> {escape(text)}<br>" for label, text in context_lines(page)]
    parts += ["</p><h2>Results</h2>", html_table(page.columns, page.rows)]
    parts.append(f"<p class='context'>{html_escape(SCORES_NOTE)}</p>")
    if page.summary:
        parts += [
            "<h2>Across seeds</h2>",
            html_table(seeds.DISPLAY_COLUMNS, seeds.display_rows(page.summary)),
        ]
        parts.append(f"<p class='context'>{html_escape(seeds.NOTE)}</p><ul>")
        parts += [f"<li>{escape(sentence)}</li>" for sentence in page.sentences] + ["</ul>"]
    parts += ["<h2>Diagnosis</h2><p>Verdict rules, applied to each run's history:</p><ul>"]
    parts += [f"<li>{escape(rule)}</li>" for rule in page.rules] + ["</ul>"]
    parts.append(html_table(DIAGNOSIS_TABLE, diagnosis_rows(page)))
    parts.append(f"<p class='context'>{html_escape(DIAGNOSIS_NOTE)}</p>")
    for name, result in page.diagnoses.items():
        parts.append(
            f"<p><b>{escape(name)}</b> {_badge(result['verdict'])} "
            f"{escape(' '.join(result['reasons']))}</p>"
        )
    if page.comparisons:
        parts.append("<h3>What each change did</h3><ul>")
        for entry in page.comparisons:
            mark = MARKS[entry["agrees"]]
            parts.append(
                f"<li><span class='{mark.replace(' ', '-')}'>[{mark}]</span> "
                f"{escape(entry['sentence'])}</li>"
            )
        parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    for heading, figures in figure_sections(page):
        parts.append(f"<h3>{escape(heading)}</h3><div class='grid'>")
        parts += [_html_figure(page, name, path) for name, path in figures]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def html_escape(text) -> str:
    return _escape(str(text), quote=True)


def _badge(verdict: str) -> str:
    return f"<span class='verdict {verdict.replace(' ', '-')}'>{html_escape(verdict)}</span>"


def html_table(columns: dict, rows: list[dict]) -> str:
    head = "".join(f"<th>{html_escape(spec[0])}</th>" for spec in columns.values())
    body = []
    for row in rows:
        cells = []
        for key in columns:
            text = html_escape(cell(key, row[key], columns))
            cells.append(f"<td>{_badge(row[key]) if key == 'verdict' else text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_figure(page: Page, name: str, path: str | None) -> str:
    if path is None:
        return f"<p class='missing'>{html_escape(missing_note(name))}</p>"
    data = base64.b64encode((page.out_dir / path).read_bytes()).decode("ascii")
    caption = html_escape(FIGURE_CAPTIONS[name])
    return (
        f"<figure><a href='{html_escape(path)}'><img src='data:image/png;base64,{data}' "
        f"alt='{caption}'></a><figcaption>{caption}</figcaption></figure>"
    )
