"""Grad-CAM: correct gradients (finite differences, JAX vs TensorFlow), any dtype policy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cifarlab import config, grad_cam, models

RNG = np.random.default_rng(2)
IMAGES = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained_model(trained_run):
    return keras.models.load_model(trained_run / "best.keras")


def test_heat_maps_have_the_conv_grid_and_lie_in_unit_range(trained_model):
    probabilities, heat_maps = grad_cam.GradCam(trained_model)(IMAGES)
    # block2_conv2 works on 16×16 maps: one pooling halves the 32-pixel input.
    assert heat_maps.shape == (3, 16, 16) and heat_maps.dtype == np.float32
    assert heat_maps.min() >= 0 and np.isclose(heat_maps.max(axis=(1, 2)), 1).all()
    expected = trained_model.predict(IMAGES / 255.0, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_gradient_matches_finite_differences(trained_model):
    explainer = grad_cam.GradCam(trained_model)
    features = keras.ops.convert_to_numpy(explainer.features(IMAGES[:1] / 255.0)).astype(np.float64)
    one_hot = np.eye(10, dtype=np.float32)[[4]]
    gradients = np.asarray(explainer.gradients(features.astype(np.float32), one_hot))

    def score(values):
        outputs = explainer.head(values.astype(np.float32), training=False)
        return float(keras.ops.convert_to_numpy(outputs)[0, 4])

    # Check the three entries the score is most sensitive to by central differences, among those
    # that lead their 2×2 max-pooling window by more than the step (elsewhere there is a kink).
    checked = 0
    for flat in np.argsort(-np.abs(gradients).ravel()):
        index = np.unravel_index(flat, features.shape)
        _, row, column, channel = index
        window = features[0, row // 2 * 2 : row // 2 * 2 + 2, column // 2 * 2 : column // 2 * 2 + 2,
                          channel]  # fmt: skip
        if features[index] - np.sort(window.ravel())[-2] < 0.05:
            continue
        step = np.zeros_like(features)
        step[index] = 1e-2
        numeric = (score(features + step) - score(features - step)) / 2e-2
        assert numeric == pytest.approx(float(gradients[index]), rel=0.05, abs=1e-5)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


@pytest.mark.parametrize("experiment", ["baseline", "batchnorm"])
def test_mixed_precision_models_give_finite_float32_maps(experiment):
    model = models.build_model(config.experiment(experiment), 10, "mixed_bfloat16")
    probabilities, heat_maps = grad_cam.GradCam(model)(IMAGES, class_indices=[0, 1, 2])
    assert probabilities.dtype == heat_maps.dtype == np.float32
    assert np.isfinite(heat_maps).all() and heat_maps.shape == (3, 16, 16)


def test_overlay_is_a_readable_rgb_picture():
    heat_map = np.zeros((16, 16), np.float32)
    heat_map[:8] = 1.0
    picture = grad_cam.overlay(np.full((32, 32, 3), 128, np.uint8), heat_map)
    pixels = np.asarray(picture).astype(int)
    assert picture.size == (256, 256)
    # The jet colour map turns the hot top half red and the cold bottom half blue.
    assert pixels[:64, :, 0].mean() > pixels[:64, :, 2].mean()
    assert pixels[-64:, :, 2].mean() > pixels[-64:, :, 0].mean()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="compares JAX with this backend")
def test_jax_backend_gives_the_same_heat_maps(trained_run, trained_model, tmp_path):
    np.save(tmp_path / "images.npy", IMAGES)
    script = (
        "import json, sys, keras, numpy as np\n"
        "from cifarlab import grad_cam\n"
        f"model = keras.models.load_model({str(trained_run / 'best.keras')!r})\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        "_, maps = grad_cam.GradCam(model)(images)\n"
        "print(json.dumps([keras.backend.backend(), maps.tolist()]))\n"
    )
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run([sys.executable, "-c", script], env=environment,
                               capture_output=True, text=True, check=True)  # fmt: skip
    backend, jax_maps = json.loads(completed.stdout.strip().splitlines()[-1])
    _, here = grad_cam.GradCam(trained_model)(IMAGES)
    assert backend == "jax"
    np.testing.assert_allclose(np.array(jax_maps), here, atol=1e-4)
