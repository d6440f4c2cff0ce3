"""Training speed: the notebook's real code versus cifarlab's own training path, in one process.

For each experiment it trains `--epochs` epochs two ways on the same data, one after the other,
and times every epoch (training plus validation, as a user waits for them):

* notebook: bench/notebook.py, the notebook's steps B–H as written: float32 arrays and one-hot
  labels into `model.fit(batch_size=..., validation_data=(x_val, y_val_c))`, and for
  `augmented` the real `ImageDataGenerator(...).flow(x_train, y_train_c, batch_size=32)`;
  float32 throughout.
* cifarlab: `training.train_and_evaluate` itself, into a scratch run folder, at `--precision`
  (default `auto`, as `cifarlab train`); the epoch seconds are those it writes to `history.csv`.

Each way's first epoch (tracing, and the 10–14 s first-step stall seen on this machine) is left
out; the table gives the median and range of the rest, and the ratio of the medians. Then, per
experiment, "pure compute": cifarlab's model `train_on_batch` on one cached batch taken from
its own input pipeline, repeated as many times as an epoch has steps (and `test_on_batch` on
one validation batch, as many times as validation has batches), and how far a real cifarlab
epoch lies above it: the most any input pipeline or callback change could still win.

Synthetic data by default (random real-shaped uint8 images); `--full` uses the real data.

    python bench/throughput.py --epochs 2
    python bench/throughput.py --full --data cifar-10-python.tar.gz   # 3 epochs per way
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import keras  # noqa: E402
import notebook  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, input_pipeline, models, training  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402

WARMUP_STEPS = 5  # Untimed steps before the pure-compute timing: tracing and the first-step stall.


def main() -> None:
    args = parse_args()
    if args.full:
        dataset = harness.per_class(data.load(args.data, quiet=True), args.per_class)
    else:
        dataset = harness.synthetic(args.train_images, args.seed)
    epochs = args.epochs or (3 if args.full else 2)
    print(environment.hardware_summary(environment.record(environment.resolve_precision(
        args.precision))))  # fmt: skip
    precisions = ", ".join(
        f"{name} {environment.resolve_precision(args.precision, configs.experiment(name))}"
        for name in args.experiments
    )
    print(f"data: {len(dataset.y_train):,} train / {len(dataset.y_val):,} val images "
          f"({'real' if args.full else 'synthetic'}); {harness.which_epochs(epochs)}; "
          f"notebook in float32, cifarlab in {precisions}", flush=True)  # fmt: skip
    speeds, computes = [], []
    for name in args.experiments:
        config = configs.override(
            configs.experiment(name), epochs=epochs, seed=args.seed, precision=args.precision
        )
        reference = harness.EpochTimes.of(
            harness.timed_epochs(notebook.fit(config, dataset)["seconds"])
        )
        print(f"{name:<10} notebook {reference} s per epoch", flush=True)
        ours = harness.EpochTimes.of(
            harness.timed_epochs(harness.cifarlab_history(config, dataset)["seconds"])
        )
        print(f"{name:<10} cifarlab {ours} s per epoch", flush=True)
        speeds.append((name, reference, ours))
        if not args.skip_compute:
            train_seconds, val_seconds = compute_seconds(config, dataset)
            print(f"{name:<10} pure compute {train_seconds:.1f} s train + {val_seconds:.1f} s "
                  f"validation", flush=True)  # fmt: skip
            computes.append((name, train_seconds, val_seconds, ours.median))
    print()
    print_speed_table(speeds)
    if computes:
        print()
        print_compute_table(computes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux.
    print(f"\npeak memory (whole process): {peak:.2f} GiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="real data from --data")
    parser.add_argument("--data", help="CIFAR-10 archive for --full (default: cifarlab's)")
    parser.add_argument("--per-class", type=int, help="with --full: N archive images per class")
    parser.add_argument("--experiments", nargs="+", default=list(notebook.EXPERIMENTS))
    parser.add_argument("--epochs", type=int, help="epochs per way (default 3 --full, else 2)")
    parser.add_argument("--train-images", type=int, default=4000, help="synthetic set size")
    parser.add_argument("--precision", default="auto", choices=configs.PRECISIONS,
                        help="cifarlab's precision (the notebook's way is float32)")  # fmt: skip
    parser.add_argument("--skip-compute", action="store_true", help="no pure-compute timing")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def compute_seconds(config: configs.Config, dataset: data.Dataset) -> tuple[float, float]:
    """Seconds of one epoch's training steps and validation steps of cifarlab's model, each on
    one cached batch of cifarlab's own input pipeline (scaled, one-hot, augmented if the
    experiment augments), with nothing else around them."""
    precision = environment.resolve_precision(config.precision, config)
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config, dataset.num_classes, environment.dtype_policy(precision))
    models.compile_model(model, config, steps_per_execution=training.steps_per_execution())
    train_batch = first_batch(input_pipeline.training_batches(
        dataset.x_train, dataset.y_train, dataset.num_classes, config.batch_size,
        config.augmentation, config.seed,
    ))  # fmt: skip
    val_batch = first_batch(
        input_pipeline.evaluation_batches(dataset.x_val, dataset.y_val, dataset.num_classes)
    )
    train_steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    val_steps = input_pipeline.steps_per_epoch(len(dataset.y_val), input_pipeline.EVAL_BATCH_SIZE)
    return (
        repeated_seconds(model.train_on_batch, train_batch, train_steps),
        repeated_seconds(model.test_on_batch, val_batch, val_steps),
    )


def first_batch(batches) -> tuple:
    """The first (images, one-hot labels) batch of a `tf.data` stream or a `PyDataset`."""
    if isinstance(batches, keras.utils.PyDataset):
        return batches[0]
    return next(iter(batches.take(1)))  # Only one batch, so nothing prepares more meanwhile.


def repeated_seconds(step, batch: tuple, steps: int) -> float:
    """`steps` times the median seconds of one call of `step(images, labels)`, timed over
    `steps` calls after `WARMUP_STEPS` untimed ones. Each call returns its loss to Python, so
    each is timed whole; the median keeps a stall on a shared machine out of the figure."""
    images, labels = batch
    for _ in range(WARMUP_STEPS):
        step(images, labels)
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        step(images, labels)
        durations.append(time.perf_counter() - started)
    return steps * statistics.median(durations)


def print_speed_table(rows: list) -> None:
    print("seconds per epoch: median (min–max, epochs timed); ratio = notebook / cifarlab median")
    print(f"{'experiment':<10}  {'notebook s/epoch':<26}  {'cifarlab s/epoch':<26}  {'ratio':>6}")
    for name, reference, ours in rows:
        ratio = reference.median / ours.median
        print(f"{name:<10}  {reference!s:<26}  {ours!s:<26}  {ratio:>5.2f}x")


def print_compute_table(rows: list) -> None:
    print("pure compute: the same model's steps on one cached batch, one epoch's worth")
    print(f"{'experiment':<10}  {'train steps s':>13}  {'val steps s':>11}  "
          f"{'cifarlab epoch s':>16}  {'above train':>11}  {'above train+val':>15}")  # fmt: skip
    for name, train_seconds, val_seconds, epoch in rows:
        above_train = 100 * (epoch / train_seconds - 1)
        above_both = 100 * (epoch / (train_seconds + val_seconds) - 1)
        print(f"{name:<10}  {train_seconds:>13.1f}  {val_seconds:>11.1f}  {epoch:>16.1f}  "
              f"{above_train:>10.1f}%  {above_both:>14.1f}%")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
