"""Experiments users declare themselves: a TOML file of named overrides of a base experiment.

    [experiments.less_dropout]
    base = "baseline"
    dropout = 0.25

    [experiments.wide_adamw]
    base = "augmented"
    filters = [64, 128]
    optimizer = "adamw"
    schedule = "cosine"
    augmentation.rotation_degrees = 15

    [experiments.batchnorm]          # a built-in, as it is

A base is a built-in experiment (`baseline`, `augmented`, `batchnorm`, `modern`) or another
experiment of the file; an entry named like a built-in, without a base, is that built-in with
its overrides. Every error (unknown key, wrong type, unknown or circular base) is refused
before anything trains, in one sentence naming the file, the experiment and the key.

    cifarlab study --experiments my_study.toml
    cifarlab experiments show wide_adamw --experiments my_study.toml
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

from cifarlab import builders
from cifarlab import config as configs
from cifarlab.config import Config
from cifarlab.errors import UserError


def load_file(path: str | Path) -> dict[str, Config]:
    """Every experiment the file declares, in its order, each a complete resolved `Config`."""
    path = Path(path)
    document = read_toml(path, "Experiment file")
    unknown = sorted(set(document) - {"experiments"})
    if unknown:
        raise UserError(f"{path}: unknown section '{unknown[0]}'; declare [experiments.NAME].")
    declared = document.get("experiments")
    if not isinstance(declared, dict) or not declared:
        raise UserError(f"{path} declares no experiments; add [experiments.NAME] tables.")
    resolved: dict[str, Config] = {}
    for name in declared:
        _resolve(path, name, declared, resolved, ())
    return {name: resolved[name] for name in declared}


def read_toml(path: Path, kind: str) -> dict:
    """The TOML document at `path`; a missing, unreadable or invalid file is one sentence that
    names it as `kind` ("Experiment file", "Search space")."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"{kind} {path} does not exist.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{kind} {path} cannot be read ({error}).") from error
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML ({error}).") from error


def resolve(
    experiment: str | Config, path: str | Path | None = None, **overrides: object
) -> Config:
    """The experiment (a `Config`, a built-in's name, or one declared in the file at `path`)
    with `overrides` (None leaves a setting as the experiment has it); a `model` given as a
    function is recorded by its import path. Nothing is imported: `builders.record_builder`
    adds the builder's SHA-256 when the run starts."""
    base = experiment if isinstance(experiment, Config) else find(experiment, path)
    if callable(overrides.get("model")):
        overrides["model"] = builders.builder_path(overrides["model"])
    return configs.override(base, **overrides)


def find(name: str, path: str | Path | None = None) -> Config:
    """Experiment `name`: declared in the file at `path`, else a built-in."""
    if path is not None:
        declared = load_file(path)
        if name in declared:
            return declared[name]
    return configs.experiment(name)


def _resolve(path: Path, name: str, declared: dict, resolved: dict, chain: tuple) -> Config:
    if name in resolved:
        return resolved[name]
    where = f"{path}: experiment '{name}'"
    entry = declared[name]
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a table of settings ([experiments.{name}]).")
    overrides = dict(entry)
    base_name = overrides.pop("base", None if name in configs.EXPERIMENTS else "")
    if base_name == "":
        raise UserError(f'{where} needs a base, e.g. base = "baseline".')
    if base_name is None:  # A built-in named as itself.
        base = configs.EXPERIMENTS[name]
    elif not isinstance(base_name, str):
        raise UserError(f"{where}: base must be an experiment's name, not {base_name!r}.")
    elif base_name in chain or base_name == name:
        circle = " → ".join([*chain, name, base_name])
        raise UserError(f"{where}: its bases form a circle ({circle}).")
    elif base_name in declared:
        base = _resolve(path, base_name, declared, resolved, (*chain, name))
    elif base_name in configs.EXPERIMENTS:
        base = configs.EXPERIMENTS[base_name]
    else:
        choices = ", ".join([*configs.EXPERIMENTS, *declared])
        raise UserError(f"{where}: unknown base '{base_name}'; choose one of {choices}.")
    for key in ("name", "seed"):
        if key in overrides:
            raise UserError(f"{where}: '{key}' cannot be set here; it comes from the table name "
                            "and --seed.")  # fmt: skip
    try:
        config = configs.override(base, **configs.dotted(overrides))
    except UserError as error:
        reason = _lower_first(str(error).removeprefix("The setting "))
        raise UserError(f"{where}: {reason}") from error
    resolved[name] = replace(config, name=name, base=base.name if base.name != name else base.base)
    return resolved[name]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def describe_builtins() -> str:
    """The built-in experiments, one line each: name, base and what differs from it."""
    lines = []
    for name, config in configs.EXPERIMENTS.items():
        if config.base:
            differences = configs.describe_differences(configs.EXPERIMENTS[config.base], config)
            changes = "; ".join(item for item in differences if not item.startswith("name "))
            lines.append(f"{name:<10} {config.base} with {changes}")
        else:
            lines.append(f"{name:<10} the notebook's model A: 2 conv blocks (32, 64), Dense 512, "
                         "dropout 0.5, Adam 1e-3, batch 32, 50 epochs")  # fmt: skip
    return "\n".join(lines)


def to_toml(config: Config) -> str:
    """`config` as an experiment table that can be pasted into an experiments file: every
    setting, so the table alone reproduces it (its base is the built-in it started from)."""
    lines = [f"[experiments.{config.name}]"]
    if config.base:
        lines.append(f'base = "{config.base}"')
    for key in configs.settings():
        if key in ("name", "base", "seed"):
            continue  # The table's name, the line above, and --seed.
        lines.append(f"{key} = {_toml_value(configs.setting_value(config, key))}")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # A JSON string is a TOML basic string.
    return repr(value)
