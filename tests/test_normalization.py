"""FusedBatchNormalization is Keras's BatchNormalization, in TensorFlow's fused kernel for 16-bit
inputs: the same outputs, gradients and moving averages, and a model file that loads back."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifarlab import config, models
from cifarlab.models.normalization import FusedBatchNormalization

SHAPES = [(8, 5, 5, 6), (16, 6)]  # Convolution maps, and a dense layer's features.
VARIANTS = [{}, {"scale": False}, {"center": False, "scale": False}]


def pair(policy: str, shape: tuple, options: dict, seed: int):
    """Keras's layer and ours with the same random weights, built for `shape`."""
    rng = np.random.default_rng(seed)
    theirs = keras.layers.BatchNormalization(momentum=0.8, dtype=policy, **options)
    ours = FusedBatchNormalization(momentum=0.8, dtype=policy, **options)
    for layer in (theirs, ours):
        layer.build(shape)
    for weight in theirs.weights:
        weight.assign(rng.normal(1, 0.5, weight.shape) if not weight.trainable else
                      rng.normal(size=weight.shape))  # fmt: skip
    ours.set_weights(theirs.get_weights())
    inputs = tf.constant((rng.normal(size=shape) * 3 + 1).astype("float32"))
    return theirs, ours, inputs


def step(layer, inputs):
    """Training-mode outputs, and the gradients of a loss with respect to inputs and weights."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, "float32") ** 2)
    return outputs, tape.gradient(loss, [inputs, *layer.trainable_weights])


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", VARIANTS)
def test_the_layer_computes_what_keras_batch_normalization_computes(policy, shape, options):
    theirs, ours, inputs = pair(policy, shape, options, seed=len(shape) + len(options))
    expected, expected_gradients = step(theirs, inputs)
    outputs, gradients = step(ours, inputs)
    assert outputs.dtype == expected.dtype
    np.testing.assert_allclose(np.float32(outputs), np.float32(expected), atol=1e-5)
    for got, want in zip(gradients, expected_gradients, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-3)
    # The moving averages of Keras's biased batch variance, not the kernel's unbiased one.
    for got, want in zip(ours.non_trainable_weights, theirs.non_trainable_weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.float32(ours(inputs)), np.float32(theirs(inputs)), atol=1e-5)


def fused_ops(layer, inputs, training: bool) -> list[str]:
    graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(inputs).graph
    return [op.type for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]


@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_runs_in_the_fused_kernel_and_float32_in_keras_own_code(training):
    for shape in SHAPES:
        _, ours, inputs = pair("mixed_bfloat16", shape, {}, seed=0)
        assert fused_ops(ours, inputs, training) == ["FusedBatchNormV3"]
        _, ours, inputs = pair("float32", shape, {}, seed=0)
        assert fused_ops(ours, inputs, training) == []


def test_an_epsilon_the_kernel_would_raise_keeps_keras_own_code():
    layer = FusedBatchNormalization(epsilon=1e-6, dtype="mixed_bfloat16")
    inputs = tf.zeros(SHAPES[0])
    layer.build(SHAPES[0])
    assert fused_ops(layer, inputs, training=True) == []


def test_a_frozen_layer_normalizes_with_its_moving_averages():
    theirs, ours, inputs = pair("mixed_bfloat16", SHAPES[0], {}, seed=1)
    theirs.trainable = ours.trainable = False
    before = [weight.numpy() for weight in ours.weights]
    np.testing.assert_allclose(np.float32(ours(inputs, training=True)),
                               np.float32(theirs(inputs, training=True)), atol=1e-5)  # fmt: skip
    for weight, value in zip(ours.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_a_saved_network_loads_back_with_the_same_layer_and_predictions(tmp_path):
    model = models.build_model(config.BATCHNORM, 10, "mixed_bfloat16")
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.get_layer("block1_conv1_bn"), FusedBatchNormalization)
    expected = model.predict(images, verbose=0)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
