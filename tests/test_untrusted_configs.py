"""A run folder's files are data, never code: a `config.json` naming a module makes nothing
import unless the model file itself holds layers of that module, and a builder that is not one
is refused in one sentence. Real processes, as a user would run `cifarlab predict`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli

EVIL = "from pathlib import Path\nPath('imported.marker').write_text('ran')\ndef x(*a): pass\n"


def cifarlab_in(folder, *arguments) -> subprocess.CompletedProcess:
    """`python -m cifarlab.cli`, run from `folder`: Python then imports modules found there."""
    command = [sys.executable, "-m", "cifarlab.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=folder)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path)
    return path


def test_predict_does_not_import_a_module_a_config_names(trained_run, photo, tmp_path):
    run = tmp_path / "downloaded"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config.update(model="helper:x", model_sha256="0" * 64)
    (run / "config.json").write_text(json.dumps(config))
    (tmp_path / "helper.py").write_text(EVIL)
    for model in (run, run / "best.keras"):
        result = cifarlab_in(tmp_path, "predict", model, photo)
        assert result.returncode == 0, result.stderr
        assert not (tmp_path / "imported.marker").exists()


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("os:system", "is not a function (config, input_shape, num_classes)"),
        (":x", "model must be written package.module:function"),
        ("os.path:join", "The model builder os.path:join failed (TypeError"),
    ],
)
def test_a_builder_that_is_not_one_is_one_sentence(builder, expected, tiny_archive, tmp_path,
                                                   capsys):  # fmt: skip
    arguments = ["train", "baseline", "--model", builder, "--data", str(tiny_archive),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]  # fmt: skip
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1
    assert expected in error
