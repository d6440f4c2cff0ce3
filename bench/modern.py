"""Time to 90%: how long the built-in `modern` recipe takes to reach a test accuracy target.

Trains `modern` (cifarlab's residual network, SGD with Nesterov momentum on a one-cycle
schedule, label smoothing, flip and pad-and-crop augmentation) exactly as `cifarlab train`
configures it — the same model, optimizer, schedule and input pipeline — and after every epoch
measures test accuracy with flip test-time augmentation, printing the wall-clock time at which
it first reaches `--target`. The clock includes training and each epoch's test evaluation, but
not loading the data.

    python bench/modern.py --data ../shared/data/cifar10-jpeg.tar.gz
    python bench/modern.py --data cifar-10-python.tar.gz --epochs 16 --target 0.90
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, evaluation, input_pipeline, models  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402


class TestAccuracyClock(keras.callbacks.Callback):
    """After each epoch: test accuracy (with flips) and seconds since training began."""

    def __init__(self, x_test, y_test, target: float):
        super().__init__()
        self.x_test, self.y_test, self.target = x_test, y_test, target
        self.reached: float | None = None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        probabilities = evaluation.predict_probabilities(self.model, self.x_test, True)
        accuracy = evaluation.loss_and_accuracy(self.y_test, probabilities)["accuracy"]
        seconds = time.perf_counter() - self.started
        if self.reached is None and accuracy >= self.target:
            self.reached = seconds
        print(f"epoch {epoch + 1}: test accuracy {accuracy:.2%} at {seconds / 60:.1f} min "
              f"(train loss {logs['loss']:.3f}, val accuracy {logs['val_accuracy']:.2%})",
              flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 archive or folder")
    parser.add_argument("--epochs", type=int, default=configs.MODERN.epochs)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    config = configs.override(configs.MODERN, epochs=args.epochs, precision=args.precision)
    dataset = data.load_for(config, args.data, quiet=True)
    keras.utils.set_random_seed(config.seed)
    precision = environment.resolve_precision(config.precision)
    model = models.build_model(config, dataset.num_classes, environment.dtype_policy(precision))
    steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    models.compile_model(model, config, steps)
    clock = TestAccuracyClock(dataset.x_test, dataset.y_test, args.target)
    train = input_pipeline.training_batches(
        dataset.x_train, dataset.y_train, dataset.num_classes, config.batch_size,
        config.augmentation, config.seed, 0, config.epochs,
    )  # fmt: skip
    validation = input_pipeline.evaluation_batches(
        dataset.x_val, dataset.y_val, dataset.num_classes
    )
    print(f"modern on {dataset!r}, {precision}, {environment.cpu_name()}", flush=True)
    model.fit(train, epochs=config.epochs, steps_per_epoch=steps, validation_data=validation,
              callbacks=[clock], verbose=0)  # fmt: skip
    if clock.reached is None:
        print(f"Did not reach {args.target:.0%} test accuracy in {config.epochs} epochs.")
        return 1
    print(f"Reached {args.target:.0%} test accuracy after {clock.reached / 60:.1f} minutes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
