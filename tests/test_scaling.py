"""A recipe stated for full CIFAR-10 on smaller training sets: its batch (and the learning rate
stated for it) halve until an epoch has `min_steps_per_epoch` steps, and `max_val_images` caps
the validation split, so that `modern` keeps its shape from 500 images per class to 50,000.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cifarlab import config as configs
from cifarlab import environment as cifarlab_environment
from cifarlab import run_folder, training
from cifarlab.data import dataset
from cifarlab.errors import UserError
from tests.conftest import write_cifar10_archive


@given(
    images=st.integers(1, 200_000),
    batch=st.integers(1, 4_096),
    min_steps=st.integers(0, 200),
    rate=st.floats(1e-5, 10),
)
def test_a_fitted_batch_is_the_largest_halving_that_makes_enough_steps(
    images, batch, min_steps, rate
):
    config = replace(configs.BASELINE, batch_size=batch, min_steps_per_epoch=min_steps,
                     learning_rate=rate)  # fmt: skip
    fitted = config.fitted_to(images)
    halvings = [batch >> count for count in range(batch.bit_length())]
    assert fitted.batch_size in halvings  # Halved, never grown.
    assert math.isclose(fitted.learning_rate / fitted.batch_size, rate / batch)
    enough = math.ceil(images / fitted.batch_size) >= min_steps
    assert enough or fitted.batch_size == 1
    position = halvings.index(fitted.batch_size)
    if position:  # The batch before it made too few steps: it halved no further than needed.
        assert math.ceil(images / halvings[position - 1]) < min_steps
    assert fitted.fitted_to(images) == fitted  # Fitting what ran changes nothing.
    others = {key for key, value in vars(fitted).items() if value != vars(config)[key]}
    assert others <= {"batch_size", "learning_rate"}


def test_modern_keeps_its_batch_on_full_data_and_halves_it_on_500_per_class():
    modern = configs.MODERN
    assert modern.fitted_to(49_000) is modern  # Full CIFAR-10 less 1,000 validation images.
    small = modern.fitted_to(4_000)  # 500 per class less 1,000 validation images.
    assert small.batch_size < modern.batch_size
    assert math.ceil(4_000 / small.batch_size) >= modern.min_steps_per_epoch
    assert small.learning_rate == modern.learning_rate * small.batch_size / modern.batch_size
    assert configs.BASELINE.fitted_to(10) is configs.BASELINE  # The notebook's never scale.


def _synthetic(count: int, classes: int = 10):
    labels = np.repeat(np.arange(classes), count // classes)
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    return images, labels, images[:classes], np.arange(classes), tuple(map(str, range(classes)))


def test_max_val_images_caps_a_random_and_a_stratified_split():
    images, labels, x_test, y_test, names = _synthetic(30_000)
    capped = dataset.split(images, labels, x_test, y_test, names, "synthetic", 0.2, 0,
                           max_val_images=1_000)  # fmt: skip
    assert len(capped.y_val) == 1_000 and len(capped.y_train) == 29_000
    assert capped.notes["val_split"] == (
        "a random 3% (1,000 images, the limit), seed 0, as in the notebook"
    )
    assert capped.spec.max_val_images == 1_000
    plain = dataset.split(images, labels, x_test, y_test, names, "synthetic", 0.2, 0)
    assert len(plain.y_val) == 6_000  # No limit: the notebook's 20%.
    loose = dataset.split(images, labels, x_test, y_test, names, "synthetic", 0.2, 0,
                          max_val_images=6_001)  # fmt: skip
    assert len(loose.y_val) == 6_000 and "limit" not in loose.notes["val_split"]
    small = dataset.split(*_synthetic(5_000), "synthetic", 0.2, 0, max_val_images=500)
    assert small.counts()["val"] == [50] * 10  # Under 20,000 images: per class.
    assert small.notes["val_split"] == "10% of each class (500 images, the limit), seed 0"


def test_max_val_images_caps_a_class_folder_split(tmp_path):
    from PIL import Image

    for name in ("apple", "banana"):
        (tmp_path / "fruit" / name).mkdir(parents=True)
        for index in range(50):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(tmp_path / "fruit" / name / f"{index}.png")
    loaded = dataset.load_folders(tmp_path / "fruit", 0.2, 0, 8, 0.2, quiet=True,
                                  max_val_images=8)  # fmt: skip
    assert loaded.counts()["test"] == [10, 10]  # The test split has no limit.
    assert loaded.counts()["val"] == [4, 4] and loaded.spec.max_val_images == 8
    assert loaded.notes["val_split"] == (
        "10% of each class (8 images, the limit), carved out with seed 0"
    )


def test_a_setting_below_zero_is_refused():
    for key in ("max_val_images", "min_steps_per_epoch"):
        with pytest.raises(UserError, match=f"The setting {key} must be at least 0"):
            configs.override(configs.BASELINE, **{key: -1})


class _Recorder(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.steps = int(self.model.optimizer.iterations)
        self.rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def test_a_run_trains_with_the_fitted_batch_and_records_both(tmp_path, caplog):
    """60 training images and a batch of 64 that wants 4 steps an epoch: batch 16, rate / 4."""
    archive = write_cifar10_archive(tmp_path / "tiny.tar.gz")
    # Batch normalization and `auto`: on a CPU fast in bfloat16, the config decides float32.
    config = replace(configs.BATCHNORM, epochs=2, batch_size=64, min_steps_per_epoch=4,
                     learning_rate=1e-3, precision="auto")  # fmt: skip
    data = dataset.load_for(config, archive, quiet=True)
    assert len(data.y_train) == 60  # 80 less 2 validation images of each class.
    recorder = _Recorder()
    with caplog.at_level(logging.INFO, logger="cifarlab"):
        training.train_and_evaluate(config, tmp_path / "run", data, quiet=True,
                                    callbacks=[recorder])  # fmt: skip
    assert (recorder.steps, recorder.rate) == (2 * 4, pytest.approx(1e-3 / 4))
    said = [record.getMessage() for record in caplog.records if "a batch of" in record.getMessage()]
    assert said == ["batchnorm: a batch of 16 at learning rate 0.00025, so that 60 training "
                    "images make at least 4 steps an epoch."]  # fmt: skip
    # The config is what was declared; the batch and rate it came to are recorded beside it.
    assert run_folder.read_config(tmp_path / "run") == config
    environment = json.loads((tmp_path / "run" / run_folder.ENVIRONMENT).read_text())
    assert (environment["batch_size"], environment["learning_rate"]) == (16, pytest.approx(2.5e-4))
    assert environment["precision"] == cifarlab_environment.choose_precision("auto", config)[0]
    # The same declaration on the same data is the same run: a second train resumes nothing
    # and is refused as finished, not as another config.
    with pytest.raises(UserError, match="holds a finished run"):
        training.train_and_evaluate(config, tmp_path / "run", data, quiet=True)


def test_a_run_that_needs_no_scaling_says_nothing_of_it(tmp_path, caplog):
    archive = write_cifar10_archive(tmp_path / "tiny.tar.gz")
    config = replace(configs.BASELINE, epochs=1, batch_size=16, min_steps_per_epoch=4,
                     precision="float32")  # fmt: skip
    data = dataset.load_for(config, archive, quiet=True)
    with caplog.at_level(logging.INFO, logger="cifarlab"):
        training.train_and_evaluate(config, tmp_path / "run", data, quiet=True)
    assert not [record for record in caplog.records if "a batch of" in record.getMessage()]
    environment = json.loads((tmp_path / "run" / run_folder.ENVIRONMENT).read_text())
    assert (environment["batch_size"], environment["learning_rate"]) == (16, 1e-3)
