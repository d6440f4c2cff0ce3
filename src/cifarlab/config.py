"""One frozen dataclass per run: the notebook's three experiments are named overrides of a base.

A `Config` says everything that decides what a run learns. It is written to every run folder
(`run_folder.CONFIG`), so a run can be resumed, compared and reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace

from cifarlab.errors import UserError


@dataclass(frozen=True)
class Augmentation:
    """Real-time augmentation, as the notebook's `ImageDataGenerator` (step F)."""

    rotation_degrees: float = 0.0  # Random rotation in [-d, +d] degrees.
    shift: float = 0.0  # Random width and height shift, as a fraction of the image side.
    horizontal_flip: bool = False

    @property
    def active(self) -> bool:
        return bool(self.rotation_degrees or self.shift or self.horizontal_flip)


@dataclass(frozen=True)
class Config:
    """Everything that decides what one training run learns."""

    name: str = "baseline"
    learning_rate: float = 1e-3  # Adam step size.
    batch_size: int = 32  # Training images per step.
    epochs: int = 50
    batch_norm: bool = False  # BatchNormalization before every hidden ReLU, no biases there.
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0  # Seeds the validation split, weight initialisation and shuffling.
    val_fraction: float = 0.2  # Share of the training images held out for validation.
    test_fraction: float = 0.2  # Share held out for testing, only where a dataset has no test set.
    dataset: str = "cifar10"
    image_size: int = 32  # Side of the square model input, in pixels.
    precision: str = "auto"  # auto, float32, bfloat16 or float16 (mixed precision).

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be a positive whole number, not {self.epochs}.")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be a positive whole number, not {self.batch_size}.")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, not {self.learning_rate}.")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must lie between 0 and 1, not {self.val_fraction}.")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test_fraction must lie between 0 and 1, not {self.test_fraction}.")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}.")
        if self.image_size < 8:
            raise UserError(f"image_size must be at least 8 pixels, not {self.image_size}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        values = dict(values)
        values["augmentation"] = Augmentation(**values.get("augmentation", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


PRECISIONS = ("auto", "float32", "bfloat16", "float16")

BASELINE = Config(name="baseline", learning_rate=1e-3, batch_size=32, epochs=50)
AUGMENTED = replace(
    BASELINE,
    name="augmented",
    augmentation=Augmentation(rotation_degrees=10, shift=0.1, horizontal_flip=True),
)
BATCHNORM = replace(BASELINE, name="batchnorm", batch_norm=True, learning_rate=1e-2, batch_size=64)

EXPERIMENTS = {config.name: config for config in (BASELINE, AUGMENTED, BATCHNORM)}
ALIASES = {"A": "baseline", "B": "augmented", "C": "batchnorm"}


def experiment(name: str) -> Config:
    """The named experiment's config; accepts the notebook's letters A, B and C."""
    resolved = ALIASES.get(name.upper() if len(name) == 1 else name, name)
    if resolved not in EXPERIMENTS:
        choices = ", ".join([*EXPERIMENTS, *ALIASES])
        raise UserError(f"Unknown experiment '{name}'; choose one of {choices}.")
    return EXPERIMENTS[resolved]


def override(config: Config, **overrides: object) -> Config:
    """`config` with the named fields replaced; values may be strings, parsed to the field's type.

    Unknown keys and values of the wrong type raise `UserError` naming the valid choices.
    """
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name != "augmentation"}
    parsed = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            raise UserError(f"Unknown setting '{key}'; valid settings are {', '.join(fields)}.")
        parsed[key] = _parse(key, value, typing.get_type_hints(Config)[key])
    return replace(config, **parsed)


def _parse(key: str, value: object, kind: type) -> object:
    if isinstance(kind, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise UserError(f"{key} must be of type {kind.__name__}, not {value!r}.")


def describe_differences(old: Config, new: Config) -> list[str]:
    """Each setting that differs, as "key old → new" ("epochs 1 → 20")."""
    return [
        f"{key} {_shown(before)} → {_shown(after)}"
        for key, (before, after) in _differing(old.to_dict(), new.to_dict()).items()
    ]


def _differing(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    found = {}
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found.update(_differing(before, after, f"{prefix}{key}."))
        elif before != after:
            found[f"{prefix}{key}"] = (before, after)
    return dict(sorted(found.items()))


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
