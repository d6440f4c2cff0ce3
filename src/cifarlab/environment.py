"""What a run ran on: backend, library versions, hardware, and the numeric precision chosen.

`resolve_precision("auto", config)` picks mixed bfloat16 where the hardware runs it fast and
the network learns as well in it, float32 everywhere else. Fast means, measured (bench/README.md,
`precision.py`): a GPU of compute capability 8 or later; a CPU with AMX tiles; an AMD CPU of
family 26 (Zen 5) with AVX-512 BF16, where bfloat16 epochs ran 1.4-1.5 times as fast as float32
ones. AVX-512 BF16 alone is not enough: on a Sapphire Rapids CPU without AMX oneDNN's bfloat16
convolutions ran at about half the float32 speed, and on an AVX2-only CPU bfloat16 is emulated,
7-8 times slower. Other CPUs (an AMD Zen 4 among them) are not measured, so they keep float32.
The notebook's network with batch normalization keeps float32 everywhere: it learned about 2
points less in bfloat16 (`parity.py`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path

import keras

from cifarlab.config import Config
from cifarlab.errors import UserError

_ZEN5_FAMILY = 26  # AMD's family number for Zen 5 (0x1A); Zen 4 is 25.
_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def dtype_policy(precision: str) -> str | None:
    """The Keras dtype policy for a resolved precision (None for plain float32)."""
    if precision not in _POLICIES:
        raise UserError(f"precision must be one of {', '.join(_POLICIES)}, not '{precision}'.")
    return _POLICIES[precision]


def resolve_precision(requested: str, config: Config | None = None) -> str:
    """`requested` itself, or for "auto" the fastest precision this machine trains `config`
    well in."""
    return choose_precision(requested, config)[0]


def choose_precision(requested: str, config: Config | None = None) -> tuple[str, str]:
    """The precision to train `config` in and why, in words, for the run's record and report.

    Without a config, what the machine gives a network that bfloat16 does not harm."""
    if requested != "auto":
        dtype_policy(requested)
        return requested, "as asked"
    if config is not None and loses_accuracy_in_bfloat16(config):
        return "float32", (
            "auto: the notebook's network with batch normalization, 1.4-2.1 points less accurate "
            "in bfloat16 (bench/parity.py)"
        )
    if gpu_name() is not None:
        if _gpu_supports_bfloat16():
            return "bfloat16", "auto: a GPU with fast bfloat16"
        return "float32", "auto: a GPU without fast bfloat16"
    if keras.backend.backend() != "tensorflow":
        return "float32", f"auto: a CPU under {keras.backend.backend()}"
    fast = fast_cpu_bfloat16(cpu_flags(), *cpu_model())
    if fast is None:
        return "float32", "auto: a CPU where bfloat16 is not measured faster than float32"
    return "bfloat16", f"auto: {fast}"


def loses_accuracy_in_bfloat16(config: Config) -> bool:
    """Whether `config` trains the network measured to learn less in bfloat16: the notebook's
    with batch normalization (`batchnorm`, Adam at 1e-2), about 2 points of validation accuracy
    below float32 over seeds on an AMX Xeon and on a Zen 5 EPYC alike. The notebook's network
    without it and modern's residual one learn as well in bfloat16 as in float32."""
    return config.batch_norm and config.network == "notebook" and not config.model


def fast_cpu_bfloat16(flags: frozenset[str], vendor: str, family: int) -> str | None:
    """Why bfloat16 trains faster than float32 on a CPU described so, or None where it does not
    (or was never measured to)."""
    if "amx_bf16" in flags:
        return "a CPU with AMX bfloat16 tiles"
    if "avx512_bf16" in flags and vendor == "AuthenticAMD" and family >= _ZEN5_FAMILY:
        return "an AMD CPU of family 26 or later with AVX-512 BF16, measured 1.4x float32's speed"
    return None


@functools.cache
def _first_processor() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("flags", "vendor_id", ...), or none."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():  # The first processor's block ends here.
                break
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(_first_processor().get("flags", "").split())


def cpu_model() -> tuple[str, int]:
    """The CPU's vendor ("GenuineIntel", "AuthenticAMD") and family number, or ("", 0)."""
    processor = _first_processor()
    family = processor.get("cpu family", "")
    return processor.get("vendor_id", ""), int(family) if family.isdigit() else 0


def cpu_name() -> str:
    return _first_processor().get("model name") or platform.processor() or platform.machine()


@functools.cache
def gpu_name() -> str | None:
    """The first accelerator the active backend sees, or None on a CPU-only machine."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [device for device in jax.devices() if device.platform != "cpu"]
        return devices[0].device_kind if devices else None
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        return devices[0].name if devices else None
    return None


def _gpu_supports_bfloat16() -> bool:
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.is_bf16_supported()
    if backend == "tensorflow":
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]
        )
        return details.get("compute_capability", (0, 0))[0] >= 8
    return True  # JAX's GPU builds target compute capability 8 and later (Ampere, Hopper).


def record(precision: str, reason: str = "") -> dict:
    """A record of the software and hardware, written to every run folder."""
    versions = {}
    for package in ("keras", "tensorflow", "jax", "torch", "numpy", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "backend": keras.backend.backend(),
        "precision": precision,
        "precision_reason": reason,
        "versions": {"python": platform.python_version(), **versions},
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "platform": platform.platform(),
    }


def hardware_summary(environment: dict) -> str:
    """One line naming the hardware, backend and precision of a run, for reports and logs."""
    cpu = f"{environment.get('cpu')} ({environment.get('cpu_count')} cores)"
    keras_version = environment["versions"].get("keras")
    backend, precision = environment["backend"], environment["precision"]
    return f"{environment.get('gpu') or cpu}, Keras {keras_version} on {backend}, {precision}"
