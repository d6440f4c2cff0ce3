"""Users' own networks: a builder named "package.module:function", a function
`(config, input_shape, num_classes) -> keras.Model`, imported when a run needs it and recorded
with the SHA-256 of its source, so a run folder says exactly which code built its network.

Nothing here imports Keras (a builder's own module may), so configs naming a builder can be
resolved and checked before TensorFlow starts.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import replace

from cifarlab.config import Config
from cifarlab.errors import UserError

Builder = Callable[..., object]  # (config, input_shape, num_classes) -> keras.Model


def import_builder(path: str) -> Builder:
    """The function at "package.module:function", or a `UserError` saying what is wrong."""
    module_name, _, function_name = path.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UserError(
            f"Cannot import the model builder {path} ({error}); give package.module:function "
            "of an importable module."
        ) from error
    try:
        inspect.signature(builder).bind(None, None, None)
    except TypeError as error:  # Not callable, or not with (config, input_shape, num_classes).
        raise UserError(
            f"{path} is not a function (config, input_shape, num_classes) -> keras.Model."
        ) from error
    except ValueError:
        pass  # A callable whose signature Python cannot read: its call will tell.
    return builder


def builder_path(builder: Builder) -> str:
    """ "package.module:function" for a module-level function."""
    return f"{builder.__module__}:{builder.__qualname__}"


def builder_sha256(path: str) -> str:
    """The SHA-256 of the builder's source, recorded with each run that uses it."""
    builder = import_builder(path)
    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError):
        source = path
    return hashlib.sha256(source.encode()).hexdigest()


def record_builder(config: Config) -> Config:
    """`config` with the SHA-256 of its builder's source filled in (unchanged without one)."""
    if not config.model:
        return config
    return replace(config, model_sha256=builder_sha256(config.model))
