"""Every figure cifarlab draws, as PNG files, from arrays and histories (headless, no display).

Figures name classes by their names, never their numbers, and work for any number of classes.
Each function takes what it draws plus the path to write, and returns that path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from cifarlab.files import atomic_path

DPI = 110  # Sharp enough to read on a laptop screen, small enough to embed in the report.
LOSS_LABEL = "Categorical cross-entropy loss"
TRAIN_STYLE = {"linestyle": "-", "marker": "o", "markersize": 3}
VAL_STYLE = {"linestyle": "--", "marker": "s", "markersize": 3}


def _subplots(*grid: int, figsize: tuple[float, float], **options):
    """A figure and its axes without pyplot: no global state, no display, safe in threads.

    Figures returned to a notebook still show inline, since Jupyter displays `Figure` objects.
    """
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **options)


def _save(figure: Figure, path: Path) -> Path:
    """Write `figure` to `path` whole or not at all: a figure that exists counts as drawn, so a
    kill mid-write must not leave half of one."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as partial:
        figure.savefig(partial, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def class_colours(num_classes: int) -> list:
    """Distinct colours, one per class: tab10 or tab20 where they suffice, else a spread."""
    if num_classes <= 10:
        return [matplotlib.colormaps["tab10"](index) for index in range(num_classes)]
    if num_classes <= 20:
        return [matplotlib.colormaps["tab20"](index) for index in range(num_classes)]
    return [matplotlib.colormaps["turbo"](value) for value in np.linspace(0.05, 0.95, num_classes)]


def curves(history: list[dict], best_epoch: int, path: Path, title: str = "") -> Path:
    """Accuracy and loss, training vs validation per epoch, the saved checkpoint's epoch marked."""
    return _save(curves_figure(history, best_epoch, title), path)


def curves_figure(history: list[dict], best_epoch: int, title: str = "") -> Figure:
    """The figure `curves` saves: the notebook's `plot_curve` with the loss named correctly."""
    epochs = np.arange(1, len(history) + 1)
    figure, axes = _subplots(1, 2, figsize=(11, 4))
    for axis, metric, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", LOSS_LABEL)):
        axis.plot(epochs, [row[metric] for row in history], label="Training", **TRAIN_STYLE)
        axis.plot(
            epochs, [row[f"val_{metric}"] for row in history], label="Validation", **VAL_STYLE
        )
        if best_epoch:
            axis.axvline(
                best_epoch,
                color="grey",
                linestyle=":",
                label=f"Saved checkpoint (epoch {best_epoch})",
            )
        axis.set_xlabel("Epoch")
        axis.set_ylabel(label)
        axis.set_title(label.split()[-1].capitalize() if metric == "loss" else label)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    return figure


def compare(histories: dict[str, list[dict]], metric: str, path: Path) -> Path:
    """All runs' training (solid) and validation (dashed) curves of `metric`, overlaid."""
    figure, axis = _subplots(figsize=(8, 5))
    colours = matplotlib.colormaps["tab10"]
    for index, (name, history) in enumerate(histories.items()):
        epochs = np.arange(1, len(history) + 1)
        colour = colours(index % 10)
        axis.plot(
            epochs,
            [row[metric] for row in history],
            color=colour,
            label=f"{name} (training)",
            **TRAIN_STYLE,
        )
        axis.plot(
            epochs,
            [row[f"val_{metric}"] for row in history],
            color=colour,
            label=f"{name} (validation)",
            **VAL_STYLE,
        )
    label = LOSS_LABEL if metric == "loss" else "Accuracy"
    if metric == "loss":
        # A log axis keeps every run readable when one diverges to losses many times the rest.
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        label += " (log scale)"
    axis.set(xlabel="Epoch", ylabel=label, title=f"{label}: all runs")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def confusion(matrix, class_names, path: Path) -> Path:
    """Row-normalized confusion matrix heat-map (rows: true class), each cell with its count."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = max(5.0, 0.55 * len(class_names) + 2)
    figure, axis = _subplots(figsize=(size + 1, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="Share of the true class")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="Predicted class", ylabel="True class", title="Confusion matrix (test set)")
    if len(class_names) <= 20:  # Beyond that the numbers no longer fit their cells.
        for row, column in np.ndindex(matrix.shape):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axis.text(
                column,
                row,
                f"{matrix[row, column]}",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    return _save(figure, path)


def per_class(scores: dict[str, dict], path: Path) -> Path:
    """Per-class precision and recall as grouped bars, classes by name."""
    names = list(scores)
    positions = np.arange(len(names))
    figure, axis = _subplots(figsize=(max(7.0, 0.6 * len(names) + 2), 4.5))
    width = 0.4
    for offset, metric in ((-width / 2, "precision"), (width / 2, "recall")):
        axis.bar(
            positions + offset,
            [scores[name][metric] for name in names],
            width,
            label=metric.capitalize(),
        )
    axis.set_xticks(positions, names, rotation=45, ha="right")
    axis.set(ylim=(0, 1.05), ylabel="Score", title="Precision and recall per class (test set)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    return _save(figure, path)


def image_grid(images, titles: list[str], path: Path, columns: int = 5, title: str = "") -> Path:
    """uint8 images in a grid, each under its title; shared by samples, errors and augmentation."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = _subplots(rows, columns, figsize=(2.2 * columns, 2.7 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index], interpolation="nearest")
            axis.set_title(titles[index], fontsize=9)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def samples(images, labels, class_names, path: Path, count: int = 10) -> Path:
    """`count` training images in 2 rows, one class each where possible, named by class."""
    chosen = distinct_class_indices(labels, count)
    titles = [class_names[labels[index]] for index in chosen]
    return image_grid(
        images[chosen], titles, path, columns=int(np.ceil(count / 2)), title="Training images"
    )


def distinct_class_indices(labels, count: int) -> list[int]:
    """The first image of each class in turn, topped up in order when there are fewer classes."""
    labels = np.asarray(labels)
    firsts = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)][:count]
    rest = [index for index in range(len(labels)) if index not in set(firsts)]
    return (firsts + rest)[:count]


