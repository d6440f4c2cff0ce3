"""The built-in networks: the notebook's CNN (step D) and its batch-normalized variant (step H)
as one builder, and the modern recipe's small residual network with its whitening layer.

    baseline, augmented: Conv 32 ×2 → MaxPool → Conv 64 ×2 → MaxPool → Flatten → Dense 512
                         → Dropout 0.5 → Dense softmax (2,168,362 parameters for CIFAR-10)
    batchnorm:           the same with every Conv and the Dense 512 bias-free, each followed by
                         BatchNormalization and then ReLU (2,170,474 parameters).
    modern:              whitening, then per block a convolution, pooling, batch normalization
                         and residual convolutions; global max-pooling (airbench's shape).

Each builder takes `(config, input_shape, num_classes, dtype_policy)` and sets the policy on
its own layers, so no global Keras setting is changed. Only `keras` and `keras.ops` are used.
"""

from __future__ import annotations

import keras
import numpy as np

from cifarlab.config import Config
from cifarlab.models.normalization import FusedBatchNormalization

CLASSIFIER_SCALE = 0.125  # residual_network's features scaled before its classifier (Page, 2018).


def notebook_network(
    config: Config, input_shape: tuple[int, int, int], num_classes: int, dtype_policy=None
) -> keras.Model:
    """The notebook's network, reshaped by the config's network settings."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for block, filters in enumerate(config.filters, start=1):
        for index in range(1, config.convs_per_block + 1):
            x = _conv_unit(x, filters, config.kernel_size, f"block{block}_conv{index}",
                           config.batch_norm, dtype_policy)  # fmt: skip
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool", dtype=dtype_policy)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype_policy)(x)
    x = _dense_unit(x, config.dense_units, config.batch_norm, dtype_policy)
    x = keras.layers.Dropout(config.dropout, name="dropout", dtype=dtype_policy)(x)
    # The output stays float32 under mixed precision, so softmax and the loss keep full range.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="predictions", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=config.name)


def _conv_unit(x, filters: int, kernel_size: int, name: str, batch_norm: bool, dtype_policy):
    # Either way the unit's ReLU output carries `name`.
    if not batch_norm:
        return keras.layers.Conv2D(filters, kernel_size, padding="same", activation="relu",
                                   name=name, dtype=dtype_policy)(x)  # fmt: skip
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                            name=f"{name}_linear", dtype=dtype_policy)(x)  # fmt: skip
    x = FusedBatchNormalization(name=f"{name}_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name=name, dtype=dtype_policy)(x)


def _dense_unit(x, units: int, batch_norm: bool, dtype_policy):
    if not batch_norm:
        return keras.layers.Dense(units, activation="relu", name="features", dtype=dtype_policy)(x)
    x = keras.layers.Dense(units, use_bias=False, name="features_linear", dtype=dtype_policy)(x)
    x = FusedBatchNormalization(name="features_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name="features", dtype=dtype_policy)(x)


@keras.saving.register_keras_serializable(package="cifarlab")
class PatchWhitening(keras.layers.Layer):
    """A fixed 2×2 convolution that whitens image patches (Page, 2018; Jordan, 2024): its
    filters are the eigenvectors of the training images' patch covariance, each scaled by its
    eigenvalue's inverse square root and paired with its negative, so the next layers see
    decorrelated, unit-variance inputs from the first step. `adapt(images)` computes them, as
    Keras's own `Normalization.adapt` does its statistics; only the bias is trained.

    `epsilon` is relative to the pixels' mean variance, as airbench's 5e-4 is to images it
    normalizes to unit variance per channel: the filters whiten images in [0, 1] as they would
    those images standardized, and scaling the images scales the filters inversely."""

    def __init__(self, patch_size: int = 2, epsilon: float = 5e-4, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.epsilon = patch_size, epsilon

    def build(self, input_shape):
        size, channels = self.patch_size, input_shape[-1]
        filters = 2 * size * size * channels
        self.kernel = self.add_weight(
            name="kernel", shape=(size, size, channels, filters), initializer="glorot_uniform",
            trainable=False,
        )  # fmt: skip
        self.bias = self.add_weight(name="bias", shape=(filters,), initializer="zeros")

    def adapt(self, images: np.ndarray) -> None:
        """Whiten for `images` (float, as the model sees them)."""
        size = self.patch_size
        images = np.asarray(images, dtype=np.float64)
        if not self.built:
            self.build(images.shape)
        windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
        # (images, rows, columns, channels, size, size) -> one row per patch, laid out as the
        # kernel's (size, size, channels) axes.
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * images.shape[-1])
        mean, covariance = patches.mean(axis=0), np.cov(patches, rowvar=False)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        epsilon = self.epsilon * np.trace(covariance) / len(covariance)
        filters = eigenvectors / np.sqrt(eigenvalues + epsilon)
        filters = np.concatenate([filters, -filters], axis=1)
        self.kernel.assign(filters.reshape(self.kernel.shape).astype("float32"))
        self.bias.assign((-mean @ filters).astype("float32"))  # Centred on the training images.

    def call(self, inputs):
        outputs = keras.ops.conv(inputs, keras.ops.cast(self.kernel, inputs.dtype))
        return outputs + keras.ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        size = self.patch_size
        rows, columns = (None if n is None else n - size + 1 for n in input_shape[1:3])
        return (input_shape[0], rows, columns, self.kernel.shape[-1])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "epsilon": self.epsilon}


def residual_network(
    config: Config, input_shape: tuple[int, int, int], num_classes: int, dtype_policy=None
) -> keras.Model:
    """A small residual network shaped for fast CIFAR-10 training (airbench, Jordan 2024): a
    whitening layer, then per entry of `filters` a convolution, max-pooling, batch
    normalization and ReLU, followed by `convs_per_block - 1` residual convolutions; global
    max-pooling and a linear classifier. Pooling comes before normalization so that it and
    the activation work on a quarter of the pixels."""

    def normalized(x, name):
        x = FusedBatchNormalization(momentum=0.9, scale=False, name=f"{name}_bn",
                                    dtype=dtype_policy)(x)  # fmt: skip
        return keras.layers.Activation("relu", name=f"{name}_relu", dtype=dtype_policy)(x)

    def convolution(x, filters, name):
        return keras.layers.Conv2D(filters, config.kernel_size, padding="same", use_bias=False,
                                   name=name, dtype=dtype_policy)(x)  # fmt: skip

    inputs = keras.Input(shape=input_shape, name="image")
    x = PatchWhitening(name="whitening", dtype=dtype_policy)(inputs)
    x = keras.layers.Activation("relu", name="whitening_relu", dtype=dtype_policy)(x)
    for block, filters in enumerate(config.filters, start=1):
        x = convolution(x, filters, f"block{block}_conv1")
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool", dtype=dtype_policy)(x)
        x = normalized(x, f"block{block}_conv1")
        for index in range(2, config.convs_per_block + 1):
            residual = normalized(convolution(x, filters, f"block{block}_conv{index}"),
                                  f"block{block}_conv{index}")  # fmt: skip
            x = keras.layers.Add(name=f"block{block}_add{index}", dtype=dtype_policy)([x, residual])
    x = keras.layers.GlobalMaxPooling2D(name="features", dtype=dtype_policy)(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="dropout", dtype=dtype_policy)(x)
    # Maxima of normalized maps are large: unscaled, the first logits give a loss near 7, not
    # ln 10, and the classifier outpaces the network at a high learning rate.
    x = keras.layers.Rescaling(CLASSIFIER_SCALE, name="scaled_features", dtype=dtype_policy)(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="predictions", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=config.name)
