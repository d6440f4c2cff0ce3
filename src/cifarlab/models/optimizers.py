"""How a model learns (step E): the config's optimizer, learning-rate schedule and loss."""

from __future__ import annotations

import keras

from cifarlab.config import Config

ONECYCLE_WARMUP = 0.25  # Share of the steps over which the one-cycle schedule warms up.
SGD_MOMENTUM = 0.9  # Nesterov momentum of the sgd optimizer.


def compile_model(
    model: keras.Model, config: Config, steps_per_epoch: int = 1, steps_per_execution: int = 1
) -> None:
    """The config's optimizer and schedule, cross-entropy (with label smoothing), accuracy."""
    model.compile(
        optimizer=optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam (the notebook's), AdamW, or SGD with Nesterov momentum, at the config's schedule."""
    rate = learning_rate(config, steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=SGD_MOMENTUM, nesterov=True,
                                    weight_decay=decay)  # fmt: skip
    return keras.optimizers.Adam(learning_rate=rate, weight_decay=decay)


def learning_rate(config: Config, steps_per_epoch: int):
    """A constant rate, a cosine decay to zero, or one cycle: a warm-up, then a cosine decay."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    if config.schedule == "onecycle":
        warmup = max(1, int(ONECYCLE_WARMUP * total))
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 25, max(1, total - warmup), warmup_target=config.learning_rate,
            warmup_steps=warmup,
        )  # fmt: skip
    return config.learning_rate
