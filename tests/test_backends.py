"""Training and evaluation on the JAX backend, in a subprocess, with TensorFlow kept out.

GPU machines have JAX but no TensorFlow, so cifarlab must train there without importing it.
The subprocess blocks `import tensorflow` outright, so any TensorFlow-only code reached on
this path fails the test even where TensorFlow is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("TensorFlow is blocked in this test.")

    sys.meta_path.insert(0, NoTensorFlow())
    from cifarlab import cli

    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_augmented_trains_and_evaluates_on_jax_without_tensorflow(tiny_archive, tmp_path):
    out_dir = tmp_path / "augmented"
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-c", SCRIPT, "train", "augmented", "--data", str(tiny_archive),
               "--epochs", "1", "--out", str(out_dir), "--quiet"]  # fmt: skip
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads((out_dir / "environment.json").read_text())
    assert recorded["backend"] == "jax"
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == 40  # Every test image, predicted once.
