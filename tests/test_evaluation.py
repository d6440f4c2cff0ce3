"""Evaluation's arithmetic, checked by hand: loss, accuracy and per-class metrics of a few
labelled probabilities, the timing summary and the printed tables, and the test-time flip and
shift of a tiny linear model whose predictions NumPy can write down. Everything runs in float32
on arrays of a few images, in seconds."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

from cifarlab import diagnosis, evaluation, input_pipeline, run_folder
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset

SIDE, CLASSES = 4, 3  # Images of 4 × 4 × 3 pixels, three classes.


def linear_model(dtype: str = "float32", seed: int = 0) -> keras.Model:
    """Softmax of a fixed linear map of the scaled pixels, different for every pixel, so a
    mirror image or a shifted one gets other predictions. 4 × 4 × 3 × 3 + 3 = 147 parameters."""
    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 3)),
            keras.layers.Flatten(name="pixels"),
            keras.layers.Dense(CLASSES, activation="softmax", dtype=dtype, name="scores"),
        ]
    )
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.5, (SIDE * SIDE * 3, CLASSES))
    model.get_layer("scores").set_weights([weights, rng.normal(0, 1, CLASSES)])
    return model


def by_hand(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """What `model` predicts for uint8 `images`, in float64 NumPy."""
    weights, bias = (np.asarray(w, np.float64) for w in model.get_layer("scores").get_weights())
    logits = (images.reshape(len(images), -1) / 255.0) @ weights + bias
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def some_images(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIDE, SIDE, 3), dtype=np.uint8)


# Labelled probabilities: the loss, accuracy and per-class metrics below are worked out by hand.


def test_loss_is_the_mean_cross_entropy_clipped_at_1e_7_and_accuracy_the_share_of_argmax_hits():
    labels = np.array([0, 1, 2, 1])
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],  # True class 0 chosen: right.
            [0.5, 0.4, 0.1],  # True class 1 has 0.4, class 0 wins: wrong.
            [0.0, 1.0, 0.0],  # True class 2 has 0, counted as 1e-7: wrong.
            [0.1, 0.6, 0.3],  # True class 1 chosen: right.
        ],
        dtype=np.float32,
    )
    scores = evaluation.loss_and_accuracy(labels, probabilities)
    chosen = [np.float32(0.7), np.float32(0.4), 1e-7, np.float32(0.6)]
    assert scores["loss"] == pytest.approx(-sum(math.log(p) for p in chosen) / 4, rel=1e-9)
    assert scores["accuracy"] == 0.5
    assert isinstance(scores["loss"], float) and isinstance(scores["accuracy"], float)


def test_a_certain_right_answer_costs_nothing_and_an_empty_split_scores_zero():
    certain = evaluation.loss_and_accuracy(np.array([2]), np.array([[0.0, 0.0, 1.0]]))
    assert certain == {"loss": 0.0, "accuracy": 1.0}
    empty = evaluation.loss_and_accuracy(np.array([], int), np.zeros((0, 3), np.float32))
    assert empty == {"loss": 0.0, "accuracy": 0.0}


def test_per_class_metrics_and_the_confusion_matrix_count_predictions_by_true_class():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = [0, 1, 1, 2, 2, 0]
    probabilities = np.eye(4, dtype=np.float32)[predicted] * 0.7 + 0.075
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # An absent class is no cause for a warning either.
        result = evaluation.classification_metrics(labels, probabilities, ("a", "b", "c", "d"))
    # Rows are the true class, columns the predicted one; class d is never seen nor predicted.
    assert result["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    # a: predicted twice, right once; one of its two images found.
    # b: predicted twice, right once; its one image found.  c: predicted twice, both right;
    # two of its three images found.  d: nothing to divide by, so zero rather than NaN.
    expected = {
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (1 / 2, 1, 2 * (1 / 2 * 1) / (1 / 2 + 1), 1),
        "c": (1, 2 / 3, 2 * (2 / 3) / (1 + 2 / 3), 3),
        "d": (0, 0, 0, 0),
    }
    assert list(result["per_class"]) == ["a", "b", "c", "d"]
    for name, (precision, recall, f1, support) in expected.items():
        scores = result["per_class"][name]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support and isinstance(scores["support"], int)


# The history's summary.


def history(val_losses, seconds=None) -> list[dict]:
    rows = []
    for epoch, val_loss in enumerate(val_losses):
        row = {"epoch": epoch, "loss": 1.0 - 0.1 * epoch, "accuracy": 0.3 + 0.05 * epoch,
               "val_loss": val_loss, "val_accuracy": 0.3 + 0.04 * epoch}  # fmt: skip
        if seconds is not None:
            row["seconds"] = seconds[epoch]
        rows.append(row)
    return rows


def test_the_summary_counts_epochs_from_one_and_times_them():
    rows = history([0.9, 0.6, 0.7], seconds=[2.5, 3.0, 2.6051])
    summary = evaluation.training_summary(rows, 1000)
    # 2.5 + 3.0 + 2.6051 = 8.1051 s in all, 2.7017 s an epoch, 1000 images each epoch.
    assert summary == {
        "epochs_run": 3,
        "best_epoch": 2,
        "train_seconds": 8.11,
        "seconds_per_epoch": 2.7,
        "images_per_second": 370.1,
    }


def test_a_history_without_timings_or_rows_reports_zeros():
    untimed = evaluation.training_summary(history([0.5, 0.4]), 1000)
    assert untimed == {"epochs_run": 2, "best_epoch": 2, "train_seconds": 0.0,
                       "seconds_per_epoch": 0.0, "images_per_second": 0.0}  # fmt: skip
    assert evaluation.training_summary([], 1000) == {"epochs_run": 0, "best_epoch": 0,
        "train_seconds": 0.0, "seconds_per_epoch": 0.0, "images_per_second": 0.0}  # fmt: skip


# The printed tables.


def test_the_metrics_text_gives_each_splits_scores_and_the_per_class_table():
    metrics = {
        "experiment": "tiny",
        "best_epoch": 2,
        "epochs_run": 3,
        "params": 1234567,
        "train": {"loss": 0.12346, "accuracy": 0.98766},
        "val": {"loss": 1.5, "accuracy": 0.5},
        "test": {"loss": 2.0, "accuracy": 0.25},
        "per_class": {
            "cat": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3},
            "airplane": {"precision": 1.0, "recall": 0.0, "f1": 0.0},
        },
    }
    assert evaluation.format_metrics(metrics).splitlines() == [
        "tiny: best epoch 2 of 3, 1,234,567 parameters",
        "split      loss  accuracy",
        "train    0.1235    98.77%",
        "val      1.5000    50.00%",
        "test     2.0000    25.00%",
        "class    precision  recall     f1",
        "cat          0.500   0.250  0.333",
        "airplane     1.000   0.000  0.000",
    ]


def test_the_outcome_table_notes_only_runs_that_went_on_past_the_suggested_patience():
    patience = evaluation.SUGGESTED_PATIENCE
    rows = [
        # 20 - 3 - 5 = 12 epochs wasted, at 10 s each: 2 min.
        {"experiment": "baseline", "best_epoch": 3, "epochs_run": 20, "test_accuracy": 0.7123,
         "verdict": "overfitting: the validation loss rose", "seconds_per_epoch": 10},
        # Exactly the patience after the best epoch: nothing wasted, no note.
        {"experiment": "a-longer-name", "best_epoch": 15, "epochs_run": 20,
         "test_accuracy": 0.8, "verdict": "good fit", "seconds_per_epoch": 10},
        # One epoch beyond it, 59.4 s: still seconds.
        {"experiment": "close", "best_epoch": 14, "epochs_run": 20, "test_accuracy": 0.5,
         "verdict": None, "seconds_per_epoch": 59.4},
        # Two beyond it, at 30 s: exactly a minute. Seven at 13 s: 91 s, 1.52 min.
        {"experiment": "minute", "best_epoch": 3, "epochs_run": 10, "test_accuracy": 1.0,
         "seconds_per_epoch": 30.0},
        {"experiment": "longer", "best_epoch": 3, "epochs_run": 15, "test_accuracy": 0.5,
         "seconds_per_epoch": 13.0},
        # No timing: zero seconds.
        {"experiment": "untimed", "best_epoch": 1, "epochs_run": 7, "test_accuracy": 0.0},
    ]  # fmt: skip
    note = "validation loss was lowest at epoch {} of {}; --early-stopping {} would have "
    assert evaluation.outcome_table(rows).splitlines() == [
        "experiment      best epoch  test acc.  verdict",
        "baseline           3 of 20     71.23%  overfitting",
        "a-longer-name     15 of 20     80.00%  good fit",
        "close             14 of 20     50.00%  ",
        "minute             3 of 10    100.00%  ",
        "longer             3 of 15     50.00%  ",
        "untimed             1 of 7      0.00%  ",
        "baseline: " + note.format(3, 20, patience) + "stopped 12 epochs sooner, saving about "
        "2 min here.",
        "close: " + note.format(14, 20, patience) + "stopped 1 epochs sooner, saving about "
        "59 s here.",
        "minute: " + note.format(3, 10, patience) + "stopped 2 epochs sooner, saving about "
        "1 min here.",
        "longer: " + note.format(3, 15, patience) + "stopped 7 epochs sooner, saving about "
        "2 min here.",
        "untimed: " + note.format(1, 7, patience) + "stopped 1 epochs sooner, saving about "
        "0 s here.",
    ]


def test_the_outcome_table_is_as_wide_as_its_heading_for_short_names():
    rows = [{"experiment": "a", "best_epoch": 1, "epochs_run": 1, "test_accuracy": 0.5}]
    assert evaluation.outcome_table(rows).splitlines() == [
        "experiment   best epoch  test acc.  verdict",
        "a                1 of 1     50.00%  ",
    ]


# Predictions: batches, test-time flip and shift.


def test_predictions_are_the_models_on_scaled_pixels():
    model, images = linear_model(), some_images(5)
    predicted = evaluation.predict_probabilities(model, images)
    np.testing.assert_allclose(predicted, by_hand(model, images), rtol=1e-5, atol=1e-7)


def test_the_test_time_flip_averages_each_image_with_its_mirror_image():
    model, images = linear_model(), some_images(5)
    mirrored = images[:, :, ::-1]  # Columns reversed: left and right swap.
    expected = (by_hand(model, images) + by_hand(model, mirrored)) / 2
    predicted = evaluation.predict_probabilities(model, images, flip=True)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(predicted, by_hand(model, images), atol=1e-3)  # The flip matters.


def diagonal_shifts(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image moved one pixel down-right and one pixel up-left, the edge brought in
    reflected: row or column -1 is row or column 1, and row or column SIDE is SIDE - 2."""
    down_right = np.array([1, *range(SIDE - 1)])  # Source of each row and column.
    up_left = np.array([*range(1, SIDE), SIDE - 2])
    return (images[:, down_right][:, :, down_right], images[:, up_left][:, :, up_left])


