"""The report's two pages, Markdown and HTML, rendered from Jinja2 templates.

Both lead with the results table, then (for repeated runs) the statistics across seeds, then
the diagnosis (rules with thresholds, each run's verdict with its numbers, the comparison
sentences), then the figures. The HTML is one self-contained file: the CSS of `report.css` and
the PNGs embedded as data, each linking to its file beside it. HTML is autoescaped.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab import diagnosis, run_folder
from cifarlab.report import rendering
from cifarlab.report.rendering import results_columns, table
from cifarlab.scale import statistics
from cifarlab.views import Run

DIAGNOSIS_COLUMNS = {  # Diagnosis number: (heading, format[, scale]).
    "experiment": ("Experiment", "{}"),
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
FIGURE_CAPTIONS = {
    run_folder.COMPARE_LOSS: "Loss of every run: training solid, validation dashed.",
    run_folder.COMPARE_ACCURACY: "Accuracy of every run: training solid, validation dashed.",
    run_folder.SAMPLES: "Training images with their class names.",
    run_folder.AUGMENTATION: "One training image and augmented versions of it, as training sees.",
    run_folder.CURVES: "Accuracy and loss per epoch; the dotted line marks the saved checkpoint.",
    run_folder.CONFUSION: "Confusion matrix on the test set, each row normalized, with counts.",
    run_folder.PER_CLASS: "Precision and recall per class on the test set.",
    run_folder.ERRORS: "The test images the model got wrong most confidently.",
    run_folder.FEATURES: "Penultimate-layer features of test images, projected to 2-D.",
}
STUDY_FIGURES = (
    run_folder.COMPARE_LOSS, run_folder.COMPARE_ACCURACY, run_folder.SAMPLES,
    run_folder.AUGMENTATION,
)  # fmt: skip
SCORES_NOTE = (
    "Scores are those of each run's saved checkpoint (its epoch of lowest validation loss), "
    "evaluated in inference mode: without dropout or augmentation, and with batch normalization "
    "using its running averages. The diagnosis instead reads the per-epoch curves recorded "
    "during training, in training mode, so a run's train loss here and in the diagnosis can "
    "differ widely (most for batch-normalized runs evaluated early in training); both are "
    "correct. Timings are wall-clock on the hardware below, shared or not."
)
DIAGNOSIS_NOTE = (
    "Read from the per-epoch history. Accuracy gap: training minus validation accuracy, in "
    "percentage points (pt); loss gap: validation minus training loss; 'best' is the epoch of "
    "minimum validation loss. Roughness: the mean epoch-to-epoch change beyond the curve's "
    "trend, zero for a curve that only falls."
)
CSS = (Path(__file__).parent / "report.css").read_text()


@dataclass
class Page:
    """Everything one report page shows."""

    runs: list[Run]  # In report order.
    labels: list[str]  # How the page names each run.
    rows: list[dict]
    comparisons: list[dict]
    out_dir: Path
    rules: list[str]
    summary: list[dict] = field(default_factory=list)  # Across seeds; empty without repeats.
    differences: list[str] = field(default_factory=list)  # Experiments compared across seeds.

    @property
    def title(self) -> str:
        return "cifarlab study: " + ", ".join(dict.fromkeys(run.name for run in self.runs))

    @property
    def columns(self) -> dict:
        return results_columns(repeated=bool(self.summary))


def diagnosis_rows(page: Page) -> list[dict]:
    """One row per run of the diagnosis table: its numbers, by `DIAGNOSIS_COLUMNS` key."""
    return [
        {"experiment": label, **{key: _nested(run.diagnosis, key) for key in DIAGNOSIS_COLUMNS
                                 if key != "experiment"}}
        for label, run in zip(page.labels, page.runs, strict=True)
    ]  # fmt: skip


def _nested(values: dict, key: str):
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def context_lines(page: Page) -> list[tuple[str, str]]:
    """(label, text) pairs stating data source, split, seed, hardware, backend and versions."""
    first = page.runs[0]
    environment = first.environment
    hardware = sorted({hardware_line(run.environment) for run in page.runs})
    versions = ", ".join(
        f"{name} {version}" for name, version in environment.get("versions", {}).items()
    )
    seeds = sorted({str(run.config.seed) for run in page.runs})
    classes = first.metrics["class_names"]
    return [
        ("Data", f"{environment.get('data', 'unknown')} ({first.metrics.get('dataset', '')}, "
                 f"{len(classes)} classes: {', '.join(classes)})"),
        ("Split", f"{_held_out(first.config)} held out for validation; the test set is "
                  "used only for the final scores"),
        ("Seed", ", ".join(seeds)),
        ("Hardware", "; ".join(hardware)),
        ("Versions", versions or "unknown"),
    ]  # fmt: skip


def _held_out(config) -> str:
    share = f"{config.val_fraction:.0%} of the training images"
    return f"{share}, at most {config.max_val_images:,}," if config.max_val_images else share


def hardware_line(environment: dict) -> str:
    if not environment:
        return "unknown"
    device = (
        environment.get("gpu") or f"{environment.get('cpu')} ({environment.get('cpu_count')} cores)"
    )
    return (
        f"{device}, {environment.get('platform', '')}; backend {environment.get('backend')}, "
        f"precision {environment.get('precision')}"
        + (f" ({environment['precision_reason']})" if environment.get("precision_reason") else "")
    )


def figure_sections(page: Page) -> list[dict]:
    """The study's figures, then each run's, with relative paths and their URLs (None where
    missing)."""

    def figure(folder: Path, name: str) -> dict:
        path = Path(folder) / name
        relative = Path(os.path.relpath(path, page.out_dir)).as_posix() if path.is_file() else None
        # The link is a URL: each segment percent-encoded, so a run folder named `base#1?x`
        # links to its own file rather than to `base` with a fragment.
        url = urllib.parse.quote(relative, safe="/") if relative else None
        return {"name": name, "path": relative, "url": url, "caption": FIGURE_CAPTIONS[name],
                "missing": f"{name} is missing: `cifarlab study` draws it after training "
                           "(it needs the images)."}  # fmt: skip

    study = [
        figure(page.out_dir, name)
        for name in STUDY_FIGURES
        if name.startswith("compare") or (page.out_dir / name).is_file()
    ]
    sections = [{"heading": "All runs", "figures": study}]
    first_seeds: dict[str, int] = {}
    for label, run in zip(page.labels, page.runs, strict=True):
        names = list(run_folder.RUN_FIGURES)
        # A repeated study draws the figures that need the images for its first seed only.
        if first_seeds.setdefault(run.name, run.config.seed) != run.config.seed:
            names = [name for name in names if (run.path / name).is_file()]
        sections.append({"heading": label, "figures": [figure(run.path, n) for n in names]})
    return sections


def _context(page: Page) -> dict:
    verdicts = [
        {"label": label, "verdict": run.diagnosis.get("verdict", "not diagnosed"),
         "reasons": " ".join(run.diagnosis.get("reasons", []))}
        for label, run in zip(page.labels, page.runs, strict=True)
    ]  # fmt: skip
    return {
        "page": page,
        "context": context_lines(page),
        "results": table(page.columns, page.rows),
        "seeds": table(statistics.DISPLAY_COLUMNS, statistics.display_rows(page.summary)),
        "seeds_note": statistics.NOTE,
        "scores_note": SCORES_NOTE,
        "diagnosis": table(DIAGNOSIS_COLUMNS, diagnosis_rows(page)),
        "diagnosis_note": DIAGNOSIS_NOTE,
        "verdicts": verdicts,
        "comparisons": [
            {
                **entry,
                "mark": "against its base" if entry.get("kind") == "base" else entry["finding"],
            }
            for entry in page.comparisons
        ],
        "comparison_rules": diagnosis.comparison_rules(),
        "sections": figure_sections(page),
    }


def markdown(page: Page) -> str:
    """The report as Markdown, images linked by relative path."""
    text = rendering.environment(False).get_template("page.md.j2").render(_context(page))
    return text.rstrip() + "\n"


def html(page: Page) -> str:
    """The report as one self-contained, phone-friendly HTML page."""
    return rendering.environment(True).get_template("page.html.j2").render(_context(page), css=CSS)
