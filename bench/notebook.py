"""The notebook's own way of training, kept as the reference the benchmarks compare against.

Everything is the notebook's steps B–H as written there, float32:

* the network as steps D and H write it: a `Sequential` of Keras's own layers (Conv2D,
  BatchNormalization, Activation, ...), compiled with `Adam(learning_rate=...)` and
  categorical cross-entropy; the same layers and parameter counts as cifarlab's, but not
  cifarlab's code, so no change to cifarlab's network can reach the reference;

* the images scaled as step B does (`x.astype("float32")`, then `x /= 255`), the labels made
  one-hot with `to_categorical` (step C);
* `baseline` and `batchnorm`: `model.fit(x_train, y_train_c, batch_size=32 or 64,
  validation_data=(x_val, y_val_c), callbacks=[ModelCheckpoint(..., monitor="val_loss",
  save_best_only=True)])`, so validation also runs at the training batch size;
* `augmented`: `model.fit(datagen.flow(x_train, y_train_c, batch_size=32), ...)` with the real
  `ImageDataGenerator(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
  horizontal_flip=True)`. Keras 3 on TensorFlow still ships it as
  `tf.keras.preprocessing.image.ImageDataGenerator` (the class in
  `keras.src.legacy.preprocessing.image`); its `flow` iterator is a `PyDataset` one epoch
  (`ceil(n / 32)` batches) long, so `model.fit` takes it as the notebook passes it, with the
  same default of one worker: each batch is augmented image by image with SciPy, in the
  training thread, between steps.

The deliberate differences are `verbose=0` instead of the notebook's progress bar, and seeds:
the weights and dropout are seeded (`keras.utils.set_random_seed`), the batch order of
`model.fit(x, y)` is not, as in the notebook (see `fit`). The
checkpoint goes to a scratch `.h5` file, as the notebook's did to Google Drive.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import keras
from keras.layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPooling2D,
)
from keras.models import Sequential
from keras.optimizers import Adam

from cifarlab import config as configs
from cifarlab import training
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset

EXPERIMENTS = ("baseline", "augmented", "batchnorm")  # The notebook's steps E, F and H.


def fit(config: Config, dataset: Dataset, reshuffle: bool = True) -> dict:
    """Train `config` the notebook's way; its Keras history, with each epoch's `seconds`.

    `seconds` is `training.EpochTimer`'s, as in cifarlab's runs: training and validation,
    not the checkpoint written after them.
    """
    augmentation = config.augmentation
    if not notebooks_own(config) or augmentation.crop_padding or augmentation.cutout:
        raise ValueError(
            f"The notebook's way trains only its own network with ImageDataGenerator's rotation, "
            f"shift and flip; {config.name} needs more, so time it with cifarlab alone."
        )
    # This also seeds NumPy's global generator, which ImageDataGenerator draws from.
    keras.utils.set_random_seed(config.seed)
    model = network(config, dataset.x_train.shape[1:], dataset.num_classes)
    if reshuffle:
        # Keras 3 on TensorFlow orders NumPy arrays for `fit` with `tf.random.shuffle` in a
        # tf.data map. Once TensorFlow's global seed is set (above), that draws the same order
        # for every epoch (bench/fidelity.py). The notebook sets no seed, so its epochs are
        # reshuffled; clearing the seed once the weights are drawn keeps that. Dropout's masks
        # come from its own seeded generator, and ImageDataGenerator's order from NumPy's.
        import tensorflow as tf

        tf.random.set_seed(None)
    x_train, x_val = scaled(dataset.x_train), scaled(dataset.x_val)
    y_train_c = keras.utils.to_categorical(dataset.y_train, dataset.num_classes)
    y_val_c = keras.utils.to_categorical(dataset.y_val, dataset.num_classes)
    with tempfile.TemporaryDirectory(prefix="notebook-checkpoint-") as folder, QuietH5Saving():
        checkpoint = keras.callbacks.ModelCheckpoint(
            Path(folder) / f"{config.name}.h5", monitor="val_loss", verbose=0, save_best_only=True
        )
        options = dict(epochs=config.epochs, verbose=0, validation_data=(x_val, y_val_c),
                       callbacks=[training.EpochTimer(), checkpoint])  # fmt: skip
        if config.augmentation.active:
            datagen = image_data_generator(config)
            history = model.fit(
                datagen.flow(x_train, y_train_c, batch_size=config.batch_size), **options
            )
        else:
            history = model.fit(x_train, y_train_c, batch_size=config.batch_size, **options)
    return history.history


def notebooks_own(config: Config) -> bool:
    """Whether `config` trains the notebook's network with Adam, as steps E, F and H do."""
    notebook = configs.experiment("batchnorm" if config.batch_norm else "baseline")
    return all(getattr(config, key) == getattr(notebook, key) for key in NETWORK_AND_OPTIMIZER)


NETWORK_AND_OPTIMIZER = (
    *("filters", "convs_per_block", "kernel_size", "dense_units", "dropout", "model"),
    *("optimizer", "weight_decay", "schedule", "label_smoothing"),
)


def network(config: Config, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Model A (step D) or, with `batch_norm`, model C (step H), as the notebook writes them."""
    model = Sequential()
    model.add(keras.Input(shape=input_shape))
    for filters in (32, 64):
        for _ in range(2):
            if config.batch_norm:
                model.add(Conv2D(filters, (3, 3), padding="same", use_bias=False))
                model.add(BatchNormalization())
                model.add(Activation("relu"))
            else:
                model.add(Conv2D(filters, (3, 3), activation="relu", padding="same"))
        model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Flatten())
    if config.batch_norm:
        model.add(Dense(512, use_bias=False))
        model.add(BatchNormalization())
        model.add(Activation("relu"))
    else:
        model.add(Dense(512, activation="relu"))
    model.add(Dropout(0.5))
    model.add(Dense(num_classes, activation="softmax"))
    model.compile(optimizer=Adam(learning_rate=config.learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    return model


def scaled(images):
    """Step B: float32 pixels in [0, 1], written as the notebook writes it."""
    images = images.astype("float32")
    images /= 255
    return images


def image_data_generator(config: Config):
    """Step F's `ImageDataGenerator` with `config`'s rotation, shift and flip."""
    import tensorflow as tf

    augmentation = config.augmentation
    return tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=augmentation.rotation_degrees,
        width_shift_range=augmentation.shift,
        height_shift_range=augmentation.shift,
        horizontal_flip=augmentation.horizontal_flip,
    )


class QuietH5Saving(logging.Filter):
    """Silences Keras 3's "HDF5 file ... legacy" warning at every checkpoint the notebook saves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HDF5 file" not in record.getMessage()

    def __enter__(self):
        logging.getLogger("absl").addFilter(self)
        return self

    def __exit__(self, *exception):
        logging.getLogger("absl").removeFilter(self)
