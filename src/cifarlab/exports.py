"""`cifarlab export`: a run's model in a format other programs run, checked in that runtime.

    cifarlab export runs/baseline --format onnx --out baseline.onnx

The exported model takes what `predict` and the page take, uint8 RGB pixels of shape
(N, size, size, 3), and returns class probabilities computed exactly as evaluation computes
them: scaled to [0, 1] inside the model, and averaged over the mirror image and the shifted
copies where the run's recipe does that at test time. A bfloat16 run is exported in float32
(tf2onnx and LiteRT convert float32 graphs), from the same weights.

After writing, the export is loaded in its own runtime (ONNX Runtime, the LiteRT interpreter,
`tf.saved_model.load`) and its probabilities on the first `CHECK_IMAGES` test images of the
run's data are compared with the Keras model's: an export further than `TOLERANCE` from it is
removed and the command fails. What the export needs to be used (its input, class names,
source) is written into it as metadata: ONNX's metadata properties, `cifarlab.json` inside a
SavedModel folder, and `PATH.json` beside a LiteRT file.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from cifarlab import prediction
from cifarlab.errors import RunError, UserError
from cifarlab.exported import INPUT_NAME, METADATA_KEY, OnnxModel

FORMATS = ("onnx", "saved_model", "litert")
SUFFIXES = {"onnx": ".onnx", "saved_model": "", "litert": ".tflite"}
CHECK_IMAGES = 256
# Largest absolute difference in any class probability between the export and the Keras model
# (float32 both; the runtimes order their sums differently, about 1e-7 apart on this CPU).
TOLERANCE = 1e-4


@dataclass
class Export:
    """What `export` wrote and how closely it agrees with the Keras model."""

    path: Path
    format: str
    largest_difference: float
    images_checked: int
    metadata: dict

    def summary(self) -> str:
        return (
            f"Exported {self.metadata['source']} as {self.format} to {self.path}: its "
            f"probabilities on {self.images_checked} test images are within "
            f"{self.largest_difference:.1e} of the Keras model's (tolerance {TOLERANCE:.0e})."
        )


def export(classifier: prediction.Classifier, images: np.ndarray, format: str,
           out: Path) -> Export:  # fmt: skip
    """Write `classifier` to `out` in `format`, then check it on `images` (uint8) in its own
    runtime. Nothing is left at `out` unless the check passes."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}.")
    if out.exists():
        raise UserError(f"{out} already exists; name a new path with --out.")
    model = inference_model(classifier)
    metadata = describe(classifier)
    checked = np.asarray(images[:CHECK_IMAGES], np.uint8)
    expected = np.asarray(model.predict_on_batch(checked), np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        written = Path(scratch) / (out.name or "model")
        try:
            WRITERS[format](model, written, metadata)
            found = RUNNERS[format](written, checked)
        except (UserError, RunError):
            raise
        except Exception as error:  # The converters raise many kinds; one sentence says which.
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            message = f"The {format} export failed ({reason}), so nothing was written."
            raise RunError(message) from error
        difference = float(np.max(np.abs(found - expected)))
        if not difference <= TOLERANCE:  # Also refuses NaN.
            raise RunError(
                f"The {format} export's probabilities differ from the Keras model's by up to "
                f"{difference:.2e} on {len(checked)} test images (tolerance {TOLERANCE:.0e}), "
                "so nothing was written."
            )
        written.rename(out)
        if format == "litert":
            Path(scratch, written.name + ".json").rename(out.with_name(out.name + ".json"))
    return Export(out, format, difference, len(checked), metadata)


def describe(classifier: prediction.Classifier) -> dict:
    """What a program needs to use the export: its input, outputs and origin."""
    size = classifier.image_size
    return {
        "source": str(classifier.run_dir or classifier.name),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, size, size, 3],
                  "layout": "RGB pixels 0-255, scaled to [0, 1] inside the model"},  # fmt: skip
        "output": "probabilities",
        "class_names": list(classifier.class_names),
        "test_time_flip": classifier.test_time_flip,
        "test_time_shift": classifier.test_time_shift,
        "experiment": classifier.metrics.get("experiment"),
        "accuracy": classifier.accuracy,
        "verdict": classifier.verdict,
    }  # fmt: skip


def inference_model(classifier: prediction.Classifier) -> keras.Model:
    """uint8 pixels in, float32 probabilities out, as `evaluation.predict_probabilities`."""
    network = float32_copy(classifier.model)
    size = classifier.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name=INPUT_NAME)
    scaled = keras.ops.cast(pixels, "float32") / 255.0

    def flipped(images):
        outputs = keras.ops.cast(network(images), "float32")
        if classifier.test_time_flip:
            mirrored = keras.ops.cast(network(keras.ops.flip(images, axis=2)), "float32")
            outputs = (outputs + mirrored) / 2
        return outputs

    probabilities = flipped(scaled)
    if classifier.test_time_shift:
        padded = keras.ops.pad(scaled, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        shifted = flipped(padded[:, :-2, :-2]) + flipped(padded[:, 2:, 2:])
        probabilities = probabilities / 2 + shifted / 4
    return keras.Model(pixels, probabilities, name="probabilities")


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` itself if it computes in float32, else the same network and weights in float32."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    try:
        copy = keras.models.clone_model(model, clone_function=in_float32)
        copy.set_weights(model.get_weights())
    except Exception as error:  # A user's model may not clone; say which and why.
        raise UserError(
            f"{model.name} computes in {model.dtype_policy.name} and could not be rebuilt in "
            f"float32 for export ({type(error).__name__}: {error})."
        ) from error
    return copy


# Writers: (inference model, path, metadata) -> None.


def _write_onnx(model: keras.Model, path: Path, metadata: dict) -> None:
    try:
        import onnx
    except ImportError as error:
        raise UserError(_missing("onnx", "onnx tf2onnx onnxruntime")) from error
    try:
        with warnings.catch_warnings():  # Keras's tf2onnx patch probes `np.object`.
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(path), format="onnx", verbose=False)
    except ImportError as error:
        raise UserError(_missing("onnx", "tf2onnx")) from error
    stored = onnx.load(str(path))
    onnx.helper.set_model_props(stored, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(stored, str(path))


def _write_saved_model(model: keras.Model, path: Path, metadata: dict) -> None:
    model.export(str(path), format="tf_saved_model", verbose=False)
    (path / "cifarlab.json").write_text(json.dumps(metadata, indent=1))


def _write_litert(model: keras.Model, path: Path, metadata: dict) -> None:
    # Keras converts through a SavedModel it writes itself.
    model.export(str(path), format="litert", verbose=False)
    path.with_name(path.name + ".json").write_text(json.dumps(metadata, indent=1))


# Runners: (path, uint8 images) -> probabilities, in the export's own runtime.


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    return OnnxModel(path).predict(images)


def _run_saved_model(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(images)), np.float32)


def _run_litert(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise UserError(_missing("litert", "ai-edge-litert")) from error
    interpreter = Interpreter(model_path=str(path))
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(target["index"]), np.float32)


WRITERS = {"onnx": _write_onnx, "saved_model": _write_saved_model, "litert": _write_litert}
RUNNERS = {"onnx": _run_onnx, "saved_model": _run_saved_model, "litert": _run_litert}


def _missing(format: str, packages: str) -> str:
    return (
        f"Exporting as {format} needs {packages}: pip install 'cifarlab[export]'."
    )
