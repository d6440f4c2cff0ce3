"""`cifarlab export`: every format loads in its own runtime and agrees with the Keras model."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from cifarlab import evaluation, prediction
from cifarlab import exports as exporting
from cifarlab.data import dataset
from cifarlab.errors import RunError, UserError
from cifarlab.exported import METADATA_KEY, OnnxModel

RNG = np.random.default_rng(3)


def _runtime_probabilities(format: str, path, images: np.ndarray) -> np.ndarray:
    """The export's probabilities, computed here in its own runtime, apart from the command."""
    if format == "onnx":
        return OnnxModel(path).predict(images)
    if format == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # Held: its functions refer to its variables.
        return np.asarray(loaded.serve(tf.constant(images)))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(target["index"])


def _metadata(format: str, path) -> dict:
    if format == "onnx":
        return OnnxModel(path).metadata
    if format == "saved_model":
        return json.loads((path / "cifarlab.json").read_text())
    return json.loads(path.with_name(path.name + ".json").read_text())


@pytest.mark.parametrize("format", ["onnx", "saved_model", "litert"])
def test_each_format_takes_uint8_pixels_and_gives_the_checkpoints_probabilities(
    trained_run, tiny_archive, tmp_path, format
):
    out = tmp_path / f"model{exporting.SUFFIXES[format]}"
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", "export", str(trained_run), "--format", format,
         "--out", str(out), "--data", str(tiny_archive)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"as {format} to {out}" in done.stdout and "40 test images" in done.stdout
    images = dataset.load(tiny_archive).x_test
    expected = prediction.load_classifier(trained_run).probabilities(images)
    found = _runtime_probabilities(format, out, images)
    assert found.shape == (40, 10)
    assert np.max(np.abs(found - expected)) <= exporting.TOLERANCE
    # Not everything agrees trivially: the classes differ in probability.
    assert np.ptp(expected, axis=0).max() > 1e-3
    metadata = _metadata(format, out)
    assert metadata["input"]["dtype"] == "uint8" and metadata["input"]["shape"] == [None, 32, 32, 3]
    assert metadata["class_names"][:2] == ["airplane", "automobile"]
    assert metadata["source"] == str(trained_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name] + ([out.name + ".json"] if format == "litert" else [])
    )


@pytest.mark.parametrize(("flip", "shift"), [(True, False), (True, True)])
def test_the_export_averages_over_test_time_augmentation_as_evaluation_does(
    trained_run, flip, shift
):
    classifier = prediction.load_classifier(trained_run)
    classifier.test_time_flip, classifier.test_time_shift = flip, shift
    images = RNG.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    expected = evaluation.predict_probabilities(classifier.model, images, flip, shift)
    plain = evaluation.predict_probabilities(classifier.model, images)
    found = np.asarray(exporting.inference_model(classifier).predict_on_batch(images))
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert np.max(np.abs(plain - expected)) > 1e-4  # The averaging changes the answer.


def test_a_bfloat16_network_is_exported_from_the_same_weights_in_float32():
    model = _small_network("mixed_bfloat16")
    copy = exporting.float32_copy(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for ours, theirs in zip(copy.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = RNG.random((8, 32, 32, 3)).astype(np.float32)
    exact = np.asarray(copy(images))
    np.testing.assert_allclose(exact, np.asarray(model(images), np.float32), atol=0.05)
    assert exporting.float32_copy(copy) is copy


def test_an_export_that_disagrees_with_the_keras_model_is_not_left_behind(tmp_path):
    classifier = prediction.Classifier(_small_network("float32", noisy=True), ("a", "b"), "noisy")
    out = tmp_path / "noisy"
    images = RNG.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(RunError, match="differ from the Keras model's by up to"):
        exporting.export(classifier, images, "saved_model", out)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_out_path_is_refused_before_anything_loads(trained_run, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", "export", str(trained_run), "--format", "onnx",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"cifarlab: {out} already exists; name a new path with --out."
    assert out.read_bytes() == b"keep me"


def test_an_onnx_file_without_cifarlabs_metadata_is_refused_in_one_sentence(trained_run,
                                                                            tmp_path):  # fmt: skip
    import onnx

    out = tmp_path / "model.onnx"
    classifier = prediction.load_classifier(trained_run)
    images = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    exporting.export(classifier, images, "onnx", out)
    stored = onnx.load(str(out))
    assert [p.key for p in stored.metadata_props] == [METADATA_KEY]
    del stored.metadata_props[:]
    onnx.save(stored, str(out))
    with pytest.raises(UserError, match="without cifarlab's metadata"):
        OnnxModel(out)
    out.write_bytes(b"not a model")
    with pytest.raises(UserError, match="is not an ONNX model"):
        OnnxModel(out)


class _Noise(keras.layers.Layer):
    """Adds fresh noise at every call, so no two runs of the model agree."""

    def call(self, inputs):
        return inputs + keras.random.uniform(keras.ops.shape(inputs))


def _small_network(policy: str, noisy: bool = False) -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, dtype=policy)(inputs)
    x = keras.layers.GlobalAveragePooling2D(dtype=policy)(x)
    if noisy:
        x = _Noise(name="noise")(x)
    outputs = keras.layers.Dense(2, activation="softmax", dtype=policy)(x)
    return keras.Model(inputs, outputs)


# Run in a fresh interpreter where Keras and TensorFlow cannot be imported, as after
# `pip install cifarlab[onnx]`: predict and the HTTP API classify with ONNX Runtime alone.
WITHOUT_TENSORFLOW = """
import importlib.abc, io, json, sys

class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow", "jax", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Uninstalled())
from fastapi.testclient import TestClient
from cifarlab import cli
from cifarlab.serve import app

onnx_file, image = sys.argv[1:]
assert cli.main(["predict", onnx_file, image, "--json", "--top-k", "2"]) == 0
assert cli.main(["predict", onnx_file, image, "--explain", onnx_file + ".overlays"]) == 2
client = TestClient(app.create_app([onnx_file]))
[run] = client.get("/api/runs").json()
with open(image, "rb") as handle:
    answer = client.post("/api/predict", files={"image": ("x.png", handle, "image/png")}).json()
print(json.dumps({"run": run, "answer": answer}))
"""


def test_predict_and_serve_run_an_onnx_export_without_tensorflow(trained_run, tiny_archive,
                                                                 tmp_path):  # fmt: skip
    from PIL import Image

    out = tmp_path / "baseline.onnx"
    data = dataset.load(tiny_archive)
    exporting.export(prediction.load_classifier(trained_run), data.x_test, "onnx", out)
    Image.fromarray(data.x_test[0]).save(tmp_path / "first.png")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(out), str(tmp_path / "first.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("cifarlab:")]
    assert said == [
        "cifarlab: Grad-CAM needs the Keras model, which baseline's ONNX export does not hold; "
        "name its run folder to use --explain."
    ]
    printed, served = done.stdout.strip().splitlines()[-2:]
    expected = prediction.load_classifier(trained_run).probabilities(data.x_test[:1])[0]
    best = CLASS_NAMES[int(expected.argmax())]
    assert json.loads(printed)["top"][0]["class"] == best
    result = json.loads(served)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert result["run"]["name"] == "baseline" and result["run"]["experiment"] == "baseline"
    assert result["run"]["accuracy"]["test"] == pytest.approx(metrics["test"]["accuracy"])
    assert result["answer"]["predictions"][0]["class_name"] == best
    assert result["answer"]["predictions"][0]["probability"] == pytest.approx(
        float(expected.max()), abs=1e-4
    )
    assert result["answer"]["heatmap_png"] is None


CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip
