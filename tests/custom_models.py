"""A user's own network, as `--model tests.custom_models:small_network` names it."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="custom_models")
class Halve(keras.layers.Layer):
    """A layer of the user's own: Keras loads a model holding it only once this module is
    imported."""

    def call(self, inputs):
        return inputs * 0.5


def small_network(config, input_shape, num_classes) -> keras.Model:
    """A tiny CNN with a global-average-pooling head: no layer named like cifarlab's own; its
    first layer standardizes pixels with statistics Keras's `adapt` learns from the images,
    and one layer is the user's own class."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Normalization(name="pixel_statistics")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = Halve()(keras.layers.GlobalAveragePooling2D()(x))
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_network")


def confidently_wrong(config, input_shape, num_classes) -> keras.Model:
    """A network that puts all its confidence on the last class and cannot move it: its loss is
    finite but about 900 on balanced classes, as a run whose learning rate blew up."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    bias = [0.0] * (num_classes - 1) + [1000.0]
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer="zeros", trainable=False,
        bias_initializer=keras.initializers.Constant(bias), dtype="float32",
    )(x)  # fmt: skip
    return keras.Model(inputs, outputs, name="confidently_wrong")


def uniform_guess(config, input_shape, num_classes) -> keras.Model:
    """A network that cannot learn: every image gets the same probability for every class, so
    each epoch's losses equal the first's (ln(classes)) exactly."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer="zeros", trainable=False,
        dtype="float32",
    )(x)  # fmt: skip
    return keras.Model(inputs, outputs, name="uniform_guess")
