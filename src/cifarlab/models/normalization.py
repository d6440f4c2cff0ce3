"""Batch normalization in one fused kernel under 16-bit precision on TensorFlow.

Keras's `BatchNormalization` computes in float32 with separate operations: under bfloat16 it
casts every normalized tensor up and back down, and on TensorFlow those element-wise passes and
their gradients took a third of a training step of `modern`'s network (a batch of 1,024 on
the 2-core Sapphire Rapids Xeon with AMX, `python bench/normalization.py`: 1.22 s a step,
0.75 s without normalization, 0.78 s with TensorFlow's fused kernel; `bench/README.md`).
`FusedBatchNormalization` is the same layer, with the same weights, the same arithmetic
(statistics in float32) and the same moving averages, computed by TensorFlow's
`FusedBatchNormV3` there. In float32, where nothing is cast, the fused kernel was 12% slower
for `batchnorm` on an AVX2 EPYC, so Keras's own code runs, as it does on every other backend:
a model file loads and runs everywhere."""

from __future__ import annotations

import keras
from keras import ops

HALF_PRECISION = ("bfloat16", "float16")  # Compute dtypes whose casts the fused kernel saves.
FUSED_MIN_EPSILON = 1.001e-5  # TensorFlow raises a smaller epsilon to this, silently.


@keras.saving.register_keras_serializable(package="cifarlab")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, in one kernel on TensorFlow for 16-bit inputs."""

    def call(self, inputs, training=None, mask=None):
        fusable = (
            keras.backend.backend() == "tensorflow" and self.compute_dtype in HALF_PRECISION
            and mask is None and not self.renorm and len(inputs.shape) in (2, 4)
            and self.axis in (-1, len(inputs.shape) - 1) and self.epsilon >= FUSED_MIN_EPSILON
        )  # fmt: skip
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        return self._fused(inputs, bool(training and self.trainable))

    def _fused(self, inputs, training: bool):
        import tensorflow as tf  # Only on TensorFlow; the other backends never get here.

        shape = ops.shape(inputs)
        images = inputs if len(inputs.shape) == 4 else ops.reshape(inputs, (-1, 1, 1, shape[-1]))
        images = ops.cast(images, self.compute_dtype)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else ops.ones((channels,), "float32")
        beta = self.beta if self.center else ops.zeros((channels,), "float32")
        if training:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                images, gamma, beta, epsilon=self.epsilon, is_training=True
            )[:3]
            # The kernel returns the unbiased batch variance; Keras averages the biased one.
            count = ops.cast(ops.size(images) // channels, "float32")
            variance = variance * (count - 1) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1 - self.momentum)
            )
        else:
            outputs = tf.compat.v1.nn.fused_batch_norm(
                images, gamma, beta, self.moving_mean, self.moving_variance,
                epsilon=self.epsilon, is_training=False,
            )[0]  # fmt: skip
        return ops.reshape(outputs, shape)
