"""Classify your own images with a trained run: top classes per image, optionally Grad-CAM.

A run folder or `.keras` file is run by Keras; an ONNX export (`cifarlab export`) by ONNX
Runtime alone, so that path imports neither Keras nor TensorFlow.

Images (JPEG, PNG, BMP, GIF, WebP, TIFF) are brought to the model's input by
`data.images.load` (centre crop to a square, Lanczos resize), decoded in parallel threads and
classified in batches. The threads share one `images.DecodeBudget`, so eight large images wait
for each other's memory rather than all decoding at once.

    cifarlab predict runs/baseline photos/ cat.jpg --top-k 3 --json
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cifarlab import run_folder
from cifarlab.config import Config
from cifarlab.data import images
from cifarlab.data.standard import CIFAR10_CLASSES
from cifarlab.errors import UserError
from cifarlab.exported import OnnxModel

if TYPE_CHECKING:
    import keras

CHUNK_SIZE = 512  # Images decoded and classified together; bounds memory for big folders.
DECODE_THREADS = 8  # Pillow releases the GIL while decoding, so threads overlap the work.


@dataclass
class Classifier:
    """A trained model with what it takes to use it: its class names, its input size, and
    whether its run averages each image's prediction with its mirror image's and shifted
    copies' (as `modern` does in evaluation, so predictions match the reported accuracy)."""

    model: keras.Model | OnnxModel
    class_names: tuple[str, ...]
    name: str
    run_dir: Path | None = None  # None for a model file outside a run folder.
    metrics: dict = field(default_factory=dict)
    metrics_problem: str | None = None  # Why its metrics file does not count, if it has one.
    test_time_flip: bool = False
    test_time_shift: bool = False

    @property
    def image_size(self) -> int:
        if isinstance(self.model, OnnxModel):
            return self.model.image_size
        return int(self.model.input_shape[1])

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracy per split ("train", "val", "test") where the run's metrics have it."""
        return {
            split: float(self.metrics[split]["accuracy"])
            for split in ("train", "val", "test")
            if isinstance(self.metrics.get(split), dict) and "accuracy" in self.metrics[split]
        }

    @property
    def verdict(self) -> str | None:
        """The run's diagnosis, where it was diagnosed."""
        diagnosis = self.metrics.get("diagnosis")
        verdict = diagnosis.get("verdict") if isinstance(diagnosis, dict) else None
        return str(verdict) if verdict is not None else None

    @property
    def explainable(self) -> bool:
        """Whether Grad-CAM can explain its predictions: it needs the Keras model's gradients."""
        return not isinstance(self.model, OnnxModel)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 images, exactly as evaluation computes."""
        if isinstance(self.model, OnnxModel):
            return self.model.predict(images)  # Its test-time averaging is inside the graph.
        from cifarlab import evaluation

        return evaluation.predict_probabilities(
            self.model, images, self.test_time_flip, self.test_time_shift
        )


@dataclass
class Prediction:
    """The top classes for one file, or why it could not be classified."""

    file: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        top = [
            {"class": c, "probability": p}
            for c, p in zip(self.classes, self.probabilities, strict=True)
        ]
        return {"file": self.file, "top": top}


def load_classifier(source: str | Path) -> Classifier:
    """The classifier in a run folder (its best checkpoint), a `.keras` file or an ONNX export:
    a run's own checkpoint brings the run's settings and class names, an export what it was
    exported with, any other file only its model."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; name a run folder or a .keras file.")
    if source.suffix == ".onnx":
        return _onnx_classifier(source)
    from cifarlab import models
    if source.is_dir():
        run_dir, model_path = source, source / run_folder.BEST_MODEL
    else:
        run_dir, model_path = run_folder.run_folder_of(source), source
    if not model_path.is_file():
        raise UserError(f"{source} is neither a trained run folder nor a .keras model file.")
    in_run = run_dir is not None and run_folder.holds_config(run_dir)
    config = run_folder.read_config(run_dir) if in_run else Config()
    try:
        model = models.load_model(model_path, config.model, compile=False)
    except UserError:
        raise  # The run's builder cannot be imported: already one clear sentence.
    except Exception as error:  # Keras raises many kinds for a file that is not a model.
        raise UserError(_not_a_model(model_path, error)) from error
    metrics, problem = {}, None
    if run_dir is not None and (run_dir / run_folder.METRICS).is_file():
        metrics, problem = run_folder.read_metrics(run_dir), run_folder.metrics_problem(run_dir)
    names = class_names(metrics, int(model.output_shape[-1]))
    name = run_dir.name if source.is_dir() else source.stem
    return Classifier(model, names, name, run_dir, metrics, problem, config.test_time_flip,
                      config.test_time_shift)  # fmt: skip


def _onnx_classifier(path: Path) -> Classifier:
    """An ONNX export with the run's class names, accuracies and verdict it carries."""
    model = OnnxModel(path)
    described = model.metadata
    metrics = {split: {"accuracy": accuracy}
               for split, accuracy in described.get("accuracy", {}).items()}  # fmt: skip
    metrics["experiment"] = described.get("experiment")
    if described.get("verdict") is not None:
        metrics["diagnosis"] = {"verdict": described["verdict"]}
    names = tuple(described["class_names"])
    return Classifier(model, names, path.stem, metrics=metrics)


