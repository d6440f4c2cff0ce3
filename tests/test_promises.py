"""cifarlab's promises, stated so that breaking one fails a test: a resumed run equals an
uninterrupted one, the checkpoint holds the lowest validation loss, no pickle global outside the
allow-list runs, augmentation moves pixels both ways by the configured amounts, the full-size
split follows its seed, and the learning-rate schedules take the values they promise.

Each test was checked against the bug it names, planted in a copy of the package."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pickle
import shlex
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cifarlab import augmentation, config, models, training
from cifarlab.config import Augmentation
from cifarlab.data import dataset, safe_files
from cifarlab.errors import UserError
from cifarlab.run_folder import read_history
from tests.conftest import backed_up_epoch, kill_once_backed_up, write_cifar10_archive

CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")


# 1. A resumed run equals an uninterrupted one.


def _environment(cache: Path, op_determinism: bool = True) -> dict[str, str]:
    # Two uninterrupted runs of the baseline command on a CPU gave bit-identical histories and
    # weights with and without TF_DETERMINISTIC_OPS (measured); it is set so that TensorFlow
    # picks deterministic kernels wherever it has a choice, which makes exact equality the rule.
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if op_determinism:
        environment["TF_DETERMINISTIC_OPS"] = "1"
    return environment


def _curves(run_dir: Path) -> list[dict]:
    """Every epoch's losses and accuracies; the wall-clock `seconds` column differs by nature."""
    return [{key: row[key] for key in ("epoch", *CURVES)} for row in read_history(run_dir)]


def _checkpoint_arrays(path: Path) -> list[np.ndarray]:
    """The weights and the optimizer's state (step count, Adam's moments) of a `.keras` file."""
    model = keras.models.load_model(path)
    return [np.asarray(v) for v in (*model.weights, *model.optimizer.variables)]


# An experiment with nothing random in its training steps: no dropout, no augmentation. Its
# cosine schedule makes every step's learning rate depend on the step count the resume restores.
RESUMABLE_TOML = """
[experiments.resumable]
base = "baseline"
dropout = 0.0
schedule = "cosine"
"""


def _small_archive(tmp_path: Path) -> Path:
    return write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_class=40,
                                 test_per_class=2)  # fmt: skip


def _train_command(experiment: list[str], archive: Path, out: Path) -> list[str]:
    """Train `experiment` for 3 epochs at batch 8 in float32, seed 0, into `out`."""
    return [sys.executable, "-m", "cifarlab.cli", "train", *experiment, "--data", str(archive),
            "--epochs", "3", "--batch-size", "8", "--precision", "float32", "--seed", "0",
            "--quiet", "--out", str(out)]  # fmt: skip


