"""The notebook's own way of training, kept as the reference the benchmarks compare against.

The model is cifarlab's (the same layers and parameters), but it is fed as the notebook fed
it: float32 NumPy arrays in [0, 1] with one-hot labels, `model.fit(x, y, batch_size=...,
validation_data=(x_val, y_val))`, float32 throughout. For `augmented` the notebook fitted on
`ImageDataGenerator.flow`, which Keras 3 no longer has; its closest equivalent is
`AugmentingFlow`, a `keras.utils.PyDataset` applying the same Keras augmentation layers to each
float32 batch in Python, fitted with PyDataset's default settings (no extra workers).
"""

from __future__ import annotations

import keras
import numpy as np

from cifarlab import augmentation, input_pipeline, models, training
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset


def fit(config: Config, dataset: Dataset) -> dict:
    """Train `config` the notebook's way; its Keras history, with each epoch's `seconds`."""
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config, dataset.num_classes)
    models.compile_model(model, config)
    x_train, x_val = input_pipeline.scale(dataset.x_train), input_pipeline.scale(dataset.x_val)
    y_train = keras.utils.to_categorical(dataset.y_train, dataset.num_classes)
    y_val = keras.utils.to_categorical(dataset.y_val, dataset.num_classes)
    options = dict(epochs=config.epochs, validation_data=(x_val, y_val),
                   callbacks=[training.EpochTimer()], verbose=0)  # fmt: skip
    if config.augmentation.active:
        history = model.fit(AugmentingFlow(x_train, y_train, config), **options)
    else:
        history = model.fit(x_train, y_train, batch_size=config.batch_size, **options)
    return history.history


class AugmentingFlow(keras.utils.PyDataset):
    """`ImageDataGenerator.flow` in Keras 3 terms: shuffled float32 batches, augmented in Python."""

    def __init__(self, images: np.ndarray, one_hot: np.ndarray, config: Config):
        super().__init__()
        self.images, self.one_hot, self.batch_size = images, one_hot, config.batch_size
        self.augment = augmentation.augmenter(config.augmentation, config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = keras.ops.convert_to_numpy(self.augment(self.images[chosen], training=True))
        return batch, self.one_hot[chosen]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))
