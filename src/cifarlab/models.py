"""The notebook's CNN (step D) and its batch-normalized variant (step H), as one builder; a small
residual network for the modern recipe; and users' own builders.

    baseline, augmented: Conv 32 ×2 → MaxPool → Conv 64 ×2 → MaxPool → Flatten → Dense 512
                         → Dropout 0.5 → Dense softmax (2,168,362 parameters for CIFAR-10)
    batchnorm:           the same with every Conv and the Dense 512 bias-free, each followed by
                         BatchNormalization and then ReLU (2,170,474 parameters).

`filters`, `convs_per_block`, `kernel_size`, `dense_units` and `dropout` reshape the notebook's
network; `model = "package.module:function"` replaces it with any function
`(config, input_shape, num_classes) -> keras.Model`. Grad-CAM and the feature plot find their
layers by inspecting the model (`last_conv_layer`, `feature_extractor`), so any such network
works. Only `keras` and `keras.ops` are used, so every Keras backend runs these models.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.input_pipeline import EVAL_BATCH_SIZE

Builder = Callable[[Config, tuple[int, int, int], int], keras.Model]
ONECYCLE_WARMUP = 0.25  # Share of the steps over which the one-cycle schedule warms up.
SGD_MOMENTUM = 0.9  # Nesterov momentum of the sgd optimizer.
CLASSIFIER_SCALE = 0.125  # residual_network's features scaled before its classifier (Page, 2018).
ADAPT_SAMPLE = 5000  # Training images from which layers with `adapt` learn their statistics.


def build_model(
    config: Config, num_classes: int = 10, dtype_policy: str | None = None
) -> keras.Model:
    """The uncompiled model for `config`; `dtype_policy` e.g. "mixed_bfloat16"."""
    input_shape = (config.image_size, config.image_size, 3)
    if not config.model:
        return notebook_network(config, input_shape, num_classes, dtype_policy)
    builder = import_builder(config.model)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy or "float32")
    try:
        model = builder(config, input_shape, num_classes)
    finally:
        keras.config.set_dtype_policy(previous)
    if not isinstance(model, keras.Model):
        raise UserError(f"{config.model} returned {type(model).__name__}, not a keras.Model.")
    return model


def import_builder(path: str) -> Builder:
    """The function at "package.module:function", or a `UserError` saying what is wrong."""
    module_name, _, function_name = path.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UserError(
            f"Cannot import the model builder {path} ({error}); give package.module:function "
            "of an importable module."
        ) from error
    if not callable(builder):
        raise UserError(f"{path} is not a function.")
    return builder


def load_model(path: Path, builder: str = "", compile: bool = True) -> keras.Model:
    """The Keras model file at `path`, saved by a run of `builder` ("package.module:function",
    or "" for cifarlab's own): the builder's module is imported first, so that Keras finds the
    layer classes it registers, as it finds cifarlab's own defined here."""
    if builder:
        import_builder(builder)
    return keras.models.load_model(path, compile=compile)


def builder_path(builder: Builder) -> str:
    """ "package.module:function" for a module-level function."""
    return f"{builder.__module__}:{builder.__qualname__}"


def builder_sha256(path: str) -> str:
    """The SHA-256 of the builder's source, recorded with each run that uses it."""
    builder = import_builder(path)
    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError):
        source = path
    return hashlib.sha256(source.encode()).hexdigest()


def record_builder(config: Config) -> Config:
    """`config` with the SHA-256 of its builder's source filled in (unchanged without one)."""
    if not config.model:
        return config
    return replace(config, model_sha256=builder_sha256(config.model))


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
    x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name=name, dtype=dtype_policy)(x)


