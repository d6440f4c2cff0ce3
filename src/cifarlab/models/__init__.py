"""The models: a config's network, built-in (`networks`) or the user's own
(`cifarlab.builders`), with how it learns (`optimizers`) and what it is made of (`inspection`).

`config.network` names a built-in network; `config.model = "package.module:function"` replaces
it with any function `(config, input_shape, num_classes) -> keras.Model`, built under the run's
dtype policy. Grad-CAM and the feature plot find their layers by inspection, so any such
network works.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
from keras.src.saving import saving_lib

from cifarlab import builders
from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.models.inspection import (
    ADAPT_SAMPLE,
    adapt,
    feature_extractor,
    last_conv_layer,
    summary,
)  # fmt: skip
from cifarlab.models.networks import PatchWhitening, notebook_network, residual_network
from cifarlab.models.optimizers import Lookahead, compile_model, learning_rate, optimizer

__all__ = [
    "ADAPT_SAMPLE", "NETWORKS", "Lookahead", "PatchWhitening", "adapt", "build_model",
    "compile_model", "feature_extractor", "last_conv_layer", "learning_rate", "load_model",
    "notebook_network", "optimizer", "residual_network", "summary",
]  # fmt: skip

NETWORKS = {"notebook": notebook_network, "residual": residual_network}


def build_model(
    config: Config, num_classes: int = 10, dtype_policy: str | None = None
) -> keras.Model:
    """The uncompiled model for `config`; `dtype_policy` e.g. "mixed_bfloat16"."""
    input_shape = (config.image_size, config.image_size, 3)
    if not config.model:
        return NETWORKS[config.network](config, input_shape, num_classes, dtype_policy)
    builder = builders.import_builder(config.model)
    # A user's builder creates layers without a dtype, so it is built under the policy.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy or "float32")
    try:
        model = builder(config, input_shape, num_classes)
    except Exception as error:  # The user's code: its failure is reported, not a traceback.
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise UserError(
            f"The model builder {config.model} failed ({reason}); it must build a keras.Model "
            "from (config, input_shape, num_classes)."
        ) from error
    finally:
        keras.config.set_dtype_policy(previous)
    if not isinstance(model, keras.Model):
        raise UserError(f"{config.model} returned {type(model).__name__}, not a keras.Model.")
    return model


def load_model(path: Path, builder: str = "", compile: bool = True) -> keras.Model:
    """The Keras model file at `path`, saved by a run of `builder` ("package.module:function",
    or "" for cifarlab's own). The builder's module is imported first only when the file says
    some of its layers are classes of that module, so that Keras finds the classes it
    registers; a config naming any other module imports nothing. cifarlab's own layers are
    found as they are (`networks`)."""
    module = builder.partition(":")[0]
    if module and module in own_layer_modules(path):
        builders.import_builder(builder)
    return keras.models.load_model(path, compile=compile)


def own_layer_modules(path: Path) -> set[str]:
    """The modules outside Keras that the model file at `path` names for its layer classes,
    read from the architecture stored in the file without running anything; empty if it is
    not a `.keras` file."""
    try:
        with zipfile.ZipFile(path) as archive:
            # The member Keras's own loader reads the architecture from.
            stored = json.loads(archive.read(saving_lib._CONFIG_FILENAME))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return set()
    found, pending = set(), [stored]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            module = item.get("module")
            if "class_name" in item and isinstance(module, str) and module.split(".")[0] != "keras":
                found.add(module)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found
