"""Accuracy parity: does cifarlab learn as well as the notebook's way, in each precision?

For each experiment and each of `--seeds` it trains, with the same seed (the validation split,
initial weights and shuffling), data and epochs, the notebook's way (bench/notebook.py: float32
`model.fit` on NumPy arrays, the real `ImageDataGenerator` for `augmented`) and cifarlab's
`train_and_evaluate` at each of `--precisions`, and takes each run's validation accuracy at its
best epoch (lowest validation loss, the checkpoint both ways keep). The summary gives, per
experiment and way, each seed's accuracy, their mean, and the mean's difference to cifarlab's
float32 and to the notebook's. Shuffling and augmentation draws differ between the ways and
precisions, so a difference also holds ordinary run-to-run noise: about ±1 point on 2,000
validation images, which is why more than one seed is needed.

    python bench/parity.py --data cifar-10-python.tar.gz --per-class 1000 --epochs 10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import notebook  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402

NOTEBOOK = "notebook float32"


def main() -> None:
    args = parse_args()
    print(environment.hardware_summary(environment.record("float32")))
    datasets = {
        seed: harness.per_class(data.load(args.data, seed=seed, quiet=True), args.per_class)
        for seed in args.seeds
    }
    sizes = datasets[args.seeds[0]]
    print(f"data: {args.data}, {len(sizes.y_train):,} train / {len(sizes.y_val):,} val; "
          f"{args.epochs} epochs; seeds {', '.join(map(str, args.seeds))}", flush=True)  # fmt: skip
    ways = ([] if args.skip_notebook else [NOTEBOOK]) + [f"cifarlab {p}" for p in args.precisions]
    accuracies = {}  # (experiment, way) -> one accuracy per seed
    for name in args.experiments:
        for seed, dataset in datasets.items():
            base = configs.override(configs.experiment(name), epochs=args.epochs, seed=seed)
            for way in ways:
                started = time.perf_counter()
                if way == NOTEBOOK:
                    history = notebook.fit(base, dataset)
                else:
                    precision = way.split()[1]
                    config = configs.override(base, precision=precision)
                    history = harness.cifarlab_history(config, dataset)
                accuracy = harness.best_val_accuracy(history)
                accuracies.setdefault((name, way), []).append(accuracy)
                print(f"{name:<10} seed {seed} {way:<18} best val acc {accuracy:.2%} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    print()
    print_summary(accuracies, args.experiments, ways)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 archive (e.g. a real subset)")
    parser.add_argument("--per-class", type=int, help="N of the archive's images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--experiments", nargs="+", default=list(notebook.EXPERIMENTS))
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=configs.PRECISIONS)  # fmt: skip
    parser.add_argument("--skip-notebook", action="store_true", help="cifarlab's runs only")
    return parser.parse_args()


def print_summary(accuracies: dict, experiments: list[str], ways: list[str]) -> None:
    """Per experiment and way: each seed's best validation accuracy, the mean, and the mean's
    difference (in points) to cifarlab's float32 and to the notebook's way, where they ran."""
    print("best validation accuracy per seed, mean, and the mean's difference in points")
    print(f"{'experiment':<10}  {'way':<18}  {'per seed':<24}  {'mean':>7}  "
          f"{'vs cifarlab fp32':>16}  {'vs notebook':>11}")  # fmt: skip
    for name in experiments:
        means = {way: statistics.mean(accuracies[name, way]) for way in ways}
        for way in ways:
            seeds = " ".join(f"{accuracy:.2%}" for accuracy in accuracies[name, way])
            print(f"{name:<10}  {way:<18}  {seeds:<24}  {means[way]:>7.2%}  "
                  f"{difference(means, way, 'cifarlab float32'):>16}  "
                  f"{difference(means, way, NOTEBOOK):>11}")  # fmt: skip


def difference(means: dict, way: str, reference: str) -> str:
    """`way`'s mean minus `reference`'s, in points; a dash where there is nothing to compare."""
    if reference not in means or way == reference:
        return "—"
    return f"{100 * (means[way] - means[reference]):+.2f}"


if __name__ == "__main__":
    sys.exit(main())
