"""Does `modern` beat `baseline` at every training-set size, at the same epoch budget?

For each `--data` archive (make smaller ones with `make-cifar10-archive --per-class N`) and
seed, trains `baseline` and `modern` for `--epochs` epochs each through cifarlab's own
`training.train_and_evaluate`, each on its own split as `cifarlab train` makes it
(`dataset.load_for`: modern holds out 20% but at most 1,000 images), and prints the training
images, the batch and learning rate modern's config came to on them (`Config.fitted_to`), and
both test accuracies (modern's with its test-time augmentation), then the mean gap per archive.

    python ../shared/data/make-cifar10-archive --per-class 500 /tmp/c500.tar.gz
    python bench/scaling.py --data /tmp/c500.tar.gz /tmp/c1000.tar.gz --epochs 5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402


def test_accuracy(config: configs.Config, dataset: data.Dataset) -> tuple[float, float]:
    """Test accuracy of the run's best checkpoint, and the run's seconds in all."""
    started = time.perf_counter()
    metrics, _ = harness.cifarlab_run(config, dataset)
    return metrics["test"]["accuracy"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="CIFAR-10 archives or folders")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    logging.getLogger("cifarlab").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # predict's retracing warnings.
    print(f"{environment.cpu_name()}, {args.epochs} epochs per run", flush=True)
    for path in args.data:
        gaps = []
        for seed in args.seeds:
            row = []
            for name in ("baseline", "modern"):
                config = configs.override(configs.experiment(name), epochs=args.epochs, seed=seed)
                dataset = data.load_for(config, path, quiet=True)
                fitted = config.fitted_to(len(dataset.y_train))
                precision, _ = environment.choose_precision(config.precision, config)
                accuracy, seconds = test_accuracy(config, dataset)
                row.append(accuracy)
                print(f"{path} seed {seed} {name:<8}: {len(dataset.y_train):,} train / "
                      f"{len(dataset.y_val):,} val, batch {fitted.batch_size} at "
                      f"{fitted.learning_rate:.4g}, {precision}: test {accuracy:.2%} "
                      f"({seconds:.0f} s)", flush=True)  # fmt: skip
            gaps.append(row[1] - row[0])
        print(f"{path}: modern − baseline {100 * statistics.mean(gaps):+.2f} points "
              f"(seeds: {', '.join(f'{100 * gap:+.2f}' for gap in gaps)})", flush=True)


if __name__ == "__main__":
    main()