def errors(images, labels, probabilities, class_names, path: Path, count: int = 15) -> Path:
    """The test set's most confident mistakes: image, true class, predicted class, probability."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    if len(chosen) == 0:
        figure, axis = _subplots(figsize=(5, 2))
        axis.axis("off")
        axis.text(0.5, 0.5, "No mistakes on the test set.", ha="center", va="center")
        return _save(figure, path)
    titles = [
        f"true: {class_names[labels[index]]}\npredicted: {class_names[predicted[index]]}\n"
        f"p = {confidence[index]:.2f}"
        for index in chosen
    ]
    return image_grid(images[chosen], titles, path, title="Most confident mistakes (test set)")


def project(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Features projected to 2-D by PCA or t-SNE (scikit-learn)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(features) - 1) / 3)  # t-SNE needs perplexity < samples.
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(features)
    raise ValueError(f"Unknown projection '{method}'; choose pca or tsne.")


def features(points: np.ndarray, labels, class_names, path: Path, method: str = "pca") -> Path:
    """2-D projected features, one colour per class, with a legend of class names."""
    figure, axis = _subplots(figsize=(8, 6.5))
    for index, (name, colour) in enumerate(
        zip(class_names, class_colours(len(class_names)), strict=True)
    ):
        chosen = np.asarray(labels) == index
        axis.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, color=colour, label=name)
    first, second = ("PC 1", "PC 2") if method == "pca" else ("t-SNE 1", "t-SNE 2")
    axis.set(
        xlabel=first,
        ylabel=second,
        title=f"Penultimate-layer features of test images ({method.upper()})",
    )
    axis.legend(
        markerscale=2.5,
        fontsize=8,
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
        ncol=1 if len(class_names) <= 25 else 2,
    )
    return _save(figure, path)
