"""What `--precision auto` picks on each kind of CPU seen so far, from the CPU's own description.

The flag sets are those of the machines measured in bench/README.md (`precision.py`): an AVX2-only
AMD EPYC (bfloat16 emulated, 7-8 times slower), a Sapphire Rapids Xeon without AMX (bfloat16
convolutions at half float32's speed), the same Xeon with AMX, and an AMD EPYC of family 26
(Zen 5) with AVX-512 BF16 (bfloat16 1.4-1.5 times faster).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarlab import config as configs
from cifarlab import environment

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "fast"),
    [
        (AVX2, "AuthenticAMD", 23, False),  # The AVX2-only EPYC.
        (AVX512_BF16, "GenuineIntel", 6, False),  # Sapphire Rapids with AMX off.
        (AMX, "GenuineIntel", 6, True),  # Sapphire Rapids with AMX.
        (AVX512_BF16, "AuthenticAMD", 26, True),  # Zen 5, measured.
        (AVX512_BF16, "AuthenticAMD", 27, True),  # A later AMD family keeps the instructions.
        (AVX512_BF16, "AuthenticAMD", 25, False),  # Zen 4: not measured, so float32.
        (AVX2, "AuthenticAMD", 26, False),  # No bfloat16 instructions, whatever the family.
        (frozenset(), "", 0, False),  # Nothing readable in /proc/cpuinfo.
    ],
)
def test_bfloat16_counts_as_fast_only_on_the_cpus_where_it_measured_faster(
    flags, vendor, family, fast
):
    reason = environment.fast_cpu_bfloat16(flags, vendor, family)
    assert (reason is not None) == fast
    if fast:
        assert ("AMX" in reason) == ("amx_bf16" in flags)


def test_this_machines_cpu_is_read_from_its_first_processor():
    vendor, family = environment.cpu_model()
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    assert f"vendor_id\t: {vendor}" in first or (vendor == "" and "vendor_id" not in first)
    assert f"cpu family\t: {family}" in first or (family == 0 and "cpu family" not in first)


def test_auto_follows_the_rule_on_this_machine_and_says_why():
    precision, reason = environment.choose_precision("auto")
    if environment.gpu_name() is not None:
        pytest.skip("a GPU decides by its compute capability")
    fast = environment.fast_cpu_bfloat16(environment.cpu_flags(), *environment.cpu_model())
    assert precision == ("bfloat16" if fast else "float32")
    assert reason.startswith("auto: ") and (fast is None or fast in reason)
    assert environment.choose_precision("float32") == ("float32", "as asked")


@pytest.mark.parametrize("name", ["baseline", "augmented", "batchnorm", "modern"])
def test_auto_keeps_float32_for_the_notebooks_batch_normalized_network_alone(name):
    experiment = configs.experiment(name)
    precision, reason = environment.choose_precision("auto", experiment)
    if name == "batchnorm":
        assert precision == "float32" and "batch normalization" in reason
    else:  # As the machine gives any network: bfloat16 where it is fast.
        assert (precision, reason) == environment.choose_precision("auto")
    # Asked for, bfloat16 is what runs, whatever the network.
    assert environment.choose_precision("bfloat16", experiment) == ("bfloat16", "as asked")


def test_the_exception_is_the_network_not_batch_normalization_or_the_name():
    batchnorm = configs.experiment("batchnorm")
    assert environment.loses_accuracy_in_bfloat16(batchnorm)
    # Batch normalization added to baseline by a user's experiment: the same network.
    assert environment.loses_accuracy_in_bfloat16(
        configs.override(configs.BASELINE, name="mine", batch_norm=True)
    )
    assert not environment.loses_accuracy_in_bfloat16(configs.MODERN)  # Residual, with BN.
    assert not environment.loses_accuracy_in_bfloat16(configs.BASELINE)
    own = configs.override(batchnorm, model="tests.custom_models:small_network")
    assert not environment.loses_accuracy_in_bfloat16(own)  # A user's network: not measured.
