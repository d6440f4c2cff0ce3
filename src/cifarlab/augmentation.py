"""The notebook's real-time augmentation (`ImageDataGenerator`, step F) as Keras layers.

Rotation and shift are drawn per image and applied as one affine transform, with one
interpolation pass, as `ImageDataGenerator` applies them; the horizontal flip follows. The
layers use only Keras, so the same augmentation runs in a `tf.data` map on TensorFlow and in
the `PyDataset` batches of the other backends.
"""

from __future__ import annotations

import keras

from cifarlab.config import Augmentation


class RandomRotationShift(keras.layers.RandomRotation):
    """Random rotation (±degrees) and width/height shift (± a fraction of the side) at once.

    Works on batches (N×H×W×C). Pixels brought in from outside are the nearest edge pixels,
    like `ImageDataGenerator(fill_mode="nearest")`.
    """

    def __init__(self, rotation_degrees: float, shift: float, seed: int | None = None, **kwargs):
        # RandomRotation takes a fraction of a full turn.
        super().__init__(rotation_degrees / 360.0, fill_mode="nearest", seed=seed, **kwargs)
        self.rotation_degrees, self.shift = rotation_degrees, shift

    def get_random_transformation(self, data, training=True, seed=None):
        transformation = super().get_random_transformation(data, training, seed)
        if transformation is None:
            return None
        ops = self.backend
        batch_size = transformation["batch_size"]
        height, width = transformation["image_height"], transformation["image_width"]
        seed = seed if seed is not None else self._get_seed_generator(ops._backend)
        shifts = ops.random.uniform((2, batch_size), -self.shift, self.shift, seed=seed)
        transformation["rotation_matrix"] = self._compute_affine_matrix(
            center_x=0.5,
            center_y=0.5,
            angle=transformation["angle"],
            translate_x=shifts[0] * ops.cast(width, shifts.dtype),
            translate_y=shifts[1] * ops.cast(height, shifts.dtype),
            scale=ops.numpy.ones([batch_size]),
            shear_x=ops.numpy.zeros([batch_size]),
            shear_y=ops.numpy.zeros([batch_size]),
            height=height,
            width=width,
        )
        return transformation

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("factor", None)
        config.pop("fill_mode", None)
        return {**config, "rotation_degrees": self.rotation_degrees, "shift": self.shift}


def augmenter(augmentation: Augmentation, seed: int) -> keras.Sequential | None:
    """The layers that augment training batches as configured, or None if there is nothing to do."""
    if not augmentation.active:
        return None
    layers = []
    if augmentation.rotation_degrees or augmentation.shift:
        layers.append(
            RandomRotationShift(augmentation.rotation_degrees, augmentation.shift, seed=seed)
        )
    if augmentation.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 1))
    return keras.Sequential(layers, name="augmentation")
