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


LOOKAHEAD_EVERY = 5  # Steps between lookahead updates (airbench).
LOOKAHEAD_DECAY = 0.95**LOOKAHEAD_EVERY  # The slow weights' share at the last step.


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al., 2019) as airbench schedules it: every `LOOKAHEAD_EVERY` steps
    the model's weights and normalization statistics become a blend of a slow copy and
    themselves, the slow copy's share growing as the cube of training's progress (none at the
    start, `LOOKAHEAD_DECAY` at the end); after the last step they are the slow copy. A resumed
    run starts its slow copy from the restored weights, so it resumes after the step where
    the two last met (at most `LOOKAHEAD_EVERY - 1` steps earlier)."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_begin(self, logs=None):
        # After BackupAndRestore's on_train_begin: a resume starts from the restored weights.
        self.variables = [v for v in self.model.variables if "float" in str(v.dtype)]
        self.slow = [keras.ops.copy(v.value) for v in self.variables]
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        last = self.step >= self.total_steps
        if self.step % LOOKAHEAD_EVERY and not last:
            return
        share = 1.0 if last else LOOKAHEAD_DECAY * (self.step / self.total_steps) ** 3
        for index, variable in enumerate(self.variables):
            self.slow[index] = share * self.slow[index] + (1 - share) * variable.value
            variable.assign(self.slow[index])
