"""cifarlab's augmentation draws the same distribution of transforms as the notebook's real
`ImageDataGenerator`: the same flip rate and the same pixel change from rotation and shift,
over a few thousand images; and the modern recipe's pad-and-crop and cutout do what they say."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from cifarlab import augmentation
from cifarlab.config import Augmentation

COUNT = 2000  # Images compared: enough for the means to agree within a few percent.


def smooth_images(count: int, seed: int = 0) -> np.ndarray:
    """Photo-like float32 images in [0, 1]: random 4×4 colour fields enlarged to 32×32."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    large = [np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC)) for image in small]
    return np.stack(large).astype(np.float32) / 255.0


def notebook_generator(**settings):
    tensorflow = pytest.importorskip("tensorflow")
    return tensorflow.keras.preprocessing.image.ImageDataGenerator(**settings)


def ours(images: np.ndarray, settings: Augmentation) -> np.ndarray:
    augment = augmentation.augmenter(settings, seed=1)
    return keras.ops.convert_to_numpy(augment(images, training=True))


def notebooks(images: np.ndarray, **settings) -> np.ndarray:
    generator = notebook_generator(**settings)
    np.random.seed(1)  # ImageDataGenerator draws from NumPy's global generator.
    return np.stack([generator.random_transform(image) for image in images])


def test_the_flip_rate_matches_the_notebooks():
    images = smooth_images(COUNT)
    flipped = {
        "ours": ours(images, Augmentation(horizontal_flip=True)),
        "notebook": notebooks(images, horizontal_flip=True),
    }
    rates = {
        name: np.mean([np.allclose(after, before[:, ::-1]) for after, before in zip(
            result, images, strict=True)])
        for name, result in flipped.items()
    }  # fmt: skip
    # Each is a binomial rate of 1/2 over 2,000 images: standard error 1.1 points.
    assert abs(rates["ours"] - 0.5) < 0.04 and abs(rates["notebook"] - 0.5) < 0.04


def test_rotation_and_shift_change_pixels_as_the_notebooks_do():
    images = smooth_images(COUNT)
    change = {
        "ours": np.abs(ours(images, Augmentation(rotation_degrees=10, shift=0.1)) - images),
        "notebook": np.abs(notebooks(images, rotation_range=10, width_shift_range=0.1,
                                     height_shift_range=0.1) - images),
    }  # fmt: skip
    per_image = {name: values.mean(axis=(1, 2, 3)) for name, values in change.items()}
    means = {name: values.mean() for name, values in per_image.items()}
    assert means["ours"] == pytest.approx(means["notebook"], rel=0.05)
    # The whole distribution, not just its mean: a two-sample Kolmogorov–Smirnov test.
    assert stats.ks_2samp(per_image["ours"], per_image["notebook"]).statistic < 0.06


def test_pad_and_crop_shifts_each_image_by_whole_pixels_within_the_padding():
    images = smooth_images(200)
    cropped = ours(images, Augmentation(crop_padding=4))
    for before, after in zip(images, cropped, strict=True):
        # Some shift of at most 4 pixels each way makes the centre 24×24 match exactly.
        matches = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.allclose(after[4:28, 4:28], before[4 + dy : 28 + dy, 4 + dx : 28 + dx])
        ]
        assert matches


def test_cutout_zeroes_one_square_per_image():
    images = smooth_images(200) + 0.01  # No pixel is black before.
    zeroed = (ours(images, Augmentation(cutout=8)) == 0).all(axis=-1)
    counts = zeroed.sum(axis=(1, 2))
    assert counts.max() == 64 and counts.min() >= 16  # 8×8, cut by the border at worst 4×4.
    for mask in zeroed:
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].all()


def test_each_epochs_order_depends_only_on_seed_and_epoch():
    from cifarlab import input_pipeline

    labels = np.arange(40) % 10
    pixels = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    plain = Augmentation()

    def epochs(first: int) -> list[np.ndarray]:
        stream = input_pipeline.training_batches(pixels, labels, 10, 40, plain, 7, first, 4)
        return [np.asarray(images)[:, 0, 0, 0] for images, _ in stream]  # One batch per epoch.

    # A run resumed at epoch 2 sees the batches an uninterrupted run sees in epochs 2 and 3.
    uninterrupted, resumed = epochs(0), epochs(2)
    assert len(uninterrupted) == 4 and len(resumed) == 2
    for index, order in enumerate(resumed, start=2):
        np.testing.assert_array_almost_equal(order, uninterrupted[index])
    assert not np.array_equal(uninterrupted[0], uninterrupted[1])  # Reshuffled every epoch.


@pytest.mark.parametrize("settings", [
    Augmentation(rotation_degrees=10, shift=0.1, horizontal_flip=True),
    Augmentation(crop_padding=4, horizontal_flip=True, cutout=8),
])  # fmt: skip
def test_a_resumed_stream_skips_the_draws_of_the_batches_already_augmented(settings):
    from cifarlab import input_pipeline

    images = smooth_images(16)
    straight = augmentation.augmenter(settings, seed=5)
    for _ in range(3):  # An uninterrupted run augmented three batches ...
        straight(images, training=True)
    resumed = augmentation.augmenter(settings, seed=5)
    input_pipeline.skip_draws(resumed, 3, images[:4])  # ... which a resumed run skips.
    expected = keras.ops.convert_to_numpy(straight(images, training=True))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(resumed(images, training=True)),
                                  expected)  # fmt: skip
    fresh = augmentation.augmenter(settings, seed=5)  # Not skipping replays the first batch.
    assert not np.array_equal(keras.ops.convert_to_numpy(fresh(images, training=True)), expected)
