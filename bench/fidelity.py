"""Where does cifarlab's result part from the notebook's own code? One change at a time.

`bench/parity.py` found cifarlab's `batchnorm` several points above the notebook's own
`model.fit` (every seed, on three CPUs) although the network, optimizer, loss and split read
the same. This probe trains the same experiment, seeds and data four ways, each one step from
its neighbour, and prints the best validation accuracy (at the epoch of lowest validation loss)
of each, per seed and as a mean:

1. `notebook`: `bench/notebook.py`'s `fit`, the notebook's code as written;
2. `notebook network, cifarlab batches`: the notebook's `Sequential` fed cifarlab's training
   stream (`input_pipeline.training_batches`: its batch order and scaling) and validation
   batches (`evaluation_batches`, 500 images a batch);
3. `cifarlab network, notebook fit`: cifarlab's model, built and compiled by `models` under
   the run's seed, fed the notebook's arrays by the notebook's `model.fit(x, y, batch_size)`;
4. `cifarlab`: `training.train_and_evaluate`, everything cifarlab's.

1 → 2 changes only the input; 1 → 3 only the network's code and its compilation; 4 is both
and cifarlab's callbacks (checkpoint, backup, per-epoch seeds). Float32 throughout.

    python bench/fidelity.py --data ../shared/data/cifar10-jpeg.tar.gz --per-class 1000 \
        --epochs 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import keras  # noqa: E402
import notebook  # noqa: E402

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


WAYS = {
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
    args = parser.parse_args()
    dataset = harness.per_class(data.load(args.data, quiet=True), args.per_class)
    print(f"{environment.cpu_name()}; {args.experiment}, {args.epochs} epochs, float32, "
          f"{len(dataset.y_train):,} train / {len(dataset.y_val):,} val images", flush=True)
    results = {way: [] for way in WAYS}
    for seed in args.seeds:
        config = configs.override(configs.experiment(args.experiment), epochs=args.epochs,
                                  seed=seed, precision="float32")  # fmt: skip
        for way, fit in WAYS.items():
            accuracy = harness.best_val_accuracy(fit(config, dataset))
            results[way].append(accuracy)
            print(f"seed {seed} {way:<36} {accuracy:.2%}", flush=True)
    reference = statistics.mean(results["notebook"])
    for way, accuracies in results.items():
        mean = statistics.mean(accuracies)
        print(f"mean {way:<36} {mean:.2%} ({100 * (mean - reference):+.2f} vs notebook; seeds "
              f"{', '.join(f'{a:.2%}' for a in accuracies)})")  # fmt: skip


if __name__ == "__main__":
    main()
