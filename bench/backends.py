"""Training speed of cifarlab's networks under Keras's backends and TensorFlow's settings, on
this CPU: is anything faster than TensorFlow's default kernels?

Each way runs in a process of its own, because Keras picks its backend when it is imported and
TensorFlow reads its oneDNN switch when it starts. In each, per experiment: cifarlab's own
network and compile (`models.build_model`, `models.compile_model`, float32 unless
`--precision`), then `model.fit` on `--images` random images at the experiment's batch size
for `--epochs` epochs, the way the notebook trains (NumPy arrays, shuffled). The first epoch
(tracing, compilation) is left out; the figure is images per second over the others' median,
and each way's ratio to TensorFlow's default. `--rounds` runs the ways in turn that many times,
so that the machine's drift hits every way alike, and takes the median of all timed epochs.

Ways: `tensorflow` (the default: oneDNN on, TensorFlow's own thread pools), `tf-eigen`
(`TF_ENABLE_ONEDNN_OPTS=0`: Eigen's kernels), `tf-threads` (one inter-op thread, every core
intra-op), `jax` (XLA), `torch` (where PyTorch is installed; its CPU wheel).

`--max-isa AVX2` caps every library's kernels at AVX2 so that an AVX-512 machine stands in for
an AVX2-only one: `ONEDNN_MAX_CPU_ISA` for oneDNN (TensorFlow's and PyTorch's), `XLA_FLAGS
--xla_cpu_max_isa` for JAX and `ATEN_CPU_CAPABILITY` for PyTorch's own kernels. TensorFlow's
Eigen kernels need no cap: its wheel builds them for AVX, and only oneDNN dispatches on the CPU.

    python bench/backends.py
    python bench/backends.py --max-isa AVX2 --experiments baseline batchnorm
    python bench/backends.py --ways tensorflow tf-threads --epochs 6 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WAYS = {
    "tensorflow": {"KERAS_BACKEND": "tensorflow"},
    "tf-eigen": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
    "tf-threads": {"KERAS_BACKEND": "tensorflow", "CIFARLAB_BENCH_INTER_OP": "1"},
    "jax": {"KERAS_BACKEND": "jax"},
    "torch": {"KERAS_BACKEND": "torch"},
}
# What `--max-isa AVX2` sets: each library's own name for "no AVX-512".
ISA_CAPS = {
    "AVX2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
    "AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "XLA_FLAGS": "--xla_cpu_max_isa=AVX512"},
}


def images_per_second(experiment: str, images: int, epochs: int, precision: str) -> dict:
    """One way's figure, in this process (whose backend the environment chose)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from cifarlab import config as configs
    from cifarlab import environment, models, training

    if os.environ.get("CIFARLAB_BENCH_INTER_OP"):
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
    config = configs.experiment(experiment)
    keras.utils.set_random_seed(0)
    model = models.build_model(config, 10, environment.dtype_policy(precision))
    steps = images // config.batch_size
    models.compile_model(model, config, steps_per_epoch=steps)
    rng = np.random.default_rng(0)
    x = rng.random((steps * config.batch_size, 32, 32, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(x))]
    history = model.fit(x, y, batch_size=config.batch_size, epochs=epochs, verbose=0,
                        callbacks=[training.EpochTimer()])  # fmt: skip
    seconds = history.history["seconds"]
    return {"version": backend_version(), "images": len(x),
            "images_per_second": len(x) / statistics.median(seconds[1:]),
            "epoch_seconds": seconds}  # fmt: skip


def backend_version() -> str:
    import keras

    name = keras.backend.backend()
    module = __import__(name)
    return f"{name} {module.__version__}"


def run_way(way: str, experiment: str, args: argparse.Namespace) -> dict | None:
    """`way`'s figure from a fresh process, or None when its backend is not installed."""
    environment = {**os.environ, **WAYS[way], **ISA_CAPS.get(args.max_isa, {})}
    command = [sys.executable, __file__, "--one", experiment, "--images", str(args.images),
               "--epochs", str(args.epochs), "--precision", args.precision]  # fmt: skip
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{experiment:<10} {way:<11} failed: {last}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(images_per_second(args.one, args.images, args.epochs, args.precision)))
        return
    from cifarlab import environment

    cap = f", kernels capped at {args.max_isa}" if args.max_isa else ""
    print(f"{environment.cpu_name()}, {os.cpu_count()} cores{cap}; {args.images:,} random "
          f"images, {args.epochs} epochs of model.fit, epochs 2-{args.epochs} timed, "
          f"{args.precision}, {args.rounds} round(s) of the ways in turn", flush=True)  # fmt: skip
    for experiment in args.experiments:
        timed = {}  # way -> the timed epochs' seconds of all its rounds
        images = args.images
        for _ in range(args.rounds):
            for way in args.ways:
                figure = run_way(way, experiment, args)
                if figure is None:
                    continue
                timed.setdefault(way, []).extend(figure["epoch_seconds"][1:])
                images = figure["images"]  # Whole batches: 6,144 of 6,400 at batch 1,024.
                epochs = ", ".join(f"{s:.1f}" for s in figure["epoch_seconds"])
                print(f"{experiment:<10} {way:<11} {figure['images_per_second']:7.0f} images/s "
                      f"({figure['version']}; epochs {epochs} s)", flush=True)  # fmt: skip
        print_summary(experiment, timed, images)


def print_summary(experiment: str, timed: dict, images: int) -> None:
    """Each way's images per second over the median of all its timed epochs, against the
    first way's (TensorFlow's default, unless `--ways` says otherwise)."""
    speeds = {way: images / statistics.median(seconds) for way, seconds in timed.items()}
    reference = next(iter(speeds.values()), None)
    for way, speed in speeds.items():
        spread = f"{min(timed[way]):.1f}-{max(timed[way]):.1f} s, n={len(timed[way])}"
        print(f"{experiment:<10} {way:<11} median {speed:7.0f} images/s, "
              f"{speed / reference:.2f}x the first way (epochs {spread})", flush=True)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["baseline", "batchnorm", "modern"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--images", type=int, default=6400, help="random images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=1, help="the ways in turn, N times")
    parser.add_argument("--max-isa", choices=list(ISA_CAPS), help="cap every library's kernels")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # A child process: one experiment.
    return parser.parse_args()


if __name__ == "__main__":
    main()
