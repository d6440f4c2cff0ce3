"""A search space declared in TOML: the experiment every trial starts from, the settings fixed
for all of them, and the settings a search samples, each with its distribution.

    base = "baseline"                              # a built-in, or from --experiments FILE
    epochs = 10                                    # a plain value: the same for every trial
    learning_rate = {loguniform = [1e-4, 1e-1]}
    dropout = {uniform = [0.0, 0.6]}
    dense_units = {randint = [128, 1024]}          # whole numbers, both ends included
    filters = {choice = [[32, 64], [48, 96]]}
    augmentation.shift = {uniform = [0.0, 0.2]}    # nested settings with a dot, or a table

Every mistake (an unknown setting or distribution, bounds the setting cannot take, a sampled
setting that decides the data) is refused in one sentence naming the file and the key, before
anything loads. The data split and seed are never sampled: every trial trains and validates on
the same images, so their validation accuracies compare.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cifarlab import config as configs
from cifarlab import experiments
from cifarlab.config import DATA_SPEC_FIELDS, Config
from cifarlab.errors import UserError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# What every trial must share: the data it is compared on, and what names and seeds it.
_NOT_SAMPLED = ("name", "seed", "model", *DATA_SPEC_FIELDS)


@dataclass(frozen=True)
class Dimension:
    """One sampled setting: `loguniform`/`uniform` (low, high), `randint` (low, high, both
    included) or `choice` (the values)."""

    key: str
    distribution: str
    values: tuple

    def domain(self):
        """The Ray Tune domain that samples it (Optuna reads the same domains)."""
        from ray import tune

        if self.distribution == "loguniform":
            return tune.loguniform(*self.values)
        if self.distribution == "uniform":
            return tune.uniform(*self.values)
        if self.distribution == "randint":
            return tune.randint(self.values[0], self.values[1] + 1)  # Tune's upper end is open.
        return tune.choice([_encoded(value) for value in self.values])

    def decoded(self, sampled: object) -> object:
        """The setting's value for what Tune sampled (choices of lists travel as JSON text)."""
        if self.distribution == "choice" and isinstance(sampled, str):
            encoded = [_encoded(value) for value in self.values]
            if sampled in encoded:
                return self.values[encoded.index(sampled)]
        return sampled

    def holds(self, value: object) -> bool:
        """True if this dimension can sample `value` (the base's own setting, say)."""
        if self.distribution == "choice":
            return _encoded(value) in [_encoded(choice) for choice in self.values]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        low, high = self.values
        return low <= value <= high

    def describe(self) -> str:
        if self.distribution == "choice":
            return f"{self.key} ∈ {{{', '.join(map(_shown, self.values))}}}"
        low, high = self.values
        return f"{self.key} ~ {self.distribution}({_shown(low)}, {_shown(high)})"


@dataclass(frozen=True)
class SearchSpace:
    """The base config (fixed settings applied) and the dimensions a search samples."""

    base: Config
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [dimension.key for dimension in self.dimensions]

    def param_space(self) -> dict:
        return {dimension.key: dimension.domain() for dimension in self.dimensions}

    def settings(self, sampled: dict) -> dict[str, object]:
        """The sampled values, decoded, in the space's order."""
        return {dim.key: dim.decoded(sampled[dim.key]) for dim in self.dimensions}

    def config(self, sampled: dict) -> Config:
        """The trial's complete config: the base with the sampled settings."""
        return configs.override(self.base, **self.settings(sampled))

    def base_point(self) -> dict | None:
        """The base's own settings as a point to try first, if the space holds them all."""
        values = {key: configs.setting_value(self.base, key) for key in self.keys}
        if not all(dim.holds(values[dim.key]) for dim in self.dimensions):
            return None
        return {
            dim.key: _encoded(values[dim.key]) if dim.distribution == "choice" else values[dim.key]
            for dim in self.dimensions
        }

    def record(self) -> dict:
        """What a search folder keeps of its space, to refuse a rerun with another."""
        return {
            "base": self.base.to_dict(),
            "dimensions": [
                {"key": dim.key, "distribution": dim.distribution, "values": list(dim.values)}
                for dim in self.dimensions
            ],
        }


