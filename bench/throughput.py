"""Training throughput: the notebook's way versus cifarlab's own training path, in one process.

For each experiment it times whole epochs (training plus validation, as a user waits for them)
two ways on the same data, one after the other:

* notebook: the same model in float32, `model.fit(float32_array, one_hot, batch_size=...,
  validation_data=(float32_array, one_hot))` as the notebook's steps B–F do; for `augmented`,
  fitted on a Python-side augmenting PyDataset instead of `ImageDataGenerator.flow`
  (bench/notebook.py says why).
* cifarlab: `training.train_and_evaluate` itself, into a scratch run folder, with its default
  precision; the epoch times are those it writes to `history.csv`.

The last of `--epochs` epochs is timed, so with the default of 2 the first epoch (tracing and
compilation) is the warm-up. Synthetic data by default (random real-shaped uint8 images);
`--full` times one real epoch of 40,000 training and 10,000 validation images instead.

    python bench/throughput.py
    python bench/throughput.py --full --data cifar-10-python.tar.gz
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import notebook  # noqa: E402
import numpy as np  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, run_folder, training  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402
from cifarlab.data.standard import CIFAR10_CLASSES  # noqa: E402


def main() -> None:
    args = parse_args()
    dataset = (
        data.load(args.data, quiet=True) if args.full else synthetic(args.train_images, args.seed)
    )
    epochs = args.epochs or (1 if args.full else 2)
    print(f"{environment.hardware_summary(environment.describe(args.precision))}")
    kind = "real" if args.full else "synthetic"
    print(f"data: {len(dataset.y_train):,} train / {len(dataset.y_val):,} val images ({kind}); "
          f"epoch {epochs} of {epochs} timed")  # fmt: skip
    print(f"{'experiment':<10} {'notebook img/s':>15} {'cifarlab img/s':>15} {'ratio':>6}")
    for name in args.experiments:
        config = configs.override(
            configs.experiment(name), epochs=epochs, seed=args.seed, precision=args.precision
        )
        precision = environment.resolve_precision(config.precision)
        notebook = notebook_seconds(config, dataset)
        ours = cifarlab_seconds(config, dataset)
        images = len(dataset.y_train)
        print(f"{name:<10} {images / notebook:>15.0f} {images / ours:>15.0f} "
              f"{notebook / ours:>5.2f}x   ({notebook:.1f} s vs {ours:.1f} s per epoch, "
              f"cifarlab in {precision})",
              flush=True)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux.
    print(f"peak memory (whole process): {peak:.2f} GiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="one real 40,000/10,000 epoch")
    parser.add_argument("--data", help="CIFAR-10 archive for --full (default: cifarlab's)")
    parser.add_argument("--experiments", nargs="+", default=list(configs.EXPERIMENTS))
    parser.add_argument("--epochs", type=int, help="epochs per run; the last is timed")
    parser.add_argument("--train-images", type=int, default=4000, help="synthetic set size")
    parser.add_argument("--precision", default="auto", choices=configs.PRECISIONS)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synthetic(train_images: int, seed: int) -> data.Dataset:
    """Random uint8 images in CIFAR-10's shape, a quarter as many for validation and test."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, count)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        split(train_images), split(train_images // 4), split(train_images // 4),
    )  # fmt: skip
    return data.Dataset(x_train, y_train, x_val, y_val, x_test, y_test,
                        CIFAR10_CLASSES, source="synthetic")  # fmt: skip


def notebook_seconds(config: configs.Config, dataset: data.Dataset) -> float:
    """Seconds of the last epoch of the notebook's float32 `model.fit` on NumPy arrays."""
    return notebook.fit(config, dataset)["seconds"][-1]


def cifarlab_seconds(config: configs.Config, dataset: data.Dataset) -> float:
    """Seconds of the last epoch of `training.train_and_evaluate`, from its history."""
    with tempfile.TemporaryDirectory(prefix="cifarlab-bench-") as folder:
        # The run also evaluates its best checkpoint afterwards, untimed, as the CLI's does.
        with contextlib.redirect_stdout(io.StringIO()):
            training.train_and_evaluate(config, folder, dataset, quiet=True)
        return run_folder.read_history(folder)[-1]["seconds"]


if __name__ == "__main__":
    sys.exit(main())
