"""What each augmentation layer does to the pixels, measured exactly on images that spell out
their own coordinates: rotation and shift move pixels both ways by up to the configured amounts
and fill with the nearest edge pixel; pad-and-crop moves by whole pixels within the padding,
reflecting the edges; cutout zeroes one size × size square centred on any pixel. A few hundred
small float32 images, so each test takes a fraction of a second."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifarlab.augmentation import Cutout, RandomPadCrop, RandomRotationShift, augmenter
from cifarlab.config import Augmentation

# Not square, so that the width and the height cannot stand in for each other.
HEIGHT, WIDTH, COUNT = 24, 40, 200
ROWS, COLUMNS = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def coordinate_images(count: int = COUNT) -> np.ndarray:
    """Channel 0 holds each pixel's column and channel 1 its row, in hundredths so that they lie
    in [0, 1); channel 2 is 1 everywhere."""
    image = np.stack([COLUMNS / 100, ROWS / 100, np.ones_like(ROWS)], axis=-1)
    return np.repeat(image[None], count, axis=0)


def augmented(settings: Augmentation, images: np.ndarray, seed: int = 1) -> np.ndarray:
    return keras.ops.convert_to_numpy(augmenter(settings, seed)(images, training=True))


def sampled_maps(outputs: np.ndarray) -> dict[str, np.ndarray]:
    """For each output of a coordinate image, the affine map p -> A p + t (in pixels) that it was
    sampled through, fitted where it samples inside the image: its angle (degrees), how far it
    moves the image's centre, how far A is from a rotation, and the largest difference anywhere
    between the output and that map with the coordinates clamped to the image (nearest fill)."""
    points = np.stack([COLUMNS.ravel(), ROWS.ravel(), np.ones(ROWS.size)], axis=1)
    centre = np.array([(WIDTH - 1) / 2, (HEIGHT - 1) / 2, 1.0])
    found = {"angle": [], "dx": [], "dy": [], "not_rotation": [], "fill_error": []}
    for output in outputs:
        columns, rows = output[..., 0].ravel() * 100, output[..., 1].ravel() * 100
        inside = (columns > 0.5) & (columns < WIDTH - 1.5) & (rows > 0.5) & (rows < HEIGHT - 1.5)
        to_column = np.linalg.lstsq(points[inside], columns[inside], rcond=None)[0]
        to_row = np.linalg.lstsq(points[inside], rows[inside], rcond=None)[0]
        found["angle"].append(np.degrees(np.arctan2(to_row[0], to_column[0])))
        found["dx"].append(to_column @ centre - centre[0])
        found["dy"].append(to_row @ centre - centre[1])
        found["not_rotation"].append(
            max(abs(to_column[0] - to_row[1]), abs(to_column[1] + to_row[0]),
                abs(np.hypot(to_column[0], to_row[0]) - 1))
        )  # fmt: skip
        clamped_columns = np.clip(points @ to_column, 0, WIDTH - 1)
        clamped_rows = np.clip(points @ to_row, 0, HEIGHT - 1)
        found["fill_error"].append(
            max(np.abs(clamped_columns - columns).max(), np.abs(clamped_rows - rows).max())
        )
    return {name: np.array(values) for name, values in found.items()}


def reaches_both_ends(values: np.ndarray, bound: float) -> bool:
    """Within ±bound, and beyond 80% of it both ways (200 uniform draws all miss one end with
    probability 0.9^200, about 1e-9)."""
    return bool(np.abs(values).max() <= bound + 1e-3 and values.min() < -0.8 * bound
                and values.max() > 0.8 * bound)  # fmt: skip


def test_rotation_turns_images_both_ways_by_up_to_the_configured_degrees():
    maps = sampled_maps(augmented(Augmentation(rotation_degrees=10), coordinate_images()))
    assert reaches_both_ends(maps["angle"], 10)
    assert maps["not_rotation"].max() < 1e-4  # No scaling or shear.
    # About the image's centre (give or take where Keras puts the centre of an even side).
    assert np.abs(maps["dx"]).max() < 0.25 and np.abs(maps["dy"]).max() < 0.25
    assert maps["fill_error"].max() < 1e-3  # Pixels from outside are the nearest edge's.


def test_shift_moves_images_both_ways_by_up_to_the_configured_share_of_each_side():
    maps = sampled_maps(augmented(Augmentation(shift=0.1), coordinate_images()))
    assert np.abs(maps["angle"]).max() < 1e-3
    assert reaches_both_ends(maps["dx"], 0.1 * WIDTH)
    assert reaches_both_ends(maps["dy"], 0.1 * HEIGHT)
    assert abs(np.corrcoef(maps["dx"], maps["dy"])[0, 1]) < 0.3  # Drawn independently.
    assert maps["fill_error"].max() < 1e-3


def test_rotation_and_shift_are_one_transform_with_both_ranges():
    maps = sampled_maps(augmented(Augmentation(rotation_degrees=20, shift=0.05),
                                  coordinate_images()))  # fmt: skip
    assert reaches_both_ends(maps["angle"], 20)
    assert reaches_both_ends(maps["dx"], 0.05 * WIDTH + 0.25)
    assert maps["not_rotation"].max() < 1e-4 and maps["fill_error"].max() < 1e-3


def reflected(indices: np.ndarray, size: int) -> np.ndarray:
    """Where index i of a side of `size` pixels comes from when padding reflects the edges
    (without repeating the edge pixel): -1 is 1, and size is size - 2."""
    indices = np.abs(indices)
    return np.where(indices > size - 1, 2 * (size - 1) - indices, indices)


def test_pad_and_crop_moves_images_by_whole_pixels_within_the_padding_both_ways():
    images = coordinate_images()
    outputs = augmented(Augmentation(crop_padding=3), images)
    assert outputs.shape == images.shape
    # The centre pixel says where the window was taken from.
    dx = np.round(outputs[:, HEIGHT // 2, WIDTH // 2, 0] * 100).astype(int) - WIDTH // 2
    dy = np.round(outputs[:, HEIGHT // 2, WIDTH // 2, 1] * 100).astype(int) - HEIGHT // 2
    for output, right, down in zip(outputs, dx, dy, strict=True):
        np.testing.assert_allclose(output[..., 0] * 100, reflected(COLUMNS + right, WIDTH),
                                   atol=1e-4)  # fmt: skip
        np.testing.assert_allclose(output[..., 1] * 100, reflected(ROWS + down, HEIGHT), atol=1e-4)
        assert (output[..., 2] == 1).all()
    # Each of the seven moves from -3 to 3 occurs, each way.
    assert set(dx) == set(dy) == set(range(-3, 4))
    assert abs(np.corrcoef(dx, dy)[0, 1]) < 0.3


def cutout_masks(size: int, height: int = 8, width: int = 12, count: int = 300):
    images = np.ones((count, height, width, 3), np.float32)
    outputs = augmented(Augmentation(cutout=size), images)
    assert np.isin(outputs, [0, 1]).all() and (outputs.min(axis=-1) == outputs.max(axis=-1)).all()
    return outputs[..., 0] == 0


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_zeroes_one_size_by_size_square_centred_on_any_pixel(size):
    height, width = 8, 12
    masks = cutout_masks(size, height, width)
    centres = []
    for mask in masks:
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
        assert mask[top:bottom, left:right].all() and mask.sum() == (bottom - top) * (right - left)
        # The square's first row is centre - size // 2; only the border cuts it short.
        first_row = bottom - size if top == 0 else top
        first_column = right - size if left == 0 else left
        assert bottom - first_row == size or bottom == height
        assert right - first_column == size or right == width
        centres.append((first_row + size // 2, first_column + size // 2))
    centre_rows, centre_columns = np.array(centres).T
    assert set(centre_rows) == set(range(height)) and set(centre_columns) == set(range(width))
    full = (centre_rows >= size // 2) & (centre_rows + (size - 1) // 2 < height)
    full &= (centre_columns >= size // 2) & (centre_columns + (size - 1) // 2 < width)
    assert full.any() and (masks[full].sum(axis=(1, 2)) == size * size).all()


def test_the_flip_mirrors_left_and_right_in_about_half_the_images():
    images = coordinate_images()
    outputs = augmented(Augmentation(horizontal_flip=True), images)
    mirrored = np.array([np.array_equal(after, before[:, ::-1])
                         for after, before in zip(outputs, images, strict=True)])  # fmt: skip
    unchanged = np.array([np.array_equal(after, before)
                          for after, before in zip(outputs, images, strict=True)])  # fmt: skip
    assert (mirrored | unchanged).all()
    # A binomial rate of 1/2 over 200 images: standard error 3.5 points.
    assert 0.38 < mirrored.mean() < 0.62


def test_the_augmenter_holds_the_configured_layers_in_order_or_is_none():
    assert augmenter(Augmentation(), seed=0) is None
    settings = Augmentation(rotation_degrees=7, shift=0.125, horizontal_flip=True,
                            crop_padding=2, cutout=6)  # fmt: skip
    augment = augmenter(settings, seed=0)
    assert augment.name == "augmentation"  # Named, like every layer, for summaries and errors.
    layers = augment.layers
    assert [type(layer) for layer in layers] == [
        RandomRotationShift, RandomPadCrop, keras.layers.RandomFlip, Cutout,
    ]  # fmt: skip
    assert (layers[0].rotation_degrees, layers[0].shift) == (7, 0.125)
    assert layers[1].padding == 2 and layers[3].size == 6
    # Each layer draws from a seed of its own, and every one moves with the run's seed.
    seeds = [layer.get_config()["seed"] for layer in layers]
    assert len(set(seeds)) == 4
    other_run = [layer.get_config()["seed"] for layer in augmenter(settings, seed=10).layers]
    assert all(mine != other for mine, other in zip(seeds, other_run, strict=True))
    assert [type(layer) for layer in augmenter(Augmentation(shift=0.1), seed=0).layers] == [
        RandomRotationShift
    ]


def test_the_same_seed_draws_the_same_augmentation_and_another_seed_another():
    settings = Augmentation(rotation_degrees=10, shift=0.1, horizontal_flip=True,
                            crop_padding=2, cutout=5)  # fmt: skip
    images = coordinate_images(50)
    first, again = augmented(settings, images, seed=3), augmented(settings, images, seed=3)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, augmented(settings, images, seed=4))
    for one in (Augmentation(rotation_degrees=10), Augmentation(shift=0.1),
                Augmentation(crop_padding=2), Augmentation(cutout=5)):  # fmt: skip
        np.testing.assert_array_equal(augmented(one, images, seed=3), augmented(one, images, 3))


# Layers are made inside the tests, not while collecting them: mutation testing forks each run
# from a process that has only collected the tests, and TensorFlow is not fork-safe once it runs.
@pytest.mark.parametrize(
    ("kind", "arguments"), [(RandomRotationShift, (10, 0.1)), (RandomPadCrop, (2,)), (Cutout, (5,))]
)
def test_the_layers_augment_unless_told_that_it_is_not_training(kind, arguments):
    layer, images = kind(*arguments, seed=1), coordinate_images(10)
    unchanged = keras.ops.convert_to_numpy(layer(images, training=False))
    np.testing.assert_array_equal(unchanged, images)
    assert not np.array_equal(keras.ops.convert_to_numpy(layer(images, training=True)), images)
    # Called on its own, like Keras's random layers, a layer augments.
    assert not np.array_equal(keras.ops.convert_to_numpy(layer(images)), images)
    model = keras.Sequential([keras.Input(images.shape[1:]), layer])
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)  # Inference.


def test_a_transformation_drawn_with_a_given_seed_is_drawn_again_with_it():
    """Keras's two-step interface: draw a transformation, then apply it to the images."""
    layer, images = RandomRotationShift(10, 0.1, seed=1), coordinate_images(20)
    first, again = (layer.get_random_transformation(images, seed=7) for _ in range(2))
    for key in ("angle", "rotation_matrix"):
        np.testing.assert_array_equal(first[key], again[key])
    other = layer.get_random_transformation(images, seed=8)
    assert not np.allclose(first["rotation_matrix"], other["rotation_matrix"])
    # Applied, it turns each image by the angle drawn for it (in degrees).
    maps = sampled_maps(keras.ops.convert_to_numpy(layer.transform_images(images, first)))
    np.testing.assert_allclose(maps["angle"], keras.ops.convert_to_numpy(first["angle"]), atol=1e-4)
    assert np.abs(maps["angle"]).max() <= 10


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        (RandomRotationShift, {"rotation_degrees": 12, "shift": 0.2}),
        (RandomPadCrop, {"padding": 3}),
        (Cutout, {"size": 6}),
    ],
)
def test_each_layer_is_rebuilt_from_its_config_and_keeps_the_image_shape(kind, settings):
    layer = kind(*settings.values(), seed=4, name="augment")
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.name == layer.name
    assert {key: getattr(rebuilt, key) for key in settings} == settings
    images = coordinate_images(10)  # With the same seed, the same draws.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(rebuilt(images, training=True)),
        keras.ops.convert_to_numpy(layer(images, training=True)),
    )
    model = keras.Sequential([keras.Input((HEIGHT, WIDTH, 3)), rebuilt])
    assert model.output_shape == (None, HEIGHT, WIDTH, 3)