def _train_killed_and_uninterrupted(tmp_path: Path, experiment: list[str]) -> tuple[Path, Path]:
    """Train `experiment` for 3 epochs twice by the same command: once straight through, once
    killed with SIGKILL early in epoch 2 and rerun. The two run folders."""
    # 400 images hold out 80 for validation: 320 at batch 8 are 40 steps, about 1.5 s an epoch
    # on a CPU, so a kill within 20 ms of epoch 1's backup lands early in epoch 2.
    archive = _small_archive(tmp_path)
    environment = _environment(tmp_path / "cache")
    command = partial(_train_command, experiment, archive)
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    subprocess.run(command(uninterrupted), env=environment, check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    process = subprocess.Popen(command(resumed), env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    kill_once_backed_up(process, resumed / "backup")
    # The kill landed in epoch 2: one epoch recorded and backed up, the run unfinished.
    assert backed_up_epoch(resumed / "backup") == 1
    assert len(read_history(resumed)) == 1 and not (resumed / "metrics.json").exists()
    subprocess.run(command(resumed), env=environment, check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    return resumed, uninterrupted


def _assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    # Epochs 2 and 3 ran after the resume: they match only if the weights, Adam's moments, its
    # step count and learning rate came back, and the batches of epoch e are those of (seed, e).
    assert len(_curves(uninterrupted)) == 3
    assert _curves(resumed) == _curves(uninterrupted)
    for after_resume, straight in zip(_checkpoint_arrays(resumed / "best.keras"),
                                      _checkpoint_arrays(uninterrupted / "best.keras"),
                                      strict=True):  # fmt: skip
        np.testing.assert_array_equal(after_resume, straight)
    np.testing.assert_array_equal(np.load(resumed / "test_probabilities.npy"),
                                  np.load(uninterrupted / "test_probabilities.npy"))  # fmt: skip


@pytest.mark.slow
def test_a_run_killed_in_epoch_2_and_rerun_equals_an_uninterrupted_run(tmp_path):
    experiments = tmp_path / "resumable.toml"
    experiments.write_text(RESUMABLE_TOML)
    _assert_same_run(
        *_train_killed_and_uninterrupted(tmp_path, ["resumable", "--experiments", str(experiments)])
    )


@pytest.mark.slow
def test_a_killed_augmented_run_augments_its_remaining_epochs_as_an_uninterrupted_one(tmp_path):
    # The rotations, shifts and flips of epochs 2 and 3 must be those the uninterrupted run drew
    # there, not a replay of epoch 1's: the rerun skips the draws of the epochs already run.
    _assert_same_run(*_train_killed_and_uninterrupted(tmp_path, ["augmented"]))


@pytest.mark.slow
def test_the_same_augmented_command_twice_is_the_same_run_without_op_determinism(tmp_path):
    # As users run it, without TF_DETERMINISTIC_OPS: tf.data's threads prepare the batches in
    # parallel, and each batch's augmentation must still be the one its place in the run draws.
    archive = _small_archive(tmp_path)
    environment = _environment(tmp_path / "cache", op_determinism=False)
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        subprocess.run(_train_command(["augmented"], archive, out), env=environment, check=True,
                       capture_output=True, timeout=600)  # fmt: skip
    _assert_same_run(*runs)


class _InterruptionError(Exception):
    pass


class _InterruptAfterFirstEpoch(keras.callbacks.Callback):
    """Stops training like a kill early in epoch 2: after the stock callbacks, the backup
    among them, have recorded epoch 1."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise _InterruptionError


def test_a_resumed_baseline_with_dropout_equals_an_uninterrupted_one(tiny_archive, tmp_path):
    # In-process, as the command's `train_and_evaluate`: two uninterrupted runs of this on a
    # CPU are bit-identical (measured); the interruption is an exception after epoch 1's backup.
    run_config = config.override(config.experiment("baseline"), epochs=3, batch_size=8,
                                 precision="float32")  # fmt: skip
    data = dataset.load_for(run_config, tiny_archive)
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    training.train_and_evaluate(run_config, uninterrupted, data, quiet=True)
    with pytest.raises(_InterruptionError):
        training.train_and_evaluate(run_config, resumed, data, quiet=True,
                                    callbacks=[_InterruptAfterFirstEpoch()])  # fmt: skip
    assert backed_up_epoch(resumed / "backup") == 1 and len(read_history(resumed)) == 1
    training.train_and_evaluate(run_config, resumed, data, quiet=True)
    _assert_same_run(resumed, uninterrupted)


# 2. The checkpoint holds the lowest validation loss, wherever it falls.


def test_the_checkpoint_holds_the_lowest_validation_loss_not_the_last_epochs(tmp_path):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", per_class=20,
                                    test_per_class=2)  # fmt: skip
    run_config = config.override(config.experiment("baseline"), epochs=6, batch_size=16,
                                  learning_rate=3e-4, precision="float32")  # fmt: skip
    data = dataset.load_for(run_config, archive)
    # A quarter of the validation labels moved to the next class: while the model is unsure,
    # learning lowers the validation loss; once it is confident, the loss of those wrong labels
    # grows without bound. So the validation loss falls, then rises, while the training loss
    # keeps falling: its minimum is neither the last epoch nor the lowest training loss's.
    val_labels = data.y_val.copy()
    wrong = len(val_labels) // 4
    val_labels[:wrong] = (val_labels[:wrong] + 1) % data.num_classes
    data = dataclasses.replace(data, y_val=val_labels)
    out = tmp_path / "run"
    training.train_and_evaluate(run_config, out, data, quiet=True)

    rows = read_history(out)
    val_losses = [row["val_loss"] for row in rows]
    best = int(np.argmin(val_losses))
    lowest_training = int(np.argmin([row["loss"] for row in rows]))
    assert best != len(rows) - 1, f"validation loss never rose: {val_losses}"
    assert best != lowest_training, f"the two minima coincide: {val_losses}"

    model = keras.models.load_model(out / "best.keras")
    one_hot = np.eye(data.num_classes, dtype=np.float32)[data.y_val]
    scored = model.evaluate(data.x_val.astype(np.float32) / 255, one_hot, verbose=0,
                            return_dict=True)["loss"]  # fmt: skip
    assert scored == pytest.approx(val_losses[best], rel=1e-4, abs=1e-6)
    for other in (len(rows) - 1, lowest_training):
        assert abs(val_losses[other] - val_losses[best]) > 1e-3 * val_losses[best]


# 3. No pickle global outside the allow-list runs, or is even imported.


def _global_pickle(module: str, name: str, args: tuple | None, opcode: str) -> bytes:
    """A pickle naming `module.name` by `opcode`; with `args`, it calls it with them as it loads.

    GLOBAL and INST are protocol 0–2's ways to name a global, STACK_GLOBAL protocol 4's; REDUCE
    and INST call what they name. The arguments are pickled without their header and STOP.
    """
    if opcode == "INST":
        items = b"".join(pickle.dumps(arg, protocol=0)[:-1] for arg in args or ())
        return b"(" + items + f"i{module}\n{name}\n".encode() + b"."
    if opcode == "GLOBAL":
        header, named = b"\x80\x02", f"c{module}\n{name}\n".encode()
    else:
        encoded = [part.encode() for part in (module, name)]
        header = b"\x80\x04"
        named = b"".join(b"\x8c" + bytes([len(part)]) + part for part in encoded) + b"\x93"
    if args is None:
        return header + named + b"."
    return header + named + pickle.dumps(args, protocol=2)[2:-1] + b"R."


def _module_names(module_name: str) -> list[tuple[str, str]]:
    module = __import__(module_name, fromlist=["_"])
    return [(module_name, name) for name in sorted(dir(module))]


# Every global of the modules an attacker reaches for, builtins and NumPy in full.
_REACHABLE = [
    pair
    for module_name in (
        "builtins",
        "os",
        "posix",
        "subprocess",
        "shutil",
        "pickle",
        "io",
        "codecs",
        "_codecs",
        "importlib",
        "sys",
        "operator",
        "functools",
        "runpy",
        "numpy",
        "numpy.testing",
        "numpy.testing._private.utils",
        "numpy._core.multiarray",
        "numpy._core.numeric",
    )  # fmt: skip
    for pair in _module_names(module_name)
    if pair not in safe_files._ALLOWED_GLOBALS
]


@settings(max_examples=400, database=None, deadline=None)
@given(pair=st.sampled_from(_REACHABLE), opcode=st.sampled_from(["GLOBAL", "STACK_GLOBAL"]))
@example(pair=("builtins", "eval"), opcode="GLOBAL")
@example(pair=("numpy", "load"), opcode="STACK_GLOBAL")
@example(pair=("numpy", "frombuffer"), opcode="GLOBAL")
@example(pair=("numpy._core.multiarray", "scalar"), opcode="GLOBAL")
def test_every_global_outside_the_allow_list_is_refused(pair, opcode):
    # Naming the global is enough: a widened allow-list would hand the object back.
    with pytest.raises(UserError, match="not a valid dataset file"):
        safe_files.safe_unpickle(_global_pickle(*pair, None, opcode), "x")


def _side_effects(marker: Path, scratch: Path) -> dict[tuple[str, str], tuple]:
    """For each dangerous global, arguments whose call would create `marker` (or a file beside
    it, named after it). Writes into `scratch` the inputs some of them read: a pickle that
    writes the marker, and a module whose import writes it."""
    code = f"open({str(marker)!r}, 'w').close()"
    nested = scratch / f"{marker.name}.pkl"
    nested_payload = _global_pickle("builtins", "exec", (code,), "GLOBAL")
    nested.write_bytes(nested_payload)
    (scratch / f"{marker.name}.py").write_text(code + "\n")
    touch = ["touch", str(marker)]
    return {
        ("builtins", "eval"): (code,),
        ("builtins", "exec"): (code,),
        ("builtins", "open"): (str(marker), "w"),
        ("builtins", "__import__"): (marker.name,),  # The module below writes the marker.
        ("io", "open"): (str(marker), "w"),
        ("codecs", "open"): (str(marker), "w"),
        ("os", "system"): (f"touch {shlex.quote(str(marker))}",),
        ("posix", "system"): (f"touch {shlex.quote(str(marker))}",),
        ("os", "mkdir"): (str(marker),),
        ("subprocess", "call"): (touch,),
        ("subprocess", "check_call"): (touch,),
        ("subprocess", "run"): (touch,),
        ("subprocess", "Popen"): (touch,),
        ("shutil", "copyfile"): (str(nested), str(marker)),
        ("pickle", "loads"): (nested_payload,),
        ("numpy", "save"): (str(marker), [1]),
        ("numpy", "savetxt"): (str(marker), [1]),
        ("numpy", "load"): (str(nested), None, True),  # allow_pickle=True runs the nested pickle.
        ("numpy.testing._private.utils", "runstring"): (code, {}),
        (marker.name, "anything"): (),  # Importing the module alone would write the marker.
    }


_DANGEROUS = [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "open"), ("builtins", "__import__"),
    ("io", "open"), ("codecs", "open"), ("os", "system"), ("posix", "system"), ("os", "mkdir"),
    ("subprocess", "call"), ("subprocess", "check_call"), ("subprocess", "run"),
    ("subprocess", "Popen"), ("shutil", "copyfile"), ("pickle", "loads"), ("numpy", "save"),
    ("numpy", "savetxt"), ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
    ("<module writing the marker>", "anything"),
]  # fmt: skip


@settings(max_examples=150, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    pair=st.sampled_from(_DANGEROUS),
    opcode=st.sampled_from(["GLOBAL", "STACK_GLOBAL", "INST"]),
)
@example(pair=("builtins", "exec"), opcode="GLOBAL")
@example(pair=("os", "system"), opcode="STACK_GLOBAL")
@example(pair=("numpy", "save"), opcode="GLOBAL")
@example(pair=("numpy.testing._private.utils", "runstring"), opcode="INST")
@example(pair=("<module writing the marker>", "anything"), opcode="GLOBAL")
def test_a_pickle_calling_a_dangerous_global_is_refused_and_nothing_runs(
    pair, opcode, tmp_path, monkeypatch
):
    # Hypothesis reuses `tmp_path` across examples: each example gets folders of its own.
    key = uuid.uuid4().hex
    markers, scratch = tmp_path / key / "markers", tmp_path / key / "scratch"
    markers.mkdir(parents=True)
    scratch.mkdir()
    marker = markers / f"ran_{key}"
    monkeypatch.syspath_prepend(str(scratch))
    effects = _side_effects(marker, scratch)
    importlib.invalidate_caches()  # So the module just written would be found, if looked for.
    module, name = (marker.name, "anything") if pair[0].startswith("<") else pair
    payload = _global_pickle(module, name, effects[module, name], opcode)
    try:
        with pytest.raises(UserError, match="not a valid dataset file"):
            safe_files.safe_unpickle(payload, "x")
    finally:
        sys.modules.pop(marker.name, None)
    if pair == ("subprocess", "Popen"):
        time.sleep(0.2)  # A started process would write the marker only after returning.
    assert list(markers.iterdir()) == [], f"{module}.{name} ran"


def test_the_allowed_globals_still_read_an_array():
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    loaded = safe_files.safe_unpickle(pickle.dumps({b"data": array}, protocol=2), "x")
    np.testing.assert_array_equal(loaded[b"data"], array)


# 4. Augmentation moves pixels both ways, as far as configured.


def _two_marker_images(count: int) -> np.ndarray:
    """Dark 32×32 images with two bright 2×2 squares on the middle row, 24 pixels apart."""
    images = np.zeros((count, 32, 32, 3), dtype=np.float32)
    images[:, 15:17, 3:5] = 1.0
    images[:, 15:17, 27:29] = 1.0
    return images


def _marker_positions(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brightness-weighted (row, column) centres of the left and right markers, N × 2 each.

    Bilinear interpolation spreads a moved marker over its neighbours but keeps its centre.
    """
    weights = images.sum(axis=3)
    rows, columns = np.mgrid[0:32, 0:32]
    centres = []
    for half in (columns < 16, columns >= 16):
        mass = (weights * half).sum(axis=(1, 2))
        centres.append(np.stack([(weights * half * grid).sum(axis=(1, 2)) / mass
                                 for grid in (rows, columns)], axis=1))  # fmt: skip
    return centres[0], centres[1]


@pytest.mark.parametrize(
    "settings_",
    [Augmentation(shift=0.1), Augmentation(rotation_degrees=10),
     dataclasses.replace(config.AUGMENTED.augmentation, horizontal_flip=False)],
    ids=["shift", "rotation", "augmented-without-flip"],
)  # fmt: skip
def test_rotation_and_shift_cover_both_directions_up_to_the_configured_amounts(settings_):
    count = 400
    augment = augmentation.augmenter(settings_, seed=0)
    moved = keras.ops.convert_to_numpy(augment(_two_marker_images(count), training=True))
    left, right = _marker_positions(moved)
    # A rigid motion turns the line between the markers by the rotation and moves its middle,
    # the image's centre (15.5, 15.5), by the shift.
    row_change, column_change = (right - left).T
    angles = np.degrees(np.arctan2(row_change, column_change))  # 0° for an unturned image.
    displacement = (left + right) / 2 - 15.5
    # Interpolation blurs a marker by a fraction of a pixel, and of a degree.
    largest_shift, largest_angle = settings_.shift * 32, settings_.rotation_degrees
    assert np.abs(displacement).max() <= largest_shift + 0.25
    assert np.abs(angles).max() <= largest_angle + 0.5
    # 400 uniform draws reach 85% of the range on either side but for odds of about e^-30.
    if largest_shift:
        for axis in (0, 1):
            assert displacement[:, axis].min() < -0.85 * largest_shift, axis
            assert displacement[:, axis].max() > 0.85 * largest_shift, axis
            assert 0.35 < np.mean(displacement[:, axis] > 0) < 0.65, axis
        # Rows and columns are shifted independently, not by one draw.
        assert abs(np.corrcoef(displacement[:, 0], displacement[:, 1])[0, 1]) < 0.2
    else:
        assert np.abs(displacement).max() < 0.25
    if largest_angle:
        assert angles.min() < -0.85 * largest_angle and angles.max() > 0.85 * largest_angle
        assert 0.35 < np.mean(angles > 0) < 0.65
    else:
        assert np.abs(angles).max() < 0.5


# 5. The full-size split follows its seed.


@pytest.mark.parametrize("stratify", [False, True], ids=["notebook-random", "stratified"])
def test_a_full_size_split_depends_on_its_seed_alone(stratify):
    count = dataset.SMALL_SUBSET + 1  # Above it the notebook's random split applies.
    identities = np.arange(count)
    # 1×1 images that spell their own index in two channels, so each image names itself.
    images = np.stack([identities % 256, identities // 256, np.zeros(count, int)], axis=1)
    images = images.astype(np.uint8).reshape(count, 1, 1, 3)
    labels = np.random.default_rng(5).integers(0, 10, count)
    names = tuple(str(index) for index in range(10))

    def held_out(seed: int) -> np.ndarray:
        data = dataset.split(images, labels, images[:10], labels[:10], names, "synthetic", 0.2,
                             seed, stratify=stratify)  # fmt: skip
        ids = data.x_val[:, 0, 0, 0].astype(int) + 256 * data.x_val[:, 0, 0, 1].astype(int)
        train = data.x_train[:, 0, 0, 0].astype(int) + 256 * data.x_train[:, 0, 0, 1].astype(int)
        assert sorted([*ids, *train]) == list(range(count))  # Each image in exactly one split.
        np.testing.assert_array_equal(labels[ids], data.y_val)
        return np.sort(ids)

    first, again, other = held_out(0), held_out(0), held_out(1)
    np.testing.assert_array_equal(first, again)
    assert len(first) == len(other) == pytest.approx(0.2 * count, abs=10)
    # Two independent 20% samples share about a fifth of their images, never nearly all.
    assert len(np.intersect1d(first, other)) < 0.5 * len(first)


# 6. The learning-rate schedules take the values they promise (diagnosis thresholds: see
# test_diagnosis_boundaries.py).


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # 4 epochs of 25 steps: 100 steps. Cosine: rate · (1 + cos(π · step / 100)) / 2.
        ("constant", {0: 1.0, 25: 1.0, 50: 1.0, 100: 1.0}),
        ("cosine", {0: 1.0, 25: (1 + math.cos(math.pi / 4)) / 2, 50: 0.5, 75: 0.1464466, 100: 0}),
        # One cycle: from rate/25 up to the rate over the first 25 steps, then the cosine down
        # over the other 75, half way at step 25 + 37.5.
        ("onecycle", {0: 1 / 25, 25: 1.0, 62.5: 0.5, 100: 0.0}),
    ],
)
def test_a_schedule_starts_peaks_and_ends_where_it_says(schedule, expected):
    chosen = config.override(config.BASELINE, schedule=schedule, epochs=4, learning_rate=0.01)
    rate = models.learning_rate(chosen, steps_per_epoch=25)
    for step, share in expected.items():
        value = float(rate(step)) if callable(rate) else float(rate)
        assert value == pytest.approx(0.01 * share, rel=1e-5, abs=1e-9), step
    # The optimizer the run compiles follows the schedule as its step count grows.
    optimizer = models.optimizer(chosen, steps_per_epoch=25)
    for step, share in expected.items():
        if step == int(step):
            optimizer.iterations.assign(int(step))
            assert float(optimizer.learning_rate) == pytest.approx(0.01 * share, rel=1e-5,
                                                                   abs=1e-9), step  # fmt: skip