def test_the_test_time_shift_weighs_the_image_a_half_and_each_diagonal_shift_a_quarter():
    model, images = linear_model(), some_images(5)
    down_right, up_left = diagonal_shifts(images)
    assert (down_right[:, 1:, 1:] == images[:, :-1, :-1]).all()  # One pixel down and right.
    expected = (
        by_hand(model, images) / 2 + by_hand(model, down_right) / 4 + by_hand(model, up_left) / 4
    )
    predicted = evaluation.predict_probabilities(model, images, shift=True)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-7)


def flipped_and_shifted(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The test-time flip and shift by hand: each of the three images is averaged with its mirror
    image, then they are weighed a half and two quarters."""

    def flipped(batch):
        return (by_hand(model, batch) + by_hand(model, batch[:, :, ::-1])) / 2

    down_right, up_left = diagonal_shifts(images)
    return flipped(images) / 2 + flipped(down_right) / 4 + flipped(up_left) / 4


def test_flip_and_shift_together_flip_every_shifted_image_too():
    model, images = linear_model(), some_images(5)
    expected = flipped_and_shifted(model, images)
    predicted = evaluation.predict_probabilities(model, images, flip=True, shift=True)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("count", [3, input_pipeline.EVAL_BATCH_SIZE + 1])
def test_predictions_come_back_as_float32_for_one_batch_or_a_stream(count, capsys):
    # A model whose output is bfloat16 (mixed precision without a float32 head).
    model, images = linear_model("bfloat16"), some_images(count)
    predicted = evaluation.predict_probabilities(model, images)
    assert predicted.dtype == np.float32 and predicted.shape == (count, CLASSES)
    np.testing.assert_allclose(predicted, by_hand(model, images), atol=0.02)
    assert capsys.readouterr().out == ""  # No progress bar: the library prints nothing.


# Scoring a run folder.


@pytest.fixture
def scored_run(tmp_path):
    """A finished-looking run folder of the linear model, and a dataset of three splits of
    different sizes and images, so that no split can stand in for another."""
    config = Config(name="tiny", epochs=3, test_time_flip=True, test_time_shift=True)
    run_folder.write_json(tmp_path / run_folder.CONFIG, config.to_dict())
    model = linear_model()
    model.save(tmp_path / run_folder.BEST_MODEL)
    rows = history([0.9, 0.6, 0.7], seconds=[1.0, 2.0, 3.0])
    run_folder.write_history(tmp_path, rows)
    labels = np.random.default_rng(2).integers(0, CLASSES, 15)
    data = Dataset(
        x_train=some_images(6, seed=3), y_train=labels[:6],
        x_val=some_images(4, seed=4), y_val=labels[6:10],
        x_test=some_images(5, seed=5), y_test=labels[10:],
        class_names=("red", "green", "blue"), source="made in the test", name="tiny-set",
    )  # fmt: skip
    return tmp_path, model, rows, data


def test_a_run_is_scored_on_every_split_with_its_test_time_flip_and_shift(scored_run):
    run_dir, model, rows, data = scored_run
    metrics, test_probabilities = evaluation.score_run(run_dir, data)
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}  # fmt: skip
    for split, (images, labels) in splits.items():
        probabilities = flipped_and_shifted(model, images)
        chosen = probabilities[np.arange(len(labels)), labels]
        assert metrics[split]["loss"] == pytest.approx(-np.log(chosen).mean(), rel=1e-5)
        hits = probabilities.argmax(axis=1) == labels
        assert metrics[split]["accuracy"] == pytest.approx(hits.mean())
    expected_test = flipped_and_shifted(model, data.x_test)
    np.testing.assert_allclose(test_probabilities, expected_test, rtol=1e-5, atol=1e-7)

    # The per-class metrics are the test split's.
    predicted = expected_test.argmax(axis=1)
    matrix = np.zeros((CLASSES, CLASSES), int)
    np.add.at(matrix, (data.y_test, predicted), 1)
    assert metrics["confusion_matrix"] == matrix.tolist()
    supports = [metrics["per_class"][name]["support"] for name in data.class_names]
    assert supports == np.bincount(data.y_test, minlength=CLASSES).tolist()

    assert metrics["experiment"] == "tiny" and metrics["dataset"] == "tiny-set"
    assert metrics["class_names"] == ["red", "green", "blue"]
    assert metrics["params"] == 4 * 4 * 3 * 3 + 3
    # Three epochs of 1, 2 and 3 s; the lowest validation loss in the second; 6 images.
    assert (metrics["epochs_run"], metrics["best_epoch"]) == (3, 2)
    assert (metrics["train_seconds"], metrics["seconds_per_epoch"]) == (6.0, 2.0)
    assert metrics["images_per_second"] == 3.0
    assert metrics["diagnosis"] == diagnosis.diagnose(rows, CLASSES, len(data.y_val))
    assert metrics["diagnosis"]["val_images"] == 4


def test_evaluating_a_run_stores_its_metrics_and_test_probabilities(scored_run):
    run_dir, model, _, data = scored_run
    assert not run_folder.is_finished(run_dir)
    metrics = evaluation.evaluate_run(run_dir, data)
    assert run_folder.read_json(run_dir / run_folder.METRICS) == metrics
    assert run_folder.is_finished(run_dir)
    stored = np.load(run_dir / run_folder.TEST_PROBABILITIES)
    assert stored.dtype == np.float32
    expected = flipped_and_shifted(model, data.x_test)
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-7)
