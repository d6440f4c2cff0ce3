"""Where `augmented`'s extra epoch time goes: one model, the same images, augmentation placed
in different spots of the TensorFlow pipeline, runs alternated round by round.

Ways (each trains cifarlab's `augmented` network, float32, batch 32, `--epochs` epochs):

- `none`: no augmentation at all (the `baseline` input), the floor;
- `map`: cifarlab's pipeline: batches gathered in a parallel `tf.data` map, then augmented one
  at a time, in order (so that a seed's draws are the same every run);
- `map1`: the same map with one tf.data thread (`num_parallel_calls=1`, private pool of 1);
- `chunks`: augmenting 1,024 images per map call, then cut into batches of 32;
- `in-step`: the augmentation layers in front of the network, in the training step itself.

It prints the median and range of epochs 2 onwards per way, and how long the augmentation
alone takes over one epoch's images, without training.

    python bench/augment_probe.py --data ../shared/data/cifar10-jpeg.tar.gz --per-class 1000
    python bench/augment_probe.py --data ../shared/data/cifar10-jpeg.tar.gz --per-class 0 \
        --ways none map --rounds 1 --epochs 2    # full data, the two that matter
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cifarlab import augmentation, input_pipeline, models, training  # noqa: E402
from cifarlab import config as configs  # noqa: E402
from cifarlab.data import dataset as data  # noqa: E402

WAYS = ("none", "map", "map1", "chunks", "in-step")
CHUNK = 1024


def batches(way: str, config, images, labels, epochs: int):
    """The training stream of `way`: indices per epoch, gathered, scaled, maybe augmented."""
    if way in ("none", "map", "in-step"):
        plain = way != "map"
        chosen = configs.Augmentation() if plain else config.augmentation
        return input_pipeline.training_batches(
            images, labels, 10, config.batch_size, chosen, config.seed, 0, epochs
        )
    augment = augmentation.augmenter(config.augmentation, config.seed)
    images_tensor, labels_tensor = tf.constant(images), tf.constant(labels.astype(np.int32))
    orders = np.concatenate(
        [input_pipeline.epoch_order(len(labels), config.seed, e) for e in range(epochs)]
    )

    def prepare(indices):
        batch = tf.cast(tf.gather(images_tensor, indices), tf.float32) / 255.0
        return augment(batch, training=True), tf.one_hot(tf.gather(labels_tensor, indices), 10)

    stream = tf.data.Dataset.from_tensor_slices(orders.astype(np.int32))
    if way == "map1":
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        stream = stream.batch(config.batch_size).map(prepare, num_parallel_calls=1)
        return stream.prefetch(2).with_options(options)
    stream = stream.batch(CHUNK).map(prepare, num_parallel_calls=1).unbatch()
    return stream.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_seconds(way: str, config, dataset: data.Dataset, epochs: int) -> list[float]:
    keras.utils.set_random_seed(config.seed)
    network = models.build_model(config, 10, "float32")
    model = network
    if way == "in-step":
        augment = augmentation.augmenter(config.augmentation, config.seed)
        model = keras.Sequential([keras.Input(network.input_shape[1:]), augment, network])
    steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    models.compile_model(model, config, steps)
    timer = training.EpochTimer()
    history = model.fit(
        batches(way, config, dataset.x_train, dataset.y_train, epochs),
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=input_pipeline.evaluation_batches(dataset.x_val, dataset.y_val, 10),
        callbacks=[timer],
        verbose=0,
    )
    return harness.timed_epochs(history.history["seconds"])


def augmentation_alone(config, dataset: data.Dataset) -> float:
    stream = iter(batches("map", config, dataset.x_train, dataset.y_train, 2))
    steps = input_pipeline.steps_per_epoch(len(dataset.y_train), config.batch_size)
    next(stream)
    started = time.perf_counter()
    for _ in range(steps):
        next(stream)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="CIFAR-10 archive (default: synthetic images)")
    parser.add_argument("--per-class", type=int, default=1000, help="0: every image")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    args = parser.parse_args()
    config = configs.override(configs.AUGMENTED, precision="float32")
    if args.data:
        dataset = harness.per_class(
            data.load_for(config, args.data, quiet=True), args.per_class or None
        )
    else:
        dataset = harness.synthetic((args.per_class or 5000) * 8, 0)
    print(f"{len(dataset.y_train)} training images, {harness.which_epochs(args.epochs)}")
    print(f"augmentation alone, one epoch's batches: {augmentation_alone(config, dataset):.1f} s")
    seconds: dict[str, list[float]] = {way: [] for way in args.ways}
    for round_number in range(1, args.rounds + 1):
        for way in args.ways:
            seconds[way] += epoch_seconds(way, config, dataset, args.epochs)
            print(f"round {round_number} {way:8} {seconds[way][-args.epochs + 1 :]}", flush=True)
    floor = harness.EpochTimes.of(seconds["none"]).median if "none" in seconds else None
    for way, values in seconds.items():
        times = harness.EpochTimes.of(values)
        extra = f"  {times.median / floor - 1:+.0%} over none" if floor else ""
        print(f"{way:8} s/epoch {times}{extra}")


if __name__ == "__main__":
    main()
