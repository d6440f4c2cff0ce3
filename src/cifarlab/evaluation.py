"""The notebook's step E: evaluate a run's best checkpoint, then diagnose its curves (step G).

Predictions come first (averaged with the mirror images' for runs with test-time flips); the
metrics are NumPy and scikit-learn on those arrays, so they can be checked by hand. Scores,
per-class metrics and the diagnosis are stored once, in the run folder's metrics file
(`run_folder.METRICS`), which marks the run finished; reports read them from there.

    cifarlab evaluate runs/baseline --data cifar-10-python.tar.gz
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cifarlab import diagnosis, input_pipeline, run_folder
from cifarlab.data.dataset import Dataset


def evaluate_run(run_dir: str | Path, data: Dataset) -> dict:
    """Evaluate `run_dir`'s best checkpoint on every split of `data` and diagnose its history;
    write the run's own metrics (which mark it finished) and return them. Only training calls
    this, as the owner of the run."""
    run_dir = Path(run_dir)
    metrics, test_probabilities = score_run(run_dir, data)
    run_folder.save_array(run_dir / run_folder.TEST_PROBABILITIES, test_probabilities)
    run_folder.write_json(run_dir / run_folder.METRICS, metrics)
    return metrics


def score_run(run_dir: Path, data: Dataset) -> tuple[dict, np.ndarray]:
    """The metrics of `run_dir`'s best checkpoint on `data` and its test probabilities,
    written nowhere."""
    model = run_folder.load_best_model(run_dir)
    config = run_folder.read_config(run_dir)
    scores, probabilities = {}, None
    for split, images, labels in (
        ("train", data.x_train, data.y_train),
        ("val", data.x_val, data.y_val),
        ("test", data.x_test, data.y_test),
    ):
        probabilities = predict_probabilities(
            model, images, config.test_time_flip, config.test_time_shift
        )
        scores[split] = loss_and_accuracy(labels, probabilities)
    history = run_folder.read_history(run_dir)
    metrics = {
        "experiment": config.name,
        "dataset": data.name,
        "class_names": list(data.class_names),
        "params": int(model.count_params()),
        **training_summary(history, len(data.y_train)),
        **scores,
        **classification_metrics(data.y_test, probabilities, data.class_names),
        "diagnosis": diagnosis.diagnose(history, data.num_classes, len(data.y_val)),
    }
    return metrics, probabilities


def predict_probabilities(
    model: keras.Model, images: np.ndarray, flip: bool = False, shift: bool = False
) -> np.ndarray:
    """Class probabilities for uint8 images, in batches, as float32. With `flip`, the mean of
    the predictions for each image and its mirror image. With `shift`, airbench's test-time
    translation: half that, plus a quarter each for the image shifted one pixel down-right and
    one pixel up-left (edges reflected)."""
    outputs = _predict_flipped(model, images, flip)
    if shift:
        padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        down_right, up_left = padded[:, :-2, :-2], padded[:, 2:, 2:]
        shifted = _predict_flipped(model, down_right, flip) + _predict_flipped(model, up_left, flip)
        outputs = outputs / 2 + shifted / 4
    return outputs


def _predict_flipped(model: keras.Model, images: np.ndarray, flip: bool) -> np.ndarray:
    outputs = _predict(model, images)
    if flip:
        outputs = (outputs + _predict(model, images[:, :, ::-1])) / 2
    return outputs


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """One compiled call for what fits in one batch (an upload to `serve`: `predict` would build
    a new input pipeline per request, measured 2.7x slower); batches streamed otherwise."""
    if len(images) <= input_pipeline.EVAL_BATCH_SIZE:  # pragma: no mutate (both agree at 500)
        return np.asarray(model.predict_on_batch(input_pipeline.scale(images)), np.float32)
    return np.asarray(model.predict(input_pipeline.image_batches(images), verbose=0), np.float32)


def loss_and_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Mean categorical cross-entropy (probabilities clipped at Keras's 1e-7) and accuracy."""
    chosen = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    loss = -np.log(np.clip(chosen, 1e-7, 1.0)).mean() if len(labels) else 0.0
    accuracy = (probabilities.argmax(axis=1) == labels).mean() if len(labels) else 0.0
    return {"loss": float(loss), "accuracy": float(accuracy)}


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names) -> dict:
    """Confusion matrix (rows = true class) and per-class precision, recall and F1."""
    classes = np.arange(len(class_names))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    matrix = confusion_matrix(labels, predicted, labels=classes)
    return {"per_class": per_class, "confusion_matrix": matrix.tolist()}


def training_summary(rows: list[dict], num_train_images: int) -> dict:
    """Epochs, best epoch and timing from the run's history rows."""
    val_losses = [row["val_loss"] for row in rows]
    seconds = [row.get("seconds", 0.0) for row in rows]
    train_seconds = sum(seconds)
    seconds_per_epoch = train_seconds / len(rows) if rows else 0.0
    return {
        "epochs_run": len(rows),
        "best_epoch": int(np.argmin(val_losses)) + 1 if rows else 0,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(seconds_per_epoch, 2),
        "images_per_second": round(num_train_images / seconds_per_epoch, 1)
        if seconds_per_epoch
        else 0.0,
    }


def format_metrics(metrics: dict) -> str:
    """Loss/accuracy per split and the per-class table, as plain text."""
    lines = [f"{metrics['experiment']}: best epoch {metrics['best_epoch']} of "
             f"{metrics['epochs_run']}, {metrics['params']:,} parameters",
             f"{'split':<6} {'loss':>8} {'accuracy':>9}"]  # fmt: skip
    for split in ("train", "val", "test"):
        lines.append(
            f"{split:<6} {metrics[split]['loss']:>8.4f} {metrics[split]['accuracy']:>9.2%}"
        )
    width = max(len(name) for name in metrics["per_class"])
    lines.append(f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>6}")
    for name, scores in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}} {scores['precision']:>9.3f} {scores['recall']:>7.3f} "
            f"{scores['f1']:>6.3f}"
        )
    return "\n".join(lines)


# Epochs without a lower validation loss after which the end-of-run note suggests stopping.
SUGGESTED_PATIENCE = 5


def outcome_table(rows: list[dict]) -> str:
    """The end of a `train` or `study`: experiment, best epoch, test accuracy and verdict per
    run (rows as in the study's results table), then what early stopping would have saved."""
    width = max([len("experiment"), *(len(str(row["experiment"])) for row in rows)])
    lines = [f"{'experiment':<{width}}  {'best epoch':>11}  {'test acc.':>9}  verdict"]
    notes = []
    for row in rows:
        epochs = f"{row['best_epoch']} of {row['epochs_run']}"
        verdict = str(row.get("verdict") or "").split(":")[0]
        lines.append(f"{row['experiment']:<{width}}  {epochs:>11}  "
                     f"{row['test_accuracy']:>9.2%}  {verdict}")  # fmt: skip
        wasted = row["epochs_run"] - row["best_epoch"] - SUGGESTED_PATIENCE
        if wasted > 0:
            seconds = wasted * float(row.get("seconds_per_epoch") or 0)
            spent = f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
            notes.append(
                f"{row['experiment']}: validation loss was lowest at epoch {row['best_epoch']} "
                f"of {row['epochs_run']}; --early-stopping {SUGGESTED_PATIENCE} would have "
                f"stopped {wasted} epochs sooner, saving about {spent} here."
            )
    return "\n".join(lines + notes)