def load_space(
    path: str | Path, experiments_file: str | Path | None = None, **overrides: object
) -> SearchSpace:
    """The space the TOML file at `path` declares; `overrides` (the command line's, None left
    out) replace its fixed settings but may not name a sampled one."""
    path = Path(path)
    document = experiments.read_toml(path, "Search space")
    base_name = document.pop("base", "baseline")
    if not isinstance(base_name, str):
        raise UserError(f"{path}: base must be an experiment's name, not {base_name!r}.")
    base = experiments.find(base_name, experiments_file)
    entries = _flattened(document)
    sampled = {key: value for key, value in entries.items() if isinstance(value, dict)}
    fixed = {key: value for key, value in entries.items() if key not in sampled}
    if not sampled:
        raise UserError(f"{path} samples no setting; give one a distribution, e.g. "
                        "learning_rate = {loguniform = [1e-4, 1e-1]}.")  # fmt: skip
    given = {key: value for key, value in overrides.items() if value is not None}
    for key in given:
        if key.replace("-", "_") in sampled:
            raise UserError(f"{path} samples {key}; leave its command-line flag out.")
    try:
        base = configs.override(base, **{**fixed, **given})
    except UserError as error:
        raise UserError(f"{path}: {_lower_first(str(error))}") from error
    dimensions = tuple(_dimension(path, base, key, table) for key, table in sampled.items())
    return SearchSpace(base, dimensions)


def _flattened(document: dict) -> dict[str, object]:
    """The settings with dotted keys: `[augmentation]`'s as `augmentation.shift`; every other
    table is a distribution."""
    flat: dict[str, object] = {}
    for key, value in document.items():
        if key == "augmentation" and isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def _dimension(path: Path, base: Config, key: str, table: dict) -> Dimension:
    where = f"{path}: {key}"
    if key in _NOT_SAMPLED:
        raise UserError(f"{where} cannot be searched: every trial shares the data split, seed "
                        "and name, so that their validation accuracies compare.")  # fmt: skip
    if key not in configs.settings():
        raise UserError(f"{where} is not a setting{configs.did_you_mean(key, configs.settings())}"
                        f"; valid settings are {', '.join(configs.settings())}.")  # fmt: skip
    if len(table) != 1 or next(iter(table)) not in DISTRIBUTIONS:
        raise UserError(f"{where} must be one distribution, such as {{uniform = [0.0, 0.5]}}; "
                        f"choose {', '.join(DISTRIBUTIONS)}.")  # fmt: skip
    distribution, values = next(iter(table.items()))
    current = configs.setting_value(base, key)
    if distribution == "choice":
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: choice takes a list of values, e.g. [32, 64].")
        if len({_encoded(value) for value in values}) != len(values):
            raise UserError(f"{where}: choice repeats a value; list each value once.")
        parsed = [_checked(where, base, key, value) for value in values]
        return Dimension(key, distribution, tuple(parsed))
    if not _two_numbers(values):
        raise UserError(f"{where}: {distribution} takes two numbers [low, high].")
    low, high = values
    if not low < high and not (distribution == "randint" and low == high):
        raise UserError(f"{where}: {distribution}'s low end {low} must lie below its high end "
                        f"{high}.")  # fmt: skip
    if distribution == "randint":
        if not (isinstance(current, int) and not isinstance(current, bool)) or not all(
            isinstance(value, int) for value in values
        ):
            raise UserError(f"{where}: randint samples whole-number settings with whole-number "
                            "bounds; use uniform or loguniform for this one.")  # fmt: skip
    elif not isinstance(current, float):
        raise UserError(f"{where} is not a decimal setting; sample it with randint or choice.")
    if distribution == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs a positive low end, not {low}.")
    for value in values:
        _checked(where, base, key, float(value) if distribution != "randint" else value)
    return Dimension(key, distribution, (low, high))


def _checked(where: str, base: Config, key: str, value: object) -> object:
    """`value` parsed as the setting's, refused in one sentence if a config cannot hold it."""
    try:
        return configs.setting_value(configs.override(base, **{key: value}), key)
    except UserError as error:
        reason = str(error).removeprefix("The setting ")
        raise UserError(f"{where}: {_lower_first(reason)}") from error


def _two_numbers(values: object) -> bool:
    return (
        isinstance(values, list)
        and len(values) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(v) for v in values)
    )


def _encoded(value: object) -> object:
    """Tune and Optuna take plain values as choices; a tuple such as filters goes as JSON."""
    return json.dumps(list(value)) if isinstance(value, tuple | list) else value


def _shown(value: object) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
