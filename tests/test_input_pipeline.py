"""The input pipeline's promises, on a few tiny images that carry their own index: pixels are
scaled from 0..255 to 0..1 in float32 and labels one-hot; every epoch shows every training image
exactly once, in an order that depends on the seed and the epoch only; evaluation batches cover
every image once, in order, unaugmented; and the `PyDataset` batches that the other backends use
are the same batches as TensorFlow's `tf.data` pipeline."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifarlab import augmentation, input_pipeline
from cifarlab.config import Augmentation

COUNT, CLASSES = 10, 3
HEIGHT, WIDTH = 2, 5


def indexed_images(count: int = COUNT) -> np.ndarray:
    """uint8 images whose channel 0 is the image's index, channel 1 ten times the column and
    channel 2 the brightest value, 255."""
    images = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    images[..., 0] = np.arange(count)[:, None, None]
    images[..., 1] = 10 * np.arange(WIDTH)
    images[..., 2] = 255
    return images


def labels_of(count: int = COUNT) -> np.ndarray:
    return np.arange(count) % CLASSES


def as_arrays(batch) -> list[np.ndarray]:
    parts = batch if isinstance(batch, tuple) else (batch,)
    return [keras.ops.convert_to_numpy(part) for part in parts]


def index_of(batch_images: np.ndarray) -> np.ndarray:
    """Which images a scaled batch holds."""
    return np.round(batch_images[:, 0, 0, 0] * 255).astype(int)


# What each backend's batches are: TensorFlow's own parallel pipeline, or a `PyDataset`.
PIPELINES = {"tensorflow": tf.data.Dataset, "other": input_pipeline.ArrayBatches}


@pytest.fixture
def other_backend(monkeypatch):
    """Keras reporting a backend other than TensorFlow, as under JAX or PyTorch, so that the
    pipeline takes its `PyDataset` path (plain NumPy and Keras layers, which run here too)."""
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")


def epochs_of(batches, epochs: int) -> list[list[list[np.ndarray]]]:
    """The batches of each epoch: a `tf.data` stream is cut into epochs of `steps` batches; a
    `PyDataset` is read as Keras reads it, `len` batches, then `on_epoch_end`."""
    if isinstance(batches, keras.utils.PyDataset):
        assert len(batches) < 100, "more batches than these tests ever make"
        read = []
        for _ in range(epochs):
            read.append([as_arrays(batches[index]) for index in range(len(batches))])
            batches.on_epoch_end()
        return read
    stream = [as_arrays(batch) for batch in batches]
    steps = len(stream) // epochs
    assert len(stream) == steps * epochs
    return [stream[epoch * steps : (epoch + 1) * steps] for epoch in range(epochs)]


def test_scale_maps_0_to_255_onto_0_to_1_in_float32():
    scaled = input_pipeline.scale(np.array([[0, 51, 255]], np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, np.array([[0, 0.2, 1]], np.float32))


def test_the_epoch_order_is_a_permutation_that_depends_on_seed_and_epoch_only():
    order = input_pipeline.epoch_order(50, seed=3, epoch=2)
    assert sorted(order) == list(range(50))
    np.random.seed(123)  # NumPy's global generator plays no part.
    np.testing.assert_array_equal(input_pipeline.epoch_order(50, seed=3, epoch=2), order)
    for other in [(4, 2), (3, 3), (2, 3)]:
        assert not np.array_equal(input_pipeline.epoch_order(50, *other), order)


@pytest.mark.parametrize(("images", "batch_size", "steps"), [(10, 4, 3), (8, 4, 2), (1, 32, 1)])
def test_steps_per_epoch_round_up_so_that_no_image_is_left_out(images, batch_size, steps):
    assert input_pipeline.steps_per_epoch(images, batch_size) == steps


def check_training_epochs(epochs, seed: int, first: int) -> None:
    """Each epoch: ceil(10 / 4) = 3 batches of 4, 4 and 2 images, in `epoch_order`, scaled, with
    one-hot labels of the images they hold."""
    for epoch, batches in enumerate(epochs, start=first):
        assert [len(images) for images, _ in batches] == [4, 4, 2]
        images = np.concatenate([images for images, _ in batches])
        one_hot = np.concatenate([labels for _, labels in batches])
        assert images.dtype == np.float32 and one_hot.dtype == np.float32
        order = input_pipeline.epoch_order(COUNT, seed, epoch)
        np.testing.assert_array_equal(index_of(images), order)
        np.testing.assert_array_equal(images, input_pipeline.scale(indexed_images()[order]))
        np.testing.assert_array_equal(one_hot, np.eye(CLASSES)[labels_of()[order]])


def test_training_batches_show_every_image_once_an_epoch_in_the_epochs_order():
    batches = input_pipeline.training_batches(
        indexed_images(), labels_of(), CLASSES, 4, Augmentation(), seed=5, first_epoch=1, epochs=4
    )
    assert isinstance(batches, tf.data.Dataset)  # TensorFlow's own parallel pipeline.
    check_training_epochs(epochs_of(batches, 3), seed=5, first=1)


def test_the_other_backends_get_the_same_training_batches(other_backend):
    batches = input_pipeline.training_batches(
        indexed_images(), labels_of(), CLASSES, 4, Augmentation(), seed=5, first_epoch=1, epochs=4
    )
    assert isinstance(batches, input_pipeline.ArrayBatches)
    # Prepared ahead of the model by threads, not processes (Keras layers are not fork-safe).
    assert batches.workers == input_pipeline.PYDATASET_WORKERS
    assert not batches.use_multiprocessing
    check_training_epochs(epochs_of(batches, 3), seed=5, first=1)


@pytest.mark.parametrize("backend", ["tensorflow", "other"])
def test_training_batches_are_augmented_as_configured(backend, monkeypatch):
    if backend == "other":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    settings = Augmentation(horizontal_flip=True)
    batches = input_pipeline.training_batches(indexed_images(40), labels_of(40), CLASSES, 16,
                                              settings, seed=0)  # fmt: skip
    assert isinstance(batches, PIPELINES[backend])
    (epoch,) = epochs_of(batches, 1)
    images = np.concatenate([images for images, _ in epoch])
    one_hot = np.concatenate([labels for _, labels in epoch])
    sources = input_pipeline.scale(indexed_images(40)[index_of(images)])
    mirrored = (images == sources[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (mirrored | (images == sources).all(axis=(1, 2, 3))).all()
    assert 0 < mirrored.sum() < 40  # Some images flipped, some not.
    np.testing.assert_array_equal(one_hot, np.eye(CLASSES)[labels_of(40)[index_of(images)]])


@pytest.mark.parametrize("backend", ["tensorflow", "other"])
def test_evaluation_batches_cover_every_image_once_in_order_unaugmented(backend, monkeypatch):
    if backend == "other":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    count = 2 * input_pipeline.EVAL_BATCH_SIZE + 1
    images = np.resize(indexed_images(), (count, HEIGHT, WIDTH, 3))
    labels = np.arange(count) % CLASSES
    batches = input_pipeline.evaluation_batches(images, labels, CLASSES)
    assert isinstance(batches, PIPELINES[backend])
    (epoch,) = epochs_of(batches, 1)
    sizes = [len(batch_images) for batch_images, _ in epoch]
    assert sizes == [input_pipeline.EVAL_BATCH_SIZE, input_pipeline.EVAL_BATCH_SIZE, 1]
    scaled = np.concatenate([batch_images for batch_images, _ in epoch])
    one_hot = np.concatenate([batch_labels for _, batch_labels in epoch])
    assert scaled.dtype == np.float32 and one_hot.dtype == np.float32
    np.testing.assert_array_equal(scaled, input_pipeline.scale(images))
    np.testing.assert_array_equal(one_hot, np.eye(CLASSES)[labels])
    small = input_pipeline.evaluation_batches(indexed_images(), labels_of(), CLASSES, 4)
    assert [len(batch_images) for batch_images, _ in epochs_of(small, 1)[0]] == [4, 4, 2]


@pytest.mark.parametrize("backend", ["tensorflow", "other"])
def test_image_batches_hold_the_scaled_images_alone_in_order(backend, monkeypatch):
    if backend == "other":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    count = input_pipeline.EVAL_BATCH_SIZE + 2
    images = np.resize(indexed_images(), (count, HEIGHT, WIDTH, 3))
    batches = input_pipeline.image_batches(images)
    assert isinstance(batches, PIPELINES[backend])
    (epoch,) = epochs_of(batches, 1)
    assert [len(batch) for batch in epoch] == [1, 1]  # The images, and no labels.
    scaled = np.concatenate([batch_images for (batch_images,) in epoch])
    assert [len(batch_images) for (batch_images,) in epoch] == [input_pipeline.EVAL_BATCH_SIZE, 2]
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, input_pipeline.scale(images))
    small = input_pipeline.image_batches(indexed_images(), batch_size=3)
    assert [len(batch_images) for (batch_images,) in epochs_of(small, 1)[0]] == [3, 3, 3, 1]


def test_array_batches_build_their_augmenter_before_the_worker_threads_use_it():
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal", seed=0)])
    batches = input_pipeline.ArrayBatches(indexed_images(), labels_of(), CLASSES, 4, True,
                                          augment, seed=2)  # fmt: skip
    assert augment.built
    assert augment.layers[0].input.shape == (None, HEIGHT, WIDTH, 3)
    # Without a first epoch, the first batch is epoch 0's.
    (first_images, _), *_ = epochs_of(batches, 1)[0]
    order = input_pipeline.epoch_order(COUNT, 2, 0)
    sources = input_pipeline.scale(indexed_images()[order[:4]])
    flipped = (first_images == sources[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (flipped | (first_images == sources).all(axis=(1, 2, 3))).all()


def random_images(count: int = 96) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 6, 6, 3), dtype=np.uint8)


# With cifarlab's own layers, whose generators do not depend on the backend Keras reports (Keras's
# image layers keep one per backend, and would see the one reported here).
@pytest.mark.parametrize("backend", ["tensorflow", "other"])
def test_a_stream_resumed_at_an_epoch_augments_as_the_uninterrupted_stream_did(
    backend, monkeypatch
):
    if backend == "other":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    settings = Augmentation(crop_padding=1, cutout=2)
    images = random_images(COUNT)

    def epochs(first: int) -> list:
        batches = input_pipeline.training_batches(images, labels_of(), CLASSES, 4, settings,
                                                  seed=1, first_epoch=first, epochs=3)  # fmt: skip
        return epochs_of(batches, 3 - first)

    uninterrupted, resumed = epochs(0), epochs(2)
    assert len(resumed) == 1
    for (resumed_images, resumed_labels), (images_then, labels_then) in zip(
        resumed[0], uninterrupted[2], strict=True
    ):
        np.testing.assert_allclose(resumed_images, images_then, atol=1e-6)
        np.testing.assert_array_equal(resumed_labels, labels_then)
    # Without skipping the draws it would have replayed epoch 0's augmentation.
    assert not np.allclose(uninterrupted[0][0][0], uninterrupted[2][0][0])


def augmented_stream(seed: int, settings: Augmentation, count: int = 96):
    """Two epochs of `count` random 6×6 images in batches of 4, augmented by `settings`."""
    return input_pipeline.training_batches(random_images(count), labels_of(count), CLASSES, 4,
                                           settings, seed=seed, epochs=2)  # fmt: skip


def test_the_same_seed_augments_every_batch_the_same_way_in_tensorflows_pipeline():
    # 48 batches an epoch, prepared by tf.data's parallel threads: each batch's rotations,
    # shifts, flips, crops and holes are those of its place in the run, every time.
    settings = Augmentation(rotation_degrees=10, shift=0.1, horizontal_flip=True,
                            crop_padding=1, cutout=2)  # fmt: skip
    first = epochs_of(augmented_stream(3, settings), 2)
    again = epochs_of(augmented_stream(3, settings), 2)
    for batches, batches_again in zip(first, again, strict=True):
        for (images, labels), (images_again, labels_again) in zip(batches, batches_again,
                                                                  strict=True):  # fmt: skip
            np.testing.assert_array_equal(images, images_again)
            np.testing.assert_array_equal(labels, labels_again)
    other = epochs_of(augmented_stream(4, settings), 2)
    assert not np.array_equal(first[0][0][0], other[0][0][0])


def test_pydataset_batches_are_augmented_by_their_place_not_by_the_order_threads_reach_them(
    other_backend,
):
    # Keras's worker threads finish batches in any order: read backwards by as many threads,
    # each batch of each epoch must still be what reading in order gives. (cifarlab's own
    # layers, as above.)
    settings = Augmentation(crop_padding=1, cutout=2)
    expected = epochs_of(augmented_stream(3, settings), 2)
    backwards = augmented_stream(3, settings)
    for epoch in range(2):
        with ThreadPoolExecutor(input_pipeline.PYDATASET_WORKERS) as threads:
            read = list(threads.map(lambda index: as_arrays(backwards[index]),
                                    reversed(range(len(backwards)))))[::-1]  # fmt: skip
        for (images, labels), (read_images, read_labels) in zip(expected[epoch], read,
                                                                strict=True):  # fmt: skip
            np.testing.assert_array_equal(read_images, images)
            np.testing.assert_array_equal(read_labels, labels)
        backwards.on_epoch_end()
    assert not np.array_equal(expected[0][0][0], expected[1][0][0])  # Each epoch draws anew.
    # And the draws are those of augmenting the batches one after another, as in tf.data.
    in_turn = augmentation.augmenter(settings, seed=3)
    for epoch, batches in enumerate(expected):
        order = input_pipeline.epoch_order(96, 3, epoch)
        for index, (images, _) in enumerate(batches):
            sources = input_pipeline.scale(random_images()[order[4 * index : 4 * index + 4]])
            drawn = keras.ops.convert_to_numpy(in_turn(sources, training=True))
            np.testing.assert_allclose(images, drawn, atol=1e-6)


def test_measuring_a_batchs_draws_leaves_the_generators_where_they_were():
    settings = Augmentation(rotation_degrees=10, shift=0.1, horizontal_flip=True, cutout=2)
    images = input_pipeline.scale(random_images(8))
    measured = augmentation.augmenter(settings, seed=5)
    steps = input_pipeline.draws_per_batch(measured, images[:4])
    assert all(np.all(step >= 0) for step in steps) and any(np.any(step) for step in steps)
    fresh = augmentation.augmenter(settings, seed=5)  # Its first batch is still the first.
    first = keras.ops.convert_to_numpy(fresh(images, training=True))
    after_measuring = keras.ops.convert_to_numpy(measured(images, training=True))
    np.testing.assert_array_equal(after_measuring, first)
