"""Lookahead as airbench schedules it: the weights a fit ends with, step by step against a
reference loop, and a resume that continues where the uninterrupted run would be."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifarlab import config, input_pipeline, models, run_folder, training
from cifarlab.data import dataset as datasets
from cifarlab.models.optimizers import LOOKAHEAD_DECAY, LOOKAHEAD_EVERY

BATCH = 4


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), loss="categorical_crossentropy")
    return model


def data(steps: int):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(steps * BATCH, 6)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, len(x))]


def floats(model):
    return [v for v in model.variables if "float" in str(v.dtype)]


def reference(x, y, steps_per_epoch: int, epochs: int):
    """Lookahead written out: train_on_batch, and every 5th (and the last) step the blend."""
    model = tiny_model()
    total = steps_per_epoch * epochs
    slow = [v.numpy() for v in floats(model)]
    for step in range(1, total + 1):
        start = (step - 1) % steps_per_epoch * BATCH
        model.train_on_batch(x[start : start + BATCH], y[start : start + BATCH])
        if step % LOOKAHEAD_EVERY == 0 or step == total:
            share = 1.0 if step == total else LOOKAHEAD_DECAY * (step / total) ** 3
            for index, variable in enumerate(floats(model)):
                slow[index] = share * slow[index] + (1 - share) * variable.numpy()
                variable.assign(slow[index])
    return [v.numpy() for v in floats(model)]


@pytest.mark.parametrize("steps_per_epoch", [6, 7])  # Epochs ending between and on updates.
def test_a_fit_ends_with_the_weights_of_the_written_out_lookahead(steps_per_epoch):
    x, y = data(steps_per_epoch)
    model = tiny_model()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[models.Lookahead(2 * steps_per_epoch)])  # fmt: skip
    plain = tiny_model()
    plain.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    expected = reference(x, y, steps_per_epoch, 2)
    for got, want in zip(floats(model), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # Without the callback the same fit ends elsewhere: the reference is not plain SGD.
    assert not all(np.allclose(a.numpy(), b) for a, b in zip(floats(plain), expected, strict=True))


def test_a_resumed_fit_continues_from_its_step_and_restored_weights():
    x, y = data(LOOKAHEAD_EVERY)  # Each epoch ends on an update, where the copies agree.
    model = tiny_model()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[models.Lookahead(3 * LOOKAHEAD_EVERY)])  # fmt: skip
    # A new callback, as a resumed process makes: its step comes from the optimizer.
    model.fit(x, y, batch_size=BATCH, initial_epoch=1, epochs=3, shuffle=False, verbose=0,
              callbacks=[models.Lookahead(3 * LOOKAHEAD_EVERY)])  # fmt: skip
    for got, want in zip(floats(model), reference(x, y, LOOKAHEAD_EVERY, 3), strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


class WeightsAfterStep(keras.callbacks.Callback):
    """The model's weights after training step `step` (and after the stock callbacks)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.weights = step, None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.step:
            self.weights = self.model.get_weights()


@pytest.mark.parametrize("lookahead", [True, False])
def test_a_run_with_lookahead_ends_on_its_slow_weights(tiny_archive, tmp_path, lookahead):
    # One epoch of 8 steps, whose last update (share 1) sets the weights to the slow copy as
    # step 5's update left it.
    base = config.override(config.MODERN, epochs=1, batch_size=8, min_steps_per_epoch=0,
                           filters=(8, 8), precision="float32", lookahead=lookahead)  # fmt: skip
    dataset = datasets.load_for(base, tiny_archive, quiet=True)
    assert input_pipeline.steps_per_epoch(len(dataset.y_train), 8) == 8
    after_update = WeightsAfterStep(LOOKAHEAD_EVERY)
    training.train_and_evaluate(base, tmp_path, dataset, quiet=True, callbacks=[after_update])
    assert run_folder.read_json(tmp_path / run_folder.CONFIG)["lookahead"] is lookahead
    final = models.load_model(tmp_path / run_folder.BEST_MODEL).get_weights()
    pairs = list(zip(final, after_update.weights, strict=True))
    assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in pairs) is lookahead