def _not_a_model(model_path: Path, error: Exception) -> str:
    """Why `model_path` could not be loaded, in one sentence."""
    if not zipfile.is_zipfile(model_path):
        # Keras reports any .keras file that is not a zip archive as "File not found".
        return (
            f"{model_path} is not a Keras model file (Keras saves a zip archive; this is not "
            "one): train the run again or name another file."
        )
    return f"{model_path} is not a Keras model file ({error})."


def class_names(metrics: dict, num_classes: int) -> tuple[str, ...]:
    """The run's own class names; CIFAR-10's only for a 10-class model without metrics."""
    names = metrics.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return tuple(str(name) for name in names)
    if num_classes == len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(f"class {index}" for index in range(num_classes))


def predict(
    model_or_run: Classifier | str | Path, paths: list[str | Path], top_k: int = 3
) -> list[Prediction]:
    """The `top_k` classes of every image in `paths` (folders walked); failures included."""
    classifier = _as_classifier(model_or_run)
    return [prediction for prediction, _, _ in _classify(classifier, paths, top_k)]


def predict_with_overlays(
    classifier: Classifier, paths: list[str | Path], top_k: int, overlay_dir: Path | None = None
) -> Iterator[Prediction]:
    """`predict`, one file at a time, also saving a Grad-CAM overlay per image to `overlay_dir`."""
    saver = _OverlaySaver(overlay_dir, classifier) if overlay_dir else None
    for prediction, pixels, probabilities in _classify(classifier, paths, top_k):
        if saver and prediction.error is None:
            saver.save(prediction.file, pixels, int(probabilities.argmax()))
        yield prediction


def _as_classifier(model_or_run) -> Classifier:
    if isinstance(model_or_run, Classifier):
        return model_or_run
    import keras

    if isinstance(model_or_run, keras.Model):
        outputs = int(model_or_run.output_shape[-1])
        return Classifier(model_or_run, class_names({}, outputs), model_or_run.name)
    return load_classifier(model_or_run)


def check_top_k(top_k: int, classifier: Classifier) -> None:
    if not 1 <= top_k <= len(classifier.class_names):
        raise UserError(
            f"--top-k must lie between 1 and {len(classifier.class_names)}, not {top_k}."
        )


def _classify(classifier: Classifier, paths, top_k: int):
    """Yield (Prediction, pixels, probabilities) per file, in order, a chunk at a time."""
    check_top_k(top_k, classifier)
    files = images.image_files(paths)
    if not files:
        raise UserError("No image files were found in the paths given.")
    budget = images.DecodeBudget()
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start in range(0, len(files), CHUNK_SIZE):
            chunk = files[start : start + CHUNK_SIZE]
            decoded = list(
                pool.map(lambda path: _decode(path, classifier.image_size, budget), chunk)
            )
            good = [pixels for pixels in decoded if not isinstance(pixels, str)]
            if good:
                stacked = np.stack(good)
                all_probabilities = iter(classifier.probabilities(stacked))
            for path, pixels in zip(chunk, decoded, strict=True):
                if isinstance(pixels, str):
                    yield Prediction(str(path), error=pixels), None, None
                    continue
                probabilities = next(all_probabilities)
                yield (
                    top_classes(str(path), probabilities, classifier, top_k),
                    pixels,
                    probabilities,
                )


def _decode(path: Path, image_size: int, budget: images.DecodeBudget) -> np.ndarray | str:
    """The image's pixels, or the one-sentence reason it cannot be used."""
    try:
        return images.load(path, image_size, budget)
    except UserError as error:
        return str(error)


def top_classes(file: str, probabilities: np.ndarray, classifier: Classifier, top_k: int):
    """The `top_k` most probable classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return Prediction(
        file,
        [classifier.class_names[index] for index in order],
        [round(float(probabilities[index]), 6) for index in order],
    )


def table_row(prediction: Prediction, header: bool) -> str:
    """One line of `cifarlab predict`'s table (with the heading line above it if `header`)."""
    pairs = zip(prediction.classes, prediction.probabilities, strict=True)
    cells = [f"{name} {probability:6.1%}" for name, probability in pairs]
    row = f"{prediction.file:<40} " + "  ".join(f"{cell:<20}" for cell in cells)
    if not header:
        return row.rstrip()
    titles = "  ".join(f"{f'top-{rank}':<20}" for rank in range(1, len(cells) + 1))
    return f"{'file':<40} {titles}".rstrip() + "\n" + row.rstrip()


class _OverlaySaver:
    """Writes one Grad-CAM overlay PNG per classified image into a folder."""

    def __init__(self, folder: Path, classifier: Classifier):
        if not classifier.explainable:
            raise UserError(
                f"Grad-CAM needs the Keras model, which {classifier.name}'s ONNX export does not "
                "hold; name its run folder to use --explain."
            )
        from cifarlab import grad_cam

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.grad_cam = grad_cam.GradCam(classifier.model)
        self.overlay = grad_cam.overlay
        self.used: set[str] = set()

    def save(self, file: str, pixels: np.ndarray, class_index: int) -> None:
        _, heat_maps = self.grad_cam(pixels[None], [class_index])
        name = f"{Path(file).stem}.gradcam.png"
        counter = 2
        while name in self.used:
            name, counter = f"{Path(file).stem}-{counter}.gradcam.png", counter + 1
        self.used.add(name)
        self.overlay(pixels, heat_maps[0]).save(self.folder / name)
