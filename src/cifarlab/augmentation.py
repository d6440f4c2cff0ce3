"""The notebook's real-time augmentation (`ImageDataGenerator`, step F) as Keras layers, and
the modern recipe's pad-and-crop and cutout.

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

    def __init__(
        self, rotation_degrees: float, shift: float, seed: int | None = None, **kwargs
    ):  # pragma: no mutate block (Keras reads this signature; mutmut's wrapper hides it)
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


class RandomPadCrop(keras.layers.Layer):
    """Pad each image by `padding` pixels (reflecting its edges) and crop a random window of the
    original size back out: a random shift of up to `padding` pixels, drawn per image."""

    def __init__(
        self, padding: int, seed: int | None = None, **kwargs
    ):  # pragma: no mutate block (Keras reads this signature; mutmut's wrapper hides it)
        super().__init__(**kwargs)
        self.padding, self.seed = padding, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        ops, pad = keras.ops, self.padding
        height, width = images.shape[1], images.shape[2]
        padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
        count = ops.shape(images)[0]
        offsets = keras.random.randint((count, 2), 0, 2 * pad + 1, seed=self.seed_generator)
        rows = offsets[:, :1] + ops.arange(height)[None]  # N × H source rows.
        columns = offsets[:, 1:] + ops.arange(width)[None]  # N × W source columns.
        picked = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
        return ops.take_along_axis(picked, columns[:, None, :, None], axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


class Cutout(keras.layers.Layer):
    """Set one random `size` × `size` square of each image to zero (DeVries and Taylor, 2017);
    the square's centre is anywhere in the image, so it may be cut by the border."""

    def __init__(
        self, size: int, seed: int | None = None, **kwargs
    ):  # pragma: no mutate block (Keras reads this signature; mutmut's wrapper hides it)
        super().__init__(**kwargs)
        self.size, self.seed = size, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        ops = keras.ops
        height, width = images.shape[1], images.shape[2]
        count = ops.shape(images)[0]
        centre_rows = keras.random.randint((count, 1), 0, height, seed=self.seed_generator)
        centre_columns = keras.random.randint((count, 1), 0, width, seed=self.seed_generator)
        # `size` rows and columns from centre - size // 2: centred on the centre pixel for an odd
        # size, half a pixel up and left of it for an even one.
        top, left = centre_rows - self.size // 2, centre_columns - self.size // 2
        rows, columns = ops.arange(height)[None], ops.arange(width)[None]
        inside_rows = ops.logical_and(rows >= top, rows < top + self.size)
        inside_columns = ops.logical_and(columns >= left, columns < left + self.size)
        square = ops.logical_and(inside_rows[:, :, None], inside_columns[:, None, :])
        return images * ops.cast(ops.logical_not(square), images.dtype)[..., None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "seed": self.seed}


def augmenter(augmentation: Augmentation, seed: int) -> keras.Sequential | None:
    """The layers that augment training batches as configured, or None if there is nothing to do."""
    if not augmentation.active:
        return None
    layers = []
    if augmentation.rotation_degrees or augmentation.shift:
        layers.append(
            RandomRotationShift(augmentation.rotation_degrees, augmentation.shift, seed=seed)
        )
    if augmentation.crop_padding:
        layers.append(RandomPadCrop(augmentation.crop_padding, seed=seed + 2))
    if augmentation.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 1))
    if augmentation.cutout:
        layers.append(Cutout(augmentation.cutout, seed=seed + 3))
    return keras.Sequential(layers, name="augmentation")
