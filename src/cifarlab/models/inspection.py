"""What any network is made of, found by looking at it: the layers that adapt to the training
images, the last convolution (for Grad-CAM), the penultimate features (for the feature plot) and
the layer table. These work for users' own networks as for the built-in ones.
"""

from __future__ import annotations

import keras
import numpy as np

from cifarlab.errors import UserError
from cifarlab.input_pipeline import EVAL_BATCH_SIZE

ADAPT_SAMPLE = 5000  # Training images from which layers with `adapt` learn their statistics.


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