def _dense_unit(x, units: int, batch_norm: bool, dtype_policy):
    if not batch_norm:
        return keras.layers.Dense(units, activation="relu", name="features", dtype=dtype_policy)(x)
    x = keras.layers.Dense(units, use_bias=False, name="features_linear", dtype=dtype_policy)(x)
    x = keras.layers.BatchNormalization(name="features_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name="features", dtype=dtype_policy)(x)


@keras.saving.register_keras_serializable(package="cifarlab")
class PatchWhitening(keras.layers.Layer):
    """A fixed 2×2 convolution that whitens image patches (Page, 2018; Jordan, 2024): its
    filters are the eigenvectors of the training images' patch covariance, each scaled by its
    eigenvalue's inverse square root and paired with its negative, so the next layers see
    decorrelated, unit-variance inputs from the first step. `adapt(images)` computes them, as
    Keras's own `Normalization.adapt` does its statistics; only the bias is trained."""

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
        mean = patches.mean(axis=0)
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
        filters = eigenvectors / np.sqrt(eigenvalues + self.epsilon)
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


def adapt(model: keras.Model, images: np.ndarray) -> None:
    """Fit the layers that learn statistics of their inputs (Keras's `adapt`, as
    `PatchWhitening` and `Normalization` have) before the first step, each to `images` (a
    sample of the training images scaled as the model sees them) as they reach it: through the
    layers before it, already adapted, and into nested models.

    A subclassed model has no graph to follow, so its own layers get `images` as they are.
    """
    inputs = getattr(model, "inputs", None)  # None for a subclassed model.
    for layer in model.layers:
        if not _adapts(layer):
            continue
        seen = images
        if inputs and layer.input is not inputs[0]:
            before = keras.Model(inputs, layer.input)
            seen = before.predict(images, batch_size=EVAL_BATCH_SIZE, verbose=0)
            seen = np.asarray(seen, dtype="float32")
        if isinstance(layer, keras.Model):
            adapt(layer, seen)
        else:
            layer.adapt(seen)


def _adapts(layer: keras.layers.Layer) -> bool:
    """Whether `layer` learns statistics with `adapt`, or is a model holding such a layer."""
    if isinstance(layer, keras.Model):
        return any(_adapts(inner) for inner in layer.layers)
    return hasattr(layer, "adapt")


def residual_network(
    config: Config, input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """A small residual network shaped for fast CIFAR-10 training (airbench, Jordan 2024): a
    whitening layer, then per entry of `filters` a convolution, max-pooling, batch
    normalization and ReLU, followed by `convs_per_block - 1` residual convolutions; global
    max-pooling and a linear classifier. Pooling comes before normalization so that it and
    the activation work on a quarter of the pixels."""

    def normalized(x, name):
        x = keras.layers.BatchNormalization(momentum=0.9, scale=False, name=f"{name}_bn")(x)
        return keras.layers.Activation("relu", name=f"{name}_relu")(x)

    def convolution(x, filters, name):
        return keras.layers.Conv2D(filters, config.kernel_size, padding="same", use_bias=False,
                                   name=name)(x)  # fmt: skip

    inputs = keras.Input(shape=input_shape, name="image")
    x = PatchWhitening(name="whitening")(inputs)
    x = keras.layers.Activation("relu", name="whitening_relu")(x)
    for block, filters in enumerate(config.filters, start=1):
        x = convolution(x, filters, f"block{block}_conv1")
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = normalized(x, f"block{block}_conv1")
        for index in range(2, config.convs_per_block + 1):
            residual = normalized(convolution(x, filters, f"block{block}_conv{index}"),
                                  f"block{block}_conv{index}")  # fmt: skip
            x = keras.layers.Add(name=f"block{block}_add{index}")([x, residual])
    x = keras.layers.GlobalMaxPooling2D(name="features")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    # Maxima of normalized maps are large: unscaled, the first logits give a loss near 7, not
    # ln 10, and the classifier outpaces the network at a high learning rate.
    x = keras.layers.Rescaling(CLASSIFIER_SCALE, name="scaled_features")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="predictions", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=config.name)


def compile_model(
    model: keras.Model, config: Config, steps_per_epoch: int = 1, steps_per_execution: int = 1
) -> None:
    """The config's optimizer and schedule, cross-entropy (with label smoothing), accuracy."""
    model.compile(
        optimizer=optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam (the notebook's), AdamW, or SGD with Nesterov momentum, at the config's schedule."""
    rate = learning_rate(config, steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=SGD_MOMENTUM, nesterov=True,
                                    weight_decay=decay)  # fmt: skip
    return keras.optimizers.Adam(learning_rate=rate, weight_decay=decay)


def learning_rate(config: Config, steps_per_epoch: int):
    """A constant rate, a cosine decay to zero, or one cycle: a warm-up, then a cosine decay."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    if config.schedule == "onecycle":
        warmup = max(1, int(ONECYCLE_WARMUP * total))
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 25, max(1, total - warmup), warmup_target=config.learning_rate,
            warmup_steps=warmup,
        )  # fmt: skip
    return config.learning_rate


def last_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer whose output is the last convolution's activation map, found by inspection:
    the last Conv2D, followed through the layers after it that keep its spatial size (batch
    normalization, activation, residual addition), up to the first that changes it."""
    layers = model.layers
    convolutions = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    if not convolutions:
        raise UserError(f"Model {model.name} has no convolutional layer to explain.")
    chosen = convolutions[-1]
    shape = tuple(layers[chosen].output.shape[1:3])
    for index in range(chosen + 1, len(layers)):
        output = layers[index].output
        if len(output.shape) != 4 or tuple(output.shape[1:3]) != shape:
            break
        chosen = index
    return layers[chosen]


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model mapping images to the penultimate features: the input of the last layer."""
    return keras.Model(model.inputs, model.layers[-1].input)


def summary(model: keras.Model) -> str:
    """The model's layer table as plain text, in the notebook's `model.summary()` layout.

    Written by hand rather than by `model.summary`, whose rich console writes to the notebook
    itself when run inside Jupyter.
    """
    rows = [("Layer (type)", "Output Shape", "Param #")]
    for layer in model.layers:
        shape = tuple(layer.output.shape)
        rows.append(
            (f"{layer.name} ({type(layer).__name__})", str(shape), f"{layer.count_params():,}")
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f'Model: "{model.name}"']
    lines += [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}" for row in rows
    ]
    trainable = sum(int(keras.ops.size(weight)) for weight in model.trainable_weights)
    total = model.count_params()
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(lines) + "\n"
