"""The Python API: the same functions the CLI calls, with objects that display in notebooks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure

import cifarlab
from cifarlab.errors import UserError


def test_every_public_name_resolves():
    for name in cifarlab.__all__:
        assert callable(getattr(cifarlab, name)), name


def test_train_from_python_gives_a_run_to_inspect(tiny_archive, tmp_path):
    data = cifarlab.load_data(tiny_archive, seed=2)
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((epoch, logs["val_loss"]))
    )
    run = cifarlab.train(
        "C", data=data, epochs=2, out=tmp_path / "run", quiet=True, callbacks=[recorder]
    )
    assert run.config.name == "batchnorm" and run.config.seed == 2 and run.config.epochs == 2
    assert run.metrics["epochs_run"] == 2
    assert list(run.history["epoch"]) == [0, 1]
    assert np.all(np.isfinite(run.history["val_loss"]))
    losses = run.history["val_loss"]
    assert seen == [(epoch, pytest.approx(loss)) for epoch, loss in enumerate(losses)]
    assert isinstance(run.plot_curves(), Figure)
    assert "batchnorm" in repr(run) and "test accuracy" in repr(run)
    assert "<table>" in run._repr_html_()
    assert cifarlab.open_run(tmp_path / "run").metrics == run.metrics


def test_a_seed_that_contradicts_the_datas_split_is_refused(tiny_archive, tmp_path):
    data = cifarlab.load_data(tiny_archive, seed=2)
    with pytest.raises(UserError, match="seed=2"):
        cifarlab.train("baseline", data=data, seed=3, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_opening_a_folder_that_is_no_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        cifarlab.open_run(tmp_path)
