"""Seconds per training step of `modern`'s network with Keras's BatchNormalization, with
cifarlab's FusedBatchNormalization, and with no normalization at all, per precision.

One process, one batch of 1,024 random images, SGD as `modern` compiles it; 3 warm-up steps,
then the median of `--steps` timed `train_on_batch` calls. The backend is Keras's
(`KERAS_BACKEND`); the fused kernel only exists on TensorFlow, where it runs for 16-bit inputs.

    python bench/normalization.py
    python bench/normalization.py --precisions float32 --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cifarlab import config as configs  # noqa: E402
from cifarlab import environment, models  # noqa: E402
from cifarlab.models import networks  # noqa: E402


class NoNormalization(keras.layers.Layer):
    """Stands in for a normalization layer: its input, unchanged (a bound, not a network)."""

    def __init__(self, momentum=None, scale=None, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs, training=None):
        return inputs


LAYERS = {
    "keras": keras.layers.BatchNormalization,
    "fused": networks.FusedBatchNormalization,
    "none": NoNormalization,
}


def seconds_per_step(layer, precision: str, steps: int) -> float:
    networks.FusedBatchNormalization = layer  # What residual_network builds its layers with.
    try:
        model = models.build_model(configs.MODERN, 10, environment.dtype_policy(precision))
    finally:
        networks.FusedBatchNormalization = LAYERS["fused"]
    models.compile_model(model, configs.MODERN, steps_per_epoch=48)
    rng = np.random.default_rng(0)
    images = rng.random((1024, 32, 32, 3), dtype=np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 1024)]
    for _ in range(3):
        model.train_on_batch(images, labels)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(f"{environment.cpu_name()}, Keras {keras.__version__} on {keras.backend.backend()}")
    for precision in args.precisions:
        for name in args.layers:
            seconds = seconds_per_step(LAYERS[name], precision, args.steps)
            print(f"{precision:9} {name:6} {seconds:.3f} s a step, {1024 / seconds:.0f} images/s",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
