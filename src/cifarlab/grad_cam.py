"""Grad-CAM: where in an image the network looked when it chose a class.

The model is split at its last convolutional activation (`models.last_conv_layer`, found by
inspecting the model, so users' own networks work too): the
gradient of the class score with respect to that activation, averaged over the image, weighs
each channel, and the weighted sum of channels (negative parts dropped) is the heat map
(Selvaraju et al., 2017). The gradient comes from the active Keras backend: TensorFlow's
GradientTape, `jax.grad` or torch autograd; everything else is Keras and NumPy.

    cifarlab predict runs/baseline photo.jpg --explain heatmaps/
"""

from __future__ import annotations

import io

import keras
import numpy as np
from PIL import Image

from cifarlab import input_pipeline, models
from cifarlab.errors import RunError

OVERLAY_SIZE = 256  # Side of the overlay picture, in pixels: readable without zooming.
OVERLAY_OPACITY = 0.45  # Share of the heat map's colour in the overlay.


class GradCam:
    """Grad-CAM for one classifier; build once, then call on batches of uint8 images."""

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        conv_layer = model.get_layer(layer_name) if layer_name else models.last_conv_layer(model)
        self.features = keras.Model(model.input, conv_layer.output)
        self.head = _head_after(model, conv_layer)
        self.gradients = gradient_function(self.head)

    def __call__(self, images: np.ndarray, class_indices=None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, classes) and heat maps (N, h, w) in [0, 1] for `class_indices`.

        Without `class_indices` each image is explained for its most probable class.
        """
        # predict_on_batch runs the compiled graph: much faster than eager calls per request.
        # Mixed-precision models compute in 16 bits; the gradient is taken in float32.
        features = np.asarray(
            self.features.predict_on_batch(input_pipeline.scale(images)), np.float32
        )
        probabilities = np.asarray(self.head.predict_on_batch(features), np.float32)
        if class_indices is None:
            class_indices = probabilities.argmax(axis=1)
        one_hot = np.eye(probabilities.shape[1], dtype=np.float32)[np.asarray(class_indices)]
        gradients = np.asarray(self.gradients(features, one_hot), np.float32)
        return probabilities, _heat_maps(features, gradients)


def _head_after(model: keras.Model, conv_layer) -> keras.Model:
    """The layers after `conv_layer`, re-applied to a new input: our models are plain chains."""
    inputs = keras.Input(shape=tuple(conv_layer.output.shape[1:]), name="conv_features")
    x = inputs
    for layer in model.layers[model.layers.index(conv_layer) + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name="grad_cam_head")


def gradient_function(head: keras.Model):
    """A compiled `(features, one_hot) -> d sum(one_hot * head(features)) / d features`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def tensorflow_gradients(features, one_hot):
            with tf.GradientTape() as tape:
                tape.watch(features)
                outputs = tf.cast(head(features, training=False), tf.float32)
                score = tf.reduce_sum(outputs * one_hot)
            return tape.gradient(score, features)

        return tensorflow_gradients
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(features, one_hot):
            return jnp.sum(head(features, training=False).astype(jnp.float32) * one_hot)

        return jax.jit(jax.grad(score))
    if backend == "torch":
        import torch

        def torch_gradients(features, one_hot):
            values = keras.ops.convert_to_tensor(features).detach().requires_grad_(True)
            outputs = head(values, training=False).float()
            score = (outputs * torch.as_tensor(one_hot, device=outputs.device)).sum()
            return torch.autograd.grad(score, values)[0].detach().cpu().numpy()

        return torch_gradients
    raise RunError(f"Grad-CAM needs a backend with gradients; {backend} is not supported.")


def _heat_maps(features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Channel weights = mean gradient; map = ReLU(weighted channel sum), scaled to [0, 1]."""
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    maps = np.maximum((weights * features).sum(axis=-1), 0.0)
    peaks = maps.max(axis=(1, 2), keepdims=True)
    # A map with no positive evidence stays all zero instead of dividing by zero.
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0).astype(np.float32)


def overlay(image: np.ndarray, heat_map: np.ndarray, size: int = OVERLAY_SIZE) -> Image.Image:
    """The model's input image enlarged to `size` pixels, with the heat map coloured over it."""
    from matplotlib import colormaps

    picture = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    heat = Image.fromarray(np.uint8(np.rint(heat_map * 255))).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    coloured = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    blended = (1 - OVERLAY_OPACITY) * np.asarray(picture) + OVERLAY_OPACITY * coloured * 255
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def png_bytes(picture: Image.Image) -> bytes:
    """`picture` encoded as PNG."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=3)  # Fast; the overlay is small anyway.
    return buffer.getvalue()
