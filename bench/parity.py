"""Accuracy parity: does cifarlab's fast training path learn as well as the notebook's way?

For each experiment it trains, with the same seed, data and epochs, the notebook's way
(float32 `model.fit` on NumPy arrays, bench/notebook.py) and cifarlab's `train_and_evaluate` at each
requested precision, then prints each run's validation accuracy at its best epoch (lowest
validation loss, the checkpoint both ways keep) and the difference to the notebook's.
Shuffling and augmentation draws differ between the two input paths, so the difference also
holds ordinary run-to-run noise: about ±1 point on 2,000 validation images.

    python bench/parity.py --data subset.tar.gz --epochs 4 --precisions auto bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import notebook  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, run_folder, training  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402


def main() -> None:
    args = parse_args()
    dataset = data.load(args.data, quiet=True)
    print(f"{environment.hardware_summary(environment.describe('float32'))}")
    print(f"data: {args.data}, {len(dataset.y_train):,} train / {len(dataset.y_val):,} val; "
          f"{args.epochs} epochs, seed {args.seed}")  # fmt: skip
    for name in args.experiments:
        base = configs.override(configs.experiment(name), epochs=args.epochs, seed=args.seed)
        started = time.perf_counter()
        reference = best_val_accuracy(notebook.fit(base, dataset))
        print(f"{name:<10} notebook float32       val acc {reference:.2%} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        for precision in args.precisions:
            started = time.perf_counter()
            config = configs.override(base, precision=precision)
            accuracy = best_val_accuracy(cifarlab_history(config, dataset))
            resolved = environment.resolve_precision(precision)
            print(f"{name:<10} cifarlab {precision}->{resolved:<9} val acc {accuracy:.2%} "
                  f"difference {100 * (accuracy - reference):+.2f} points "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 archive (e.g. a real subset)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiments", nargs="+", default=list(configs.EXPERIMENTS))
    parser.add_argument("--precisions", nargs="+", default=["auto", "bfloat16"])
    return parser.parse_args()


def cifarlab_history(config: configs.Config, dataset: data.Dataset) -> dict:
    """`training.train_and_evaluate`'s history.csv as columns, from a scratch run folder."""
    with tempfile.TemporaryDirectory(prefix="cifarlab-parity-") as folder:
        with contextlib.redirect_stdout(io.StringIO()):
            training.train_and_evaluate(config, folder, dataset, quiet=True)
        rows = run_folder.read_history(folder)
    return {key: [row[key] for row in rows] for key in rows[0]}


def best_val_accuracy(history: dict) -> float:
    """Validation accuracy at the epoch of lowest validation loss."""
    losses = history["val_loss"]
    return float(history["val_accuracy"][losses.index(min(losses))])


if __name__ == "__main__":
    sys.exit(main())
