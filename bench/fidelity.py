"""Where does cifarlab's result part from the notebook's own code? One change at a time.

`bench/parity.py` found cifarlab's `batchnorm` several points above the notebook's own
`model.fit` (every seed, on three CPUs) although the network, optimizer, loss and split read
the same. This probe trains the same experiment, seeds and data in several ways, each one step
from a neighbour, and prints the best validation accuracy (at the epoch of lowest validation
loss) of each, per seed and as a mean:

* `notebook, one order`: `bench/notebook.py`'s `fit` as it was, seeded with
  `keras.utils.set_random_seed`. Keras 3 on TensorFlow then draws `fit`'s order of NumPy arrays
  from a seeded op, so every epoch sees the same batch order;
* `notebook`: the same code with TensorFlow's global seed cleared after the weights are drawn,
  so every epoch is reshuffled, as in the unseeded notebook (`notebook.fit`'s default);
* `notebook network, cifarlab batches`: the notebook's `Sequential` fed cifarlab's training
  stream (`input_pipeline.training_batches`: a seeded new order every epoch, and its scaling)
  and validation batches (`evaluation_batches`, 500 images a batch);
* `cifarlab network, notebook fit`: cifarlab's model, built and compiled by `models` under the
  run's seed, fed the arrays by the seeded `model.fit(x, y, batch_size)`, one order;
* `cifarlab`: `training.train_and_evaluate`, everything cifarlab's.

Float32 throughout. `--ways` picks some of them by number (1-5, in this order).

    python bench/fidelity.py --data ../shared/data/cifar10-jpeg.tar.gz --per-class 1000 \
        --epochs 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import keras  # noqa: E402
import notebook  # noqa: E402
import numpy as np  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, input_pipeline, models  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402


def notebook_network_cifarlab_batches(config: configs.Config, dataset: data.Dataset) -> dict:
    keras.utils.set_random_seed(config.seed)
    model = notebook.network(config, dataset.x_train.shape[1:], dataset.num_classes)
    train = input_pipeline.training_batches(
        dataset.x_train, dataset.y_train, dataset.num_classes, config.batch_size,
        config.augmentation, config.seed, 0, config.epochs,
    )  # fmt: skip
    validation = input_pipeline.evaluation_batches(
        dataset.x_val, dataset.y_val, dataset.num_classes
    )
    steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    history = model.fit(train, epochs=config.epochs, steps_per_epoch=steps,
                        validation_data=validation, shuffle=False, verbose=0)  # fmt: skip
    return history.history


def cifarlab_network_notebook_fit(config: configs.Config, dataset: data.Dataset) -> dict:
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config, dataset.num_classes, environment.dtype_policy("float32"))
    steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    models.compile_model(model, config, steps)
    y_train = keras.utils.to_categorical(dataset.y_train, dataset.num_classes)
    y_val = keras.utils.to_categorical(dataset.y_val, dataset.num_classes)
    history = model.fit(notebook.scaled(dataset.x_train), y_train, batch_size=config.batch_size,
                        epochs=config.epochs, verbose=0,
                        validation_data=(notebook.scaled(dataset.x_val), y_val))  # fmt: skip
    return history.history


def epoch_orders(seeded: bool, images: int = 8, epochs: int = 3) -> list[list[int]]:
    """The order in which `model.fit(x, y, shuffle=True)` visits `images` NumPy samples in
    each of `epochs` epochs, after `keras.utils.set_random_seed(0)`, with TensorFlow's global
    seed kept (`seeded`) or cleared, as `notebook.fit` clears it."""
    import tensorflow as tf

    seen: list[int] = []

    class Record(keras.layers.Layer):
        def call(self, inputs, training=None):
            if training:
                seen.extend(int(value) for value in keras.ops.convert_to_numpy(inputs)[:, 0])
            return inputs

    keras.utils.set_random_seed(0)
    if not seeded:
        tf.random.set_seed(None)
    model = keras.Sequential([keras.Input((1,)), Record(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)  # Record runs in Python.
    samples = np.arange(images, dtype="float32")[:, None]
    model.fit(samples, samples, batch_size=images, epochs=epochs, shuffle=True, verbose=0)
    return [seen[epoch * images : (epoch + 1) * images] for epoch in range(epochs)]


WAYS = {
    "notebook, one order": functools.partial(notebook.fit, reshuffle=False),
    "notebook": notebook.fit,
    "notebook network, cifarlab batches": notebook_network_cifarlab_batches,
    "cifarlab network, notebook fit": cifarlab_network_notebook_fit,
    "cifarlab": harness.cifarlab_history,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 archive or folder")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--experiment", default="batchnorm", choices=notebook.EXPERIMENTS[::2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ways", type=int, nargs="+", default=list(range(1, len(WAYS) + 1)))
    args = parser.parse_args()
    ways = {way: fit for number, (way, fit) in enumerate(WAYS.items(), 1) if number in args.ways}
    for seeded in (True, False):
        print(f"fit's order per epoch, TensorFlow's seed {'set' if seeded else 'cleared'}: "
              f"{epoch_orders(seeded)}")  # fmt: skip
    dataset = harness.per_class(data.load(args.data, quiet=True), args.per_class)
    print(f"{environment.cpu_name()}; {args.experiment}, {args.epochs} epochs, float32, "
          f"{len(dataset.y_train):,} train / {len(dataset.y_val):,} val images", flush=True)
    results = {way: [] for way in ways}
    for seed in args.seeds:
        config = configs.override(configs.experiment(args.experiment), epochs=args.epochs,
                                  seed=seed, precision="float32")  # fmt: skip
        for way, fit in ways.items():
            accuracy = harness.best_val_accuracy(fit(config, dataset))
            results[way].append(accuracy)
            print(f"seed {seed} {way:<36} {accuracy:.2%}", flush=True)
    reference = statistics.mean(next(iter(results.values())))
    for way, accuracies in results.items():
        mean = statistics.mean(accuracies)
        print(f"mean {way:<36} {mean:.2%} ({100 * (mean - reference):+.2f} vs the first; seeds "
              f"{', '.join(f'{a:.2%}' for a in accuracies)})")  # fmt: skip


if __name__ == "__main__":
    main()
