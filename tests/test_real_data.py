"""Real CIFAR-10 images: the baseline learns well above chance in a few epochs."""

from __future__ import annotations

import json

import pytest

from cifarlab import cli


@pytest.mark.slow
def test_baseline_learns_real_cifar10(real_subset, tmp_path):
    # 500 training images per class (4,000 train / 1,000 validation) and 1,000 test images.
    out = tmp_path / "baseline"
    arguments = ["train", "baseline", "--data", str(real_subset), "--epochs", "3", "--quiet"]
    assert cli.main([*arguments, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Measured here (bfloat16, TensorFlow, 2 cores): test accuracy 0.420, 0.476 and 0.469 for
    # seeds 0, 1 and 2. Chance is 0.10; the bar leaves room for noise across machines.
    assert metrics["test"]["accuracy"] > 0.30
