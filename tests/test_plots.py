"""Figures for a dataset that is not CIFAR-10: any number of classes, named by their names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cifarlab.report import plots

CLASS_NAMES = ("daisy", "rose", "tulip")


def decoded(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32)


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASS_NAMES)), 12)
    logits = rng.normal(size=(len(labels), len(CLASS_NAMES))) + 2 * np.eye(3)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return images, labels, probabilities


def test_confusion_and_per_class_figures_take_any_classes(predictions, tmp_path):
    _, labels, probabilities = predictions
    matrix = np.zeros((3, 3), dtype=int)
    np.add.at(matrix, (labels, probabilities.argmax(axis=1)), 1)
    scores = {name: {"precision": 0.5 + 0.1 * index, "recall": 0.6}
              for index, name in enumerate(CLASS_NAMES)}  # fmt: skip
    for path in (plots.confusion(matrix, CLASS_NAMES, tmp_path / "confusion.png"),
                 plots.per_class(scores, tmp_path / "per_class.png")):  # fmt: skip
        assert decoded(path).std() > 5.0


def test_errors_shows_the_most_confident_mistakes_or_says_there_are_none(predictions, tmp_path):
    images, labels, probabilities = predictions
    path = plots.errors(images, labels, probabilities, CLASS_NAMES, tmp_path / "errors.png")
    assert decoded(path).std() > 5.0
    perfect = np.eye(3)[labels]
    path = plots.errors(images, labels, perfect, CLASS_NAMES, tmp_path / "none.png")
    assert decoded(path).std() > 1.0  # A line of text on white.


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_feature_projection_gives_one_point_per_image(predictions, method, tmp_path):
    _, labels, _ = predictions
    features = np.random.default_rng(1).normal(size=(len(labels), 512)).astype(np.float32)
    points = plots.project(features + 3 * labels[:, None], method)
    assert points.shape == (len(labels), 2) and np.isfinite(points).all()
    path = plots.features(points, labels, CLASS_NAMES, tmp_path / "features.png", method)
    assert decoded(path).std() > 5.0


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="choose pca or tsne"):
        plots.project(np.zeros((4, 8)), "umap")


def test_samples_show_one_image_per_class_first():
    labels = np.array([2, 2, 0, 2, 1, 0])
    assert plots.distinct_class_indices(labels, 4) == [2, 4, 0, 1]
