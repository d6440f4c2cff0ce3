"""The notebook's steps B and C, per batch: uint8 images become float32 in [0, 1], labels one-hot.

Augmentation is part of the training input only, so a saved model needs no special case at
inference. On the TensorFlow backend the batches come from a parallel, prefetching `tf.data`
pipeline; on the other backends (JAX, PyTorch) from a `keras.utils.PyDataset` that does the
same work with the same Keras augmentation layers, so TensorFlow is never needed there.
"""

from __future__ import annotations

import math
import threading

import keras
import numpy as np

from cifarlab.augmentation import augmenter
from cifarlab.config import Augmentation

EVAL_BATCH_SIZE = 500  # Inference needs no small batches; larger ones waste less per step.
# Threads preparing PyDataset batches ahead of the model (backends other than TensorFlow), so
# scaling and augmentation overlap with training steps instead of running between them.
PYDATASET_WORKERS = 4


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], as the notebook's step B."""
    return np.asarray(images, dtype=np.float32) / 255.0


def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training images in `epoch` (0-based): it depends only on (seed, epoch),
    so a run resumed at any epoch sees the same batches as one that was never interrupted."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def _generator_states(augment: keras.Sequential) -> list:
    return [v for v in augment.variables if v.path.endswith("seed_generator_state")]


def draws_per_batch(augment: keras.Sequential, sample: np.ndarray) -> list[np.ndarray]:
    """How far one batch advances each of `augment`'s random generators, measured on `sample`
    and undone. Keras's generators count their draws (state (seed, n) becomes (seed, n + 1)),
    and a batch takes the same number whatever its images."""
    states = _generator_states(augment)
    before = [np.asarray(state) for state in states]
    augment(sample, training=True)
    steps = [np.asarray(state) - start for state, start in zip(states, before, strict=True)]
    set_draws(augment, before, steps, 0)
    return steps


def set_draws(augment: keras.Sequential, start: list, steps: list, batches: int) -> None:
    """Set `augment`'s generators to where they stand after `batches` batches from `start`."""
    for state, first, step in zip(_generator_states(augment), start, steps, strict=True):
        state.assign(first + step * batches)


def skip_draws(augment: keras.Sequential, batches: int, sample: np.ndarray) -> None:
    """Advance `augment`'s random generators past the draws of `batches` batches, so that a run
    resumed after them augments its next batch as an uninterrupted run would."""
    start = [np.asarray(state) for state in _generator_states(augment)]
    set_draws(augment, start, draws_per_batch(augment, sample), batches)


def training_batches(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    augmentation: Augmentation,
    seed: int,
    first_epoch: int = 0,
    epochs: int = 1,
):
    """Shuffled, optionally augmented training batches for epochs `first_epoch` to `epochs`,
    as one stream of `steps_per_epoch` batches per epoch (fit it with that `steps_per_epoch`).

    One stream for the whole run means one iterator: Keras keeps it across epochs instead of
    building a new one, and with it a new shuffle, at every epoch's start. A stream that starts
    at a later epoch (a resumed run) first skips the augmentation drawn for the epochs before
    (the `PyDataset` sets each batch's draws by its place in the run anyway).
    """
    augment = augmenter(augmentation, seed)
    if keras.backend.backend() == "tensorflow":
        if augment is not None and first_epoch:
            done = first_epoch * steps_per_epoch(len(labels), batch_size)
            skip_draws(augment, done, scale(images[:batch_size]))
        return _tf_training_batches(
            images, labels, num_classes, batch_size, augment, seed, first_epoch, epochs
        )
    return ArrayBatches(images, labels, num_classes, batch_size, True, augment, seed, first_epoch)


def _tf_training_batches(images, labels, num_classes, batch_size, augment, seed, first, epochs):
    import tensorflow as tf

    images_tensor = tf.convert_to_tensor(images)
    labels_tensor = tf.convert_to_tensor(labels.astype(np.int32))
    orders = np.stack([epoch_order(len(labels), seed, epoch) for epoch in range(first, epochs)])

    def gather(indices):
        batch_images = tf.cast(tf.gather(images_tensor, indices), tf.float32) / 255.0
        return batch_images, tf.one_hot(tf.gather(labels_tensor, indices), num_classes)

    batches = tf.data.Dataset.from_tensor_slices(orders.astype(np.int32)).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    batches = batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # One batch at a time, in order: the layers' generators are state that every call
        # advances, so parallel calls would take the draws in whatever order they happened to
        # run, and the same seed would augment differently from run to run.
        batches = batches.map(lambda images, labels: (augment(images, training=True), labels))
    return batches.prefetch(tf.data.AUTOTUNE)


def evaluation_batches(
    images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int = EVAL_BATCH_SIZE
):
    """Batches in order, unaugmented, for validation, evaluation and prediction."""
    if keras.backend.backend() == "tensorflow":
        return _tf_evaluation_batches(images, labels, num_classes, batch_size)
    return ArrayBatches(images, labels, num_classes, batch_size, False, None, 0)


def image_batches(images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE):
    """Scaled images alone, in order, for `model.predict`."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        return batches.map(lambda batch: tf.cast(batch, tf.float32) / 255.0).prefetch(2)
    return ArrayBatches(images, None, 0, batch_size, False, None, 0)


def _tf_evaluation_batches(images, labels, num_classes, batch_size):
    import tensorflow as tf

    def prepare(batch_images, batch_labels):
        return tf.cast(batch_images, tf.float32) / 255.0, tf.one_hot(batch_labels, num_classes)

    batches = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    batches = batches.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


class ArrayBatches(keras.utils.PyDataset):
    """Batches from in-memory uint8 arrays for backends without `tf.data`; when shuffling, each
    epoch's order is `epoch_order(seed, epoch)`, counted from `first_epoch`."""

    def __init__(self, images, labels, num_classes, batch_size, shuffle, augment, seed,
                 first_epoch=0):  # fmt: skip
        super().__init__(workers=PYDATASET_WORKERS, use_multiprocessing=False)
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size = num_classes, batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.epoch = first_epoch
        self.order = self._order()
        if augment is not None:
            # The worker threads augment batches in whatever order they finish, so each batch
            # sets the generators to where its place in the run (from epoch 0) puts them, under
            # a lock; built here, once, so that the threads do not race to build it.
            augment.build((None, *images.shape[1:]))
            self.lock = threading.Lock()
            self.start = [np.asarray(state) for state in _generator_states(augment)]
            self.steps = draws_per_batch(augment, scale(images[:batch_size]))

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.images))
        return epoch_order(len(self.images), self.seed, self.epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch_images = scale(self.images[chosen])
        if self.augment is not None:
            with self.lock:
                done = self.epoch * len(self) + index
                set_draws(self.augment, self.start, self.steps, done)
                batch_images = self.augment(batch_images, training=True)
            batch_images = keras.ops.convert_to_numpy(batch_images)
        if self.labels is None:
            return (batch_images,)
        one_hot = np.eye(self.num_classes, dtype=np.float32)[self.labels[chosen]]
        return batch_images, one_hot

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
