"""The notebook's CNN (step D) and its batch-normalized variant (step H), as one builder.

    baseline, augmented: Conv 32 ×2 → MaxPool → Conv 64 ×2 → MaxPool → Flatten → Dense 512
                         → Dropout 0.5 → Dense softmax (2,168,362 parameters for CIFAR-10)
    batchnorm:           the same with every Conv and the Dense 512 bias-free, each followed by
                         BatchNormalization and then ReLU.

Only `keras` and `keras.ops` are used, so every Keras backend runs these models.
"""

from __future__ import annotations

import keras

from cifarlab.config import Config

FEATURES_LAYER = "features"  # The 512-d penultimate layer, for feature plots.
LAST_CONV_LAYER = "block2_conv2"  # The last convolutional activation, for Grad-CAM.


def build_model(
    config: Config, num_classes: int = 10, dtype_policy: str | None = None
) -> keras.Model:
    """The uncompiled Functional model for `config`; `dtype_policy` e.g. "mixed_bfloat16"."""
    size = config.image_size
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = inputs
    for block, filters in ((1, 32), (2, 64)):
        for index in (1, 2):
            x = _conv_unit(x, filters, f"block{block}_conv{index}", config.batch_norm, dtype_policy)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool", dtype=dtype_policy)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype_policy)(x)
    x = _dense_unit(x, config.batch_norm, dtype_policy)
    x = keras.layers.Dropout(0.5, name="dropout", dtype=dtype_policy)(x)
    # The output stays float32 under mixed precision, so softmax and the loss keep full range.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="predictions", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=config.name)


def _conv_unit(x, filters: int, name: str, batch_norm: bool, dtype_policy: str | None):
    # Either way the unit's ReLU output carries `name`, so Grad-CAM finds it in every variant.
    if not batch_norm:
        return keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=name, dtype=dtype_policy
        )(x)
    x = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_linear", dtype=dtype_policy
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name=name, dtype=dtype_policy)(x)


def _dense_unit(x, batch_norm: bool, dtype_policy: str | None):
    if not batch_norm:
        return keras.layers.Dense(512, activation="relu", name=FEATURES_LAYER, dtype=dtype_policy)(
            x
        )
    x = keras.layers.Dense(
        512, use_bias=False, name=f"{FEATURES_LAYER}_linear", dtype=dtype_policy
    )(x)
    x = keras.layers.BatchNormalization(name=f"{FEATURES_LAYER}_bn", dtype=dtype_policy)(x)
    return keras.layers.Activation("relu", name=FEATURES_LAYER, dtype=dtype_policy)(x)


def compile_model(model: keras.Model, config: Config, steps_per_execution: int = 1) -> None:
    """Adam at the experiment's learning rate, categorical cross-entropy, accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model mapping images to the 512-d penultimate features of `model`."""
    return keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output)


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
