"""Evaluate a run's best checkpoint: loss and accuracy per split, then per-class metrics.

Predictions come first; the metrics are NumPy and scikit-learn on those arrays, so they can be
checked by hand. Results go to the run folder's `metrics.json`; test-set probabilities go to
`test_probabilities.npy` for the figures that need them.

    cifarlab evaluate runs/baseline --data cifar-10-python.tar.gz
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cifarlab import pipeline
from cifarlab.config import Config
from cifarlab.data import Dataset
from cifarlab.errors import UserError
from cifarlab.runs import read_history


def run(run_dir: str | Path, data: Dataset, quiet: bool = False) -> dict:
    """Evaluate `run_dir/best.keras` on every split of `data`; write and return `metrics.json`."""
    run_dir = Path(run_dir)
    model = load_best(run_dir)
    config = Config.load(run_dir / "config.json")
    scores = {}
    for split, images, labels in (
        ("train", data.x_train, data.y_train),
        ("val", data.x_val, data.y_val),
        ("test", data.x_test, data.y_test),
    ):
        batches = pipeline.evaluation_batches(images, labels, data.num_classes)
        loss, accuracy = model.evaluate(batches, verbose=0)
        scores[split] = {"loss": float(loss), "accuracy": float(accuracy)}
    probabilities = predict_probabilities(model, data.x_test)
    np.save(run_dir / "test_probabilities.npy", probabilities)
    metrics = {
        "experiment": config.name,
        "dataset": data.name,
        "class_names": list(data.class_names),
        "params": int(model.count_params()),
        **training_summary(run_dir, len(data.y_train)),
        **scores,
        **classification_metrics(data.y_test, probabilities, data.class_names),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if not quiet:
        print(format_metrics(metrics))
    return metrics


def load_best(run_dir: Path) -> keras.Model:
    """The run's best checkpoint, or a clear error if the folder has none."""
    path = Path(run_dir) / "best.keras"
    if not path.is_file():
        raise UserError(f"{run_dir} has no best.keras; train it first with cifarlab train.")
    return keras.models.load_model(path)


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities for uint8 images, in batches, as float32."""
    outputs = model.predict(pipeline.image_batches(images), verbose=0)
    return np.asarray(outputs, dtype=np.float32)


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


def training_summary(run_dir: Path, num_train_images: int) -> dict:
    """Epochs, best epoch and timing read from the run's `history.csv`."""
    rows = read_history(run_dir / "history.csv")
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
