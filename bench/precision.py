"""bfloat16 or float32 on this machine? cifarlab's own training timed in both, alternately.

For each experiment it runs `training.train_and_evaluate` `--pairs` times in float32 and in
bfloat16 (mixed precision, `config.override(config, precision="bfloat16")`), alternating
(float32, bfloat16, float32, bfloat16, …) so that a machine whose speed drifts affects both
alike. Each run's first epoch (tracing, and the first-step stall) is left out; the table gives
per precision the median and range of the remaining epochs' seconds, and float32's median over
bfloat16's (above 1: bfloat16 is faster). The CPU flags that decide bfloat16's speed come first:
oneDNN's fast bfloat16 kernels need AMX (`amx_bf16`, `amx_tile`); `avx512_bf16` alone runs
bfloat16 dot products no faster than float32 ones. Accuracy is bench/parity.py's question.

    python bench/precision.py --data cifar-10-python.tar.gz --per-class 1000 --pairs 3 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import notebook  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402

PRECISIONS = ("float32", "bfloat16")
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # What oneDNN's bfloat16 kernels run on.


def main() -> None:
    args = parse_args()
    if args.data:
        dataset = harness.per_class(data.load(args.data, quiet=True), args.per_class)
    else:
        dataset = harness.synthetic(args.train_images, args.seed)
    flags = environment.cpu_flags()
    print(environment.hardware_summary(environment.record("float32")))
    print("CPU flags: " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS))
    print(f"data: {len(dataset.y_train):,} train / {len(dataset.y_val):,} val images "
          f"({dataset.source}); {args.pairs} × (float32, bfloat16) runs; "
          f"{harness.which_epochs(args.epochs)}", flush=True)  # fmt: skip
    rows = []
    for name in args.experiments:
        base = configs.override(configs.experiment(name), epochs=args.epochs, seed=args.seed)
        seconds = {precision: [] for precision in PRECISIONS}
        for pair in range(1, args.pairs + 1):
            for precision in PRECISIONS:
                started = time.perf_counter()
                config = configs.override(base, precision=precision)
                epochs = harness.cifarlab_history(config, dataset)["seconds"]
                seconds[precision] += harness.timed_epochs(epochs)
                print(f"{name:<10} pair {pair} {precision:<8} epochs "
                      f"{', '.join(f'{s:.1f}' for s in epochs)} s "
                      f"(run {time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        rows.append((name, *(harness.EpochTimes.of(seconds[p]) for p in PRECISIONS)))
    print()
    print("seconds per epoch: median (min–max, epochs timed); speed = float32 / bfloat16 median")
    print(f"{'experiment':<10}  {'float32 s/epoch':<26}  {'bfloat16 s/epoch':<26}  "
          f"{'bf16 speed':>10}")  # fmt: skip
    for name, single, half in rows:
        print(f"{name:<10}  {single!s:<26}  {half!s:<26}  {single.median / half.median:>9.2f}x")
    picks = ", ".join(f"{name} {environment.resolve_precision('auto', configs.experiment(name))}"
                      for name in args.experiments)  # fmt: skip
    print(f"`--precision auto` picks here: {picks}.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="CIFAR-10 archive (default: synthetic images)")
    parser.add_argument("--per-class", type=int, help="N of the archive's images per class")
    parser.add_argument("--train-images", type=int, default=2000, help="synthetic set size")
    parser.add_argument("--experiments", nargs="+", default=list(notebook.EXPERIMENTS))
    parser.add_argument("--pairs", type=int, default=3, help="float32/bfloat16 run pairs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the first untimed")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
