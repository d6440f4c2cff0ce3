"""Experiments users declare themselves: TOML files, their own Keras model, nested grids, and the
notebook's three unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cifarlab import cli, config, experiments, models
from cifarlab.data import dataset
from cifarlab.errors import UserError
from cifarlab.scale import sweep
from cifarlab.serve import app as serve_app

STUDY_TOML = """
[experiments.baseline]

[experiments.less_dropout]
base = "baseline"
dropout = 0.25

[experiments.wide_adamw]
base = "less_dropout"
filters = [16, 32]
optimizer = "adamw"
schedule = "cosine"
augmentation.rotation_degrees = 5
"""


def test_a_file_resolves_overrides_of_a_base_and_of_each_other(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY_TOML)
    declared = experiments.load_file(path)
    assert list(declared) == ["baseline", "less_dropout", "wide_adamw"]
    assert declared["baseline"] == config.BASELINE
    assert declared["less_dropout"] == config.override(config.BASELINE, name="less_dropout",
                                                       dropout=0.25)  # fmt: skip
    wide = declared["wide_adamw"]
    assert (wide.base, wide.dropout, wide.filters, wide.optimizer) == (
        "less_dropout",
        0.25,
        (16, 32),
        "adamw",
    )
    assert wide.augmentation.rotation_degrees == 5 and wide.augmentation.shift == 0


BASE = "[experiments.a]\nbase = 'baseline'\n"
BAD_FILES = [
    (BASE + "dropuot = 0.2\n", "experiment 'a': unknown setting 'dropuot'"),
    (BASE + "dropout = 'lots'\n", "experiment 'a': dropout must be of type float"),
    (BASE + "augmentation.spin = 3\n", "unknown setting 'augmentation.spin'"),
    (BASE + "optimizer = 'rmsprop'\n", "optimizer must be one of adam, adamw, sgd"),
    (BASE + "seed = 3\n", "'seed' cannot be set here"),
    ("[experiments.a]\nbase = 'nosuch'\n", "experiment 'a': unknown base 'nosuch'"),
    ("[experiments.a]\nbase = 'b'\n[experiments.b]\nbase = 'a'\n", "circle (a → b → a)"),
    ("[experiments.a]\ndropout = 0.2\n", "experiment 'a' needs a base"),
    ("[experiment.a]\nbase = 'baseline'\n", "unknown section 'experiment'"),
    ("[experiments.a\n", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_every_kind_of_bad_file_exits_2_naming_the_file_and_key(text, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    command = [sys.executable, "-m", "cifarlab.cli", "study", "--experiments", str(path),
               "--out", str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # Refused before anything trains.


def test_a_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        experiments.load_file(tmp_path / "nowhere.toml")


def test_a_toml_study_trains_both_and_reports_what_each_change_did(tiny_archive, tmp_path):
    path = tmp_path / "study.toml"
    # One epoch each: the baseline's own, and less_dropout's, which wide_adamw inherits.
    text = STUDY_TOML.replace("[experiments.baseline]\n", "[experiments.baseline]\nepochs = 1\n")
    path.write_text(text.replace("dropout = 0.25", "dropout = 0.25\nepochs = 1"))
    out = tmp_path / "runs"
    arguments = ["study", "--experiments", str(path), "--data", str(tiny_archive),
                 "--out", str(out), "--quiet", "--precision", "float32"]  # fmt: skip
    assert cli.main(arguments) == 0
    for name in ("baseline", "less_dropout", "wide_adamw"):
        stored = json.loads((out / name / "config.json").read_text())
        assert stored["name"] == name and "augmentation" in stored  # Complete, resolved.
    assert json.loads((out / "wide_adamw" / "config.json").read_text())["filters"] == [16, 32]
    comparisons = json.loads((out / "comparisons.json").read_text())["comparisons"]
    sentences = {entry["candidate"]: entry["sentence"] for entry in comparisons}
    assert sentences["less_dropout"].startswith(
        "less_dropout against its base baseline (dropout 0.5 → 0.25): best validation loss"
    )
    assert "test accuracy" in sentences["less_dropout"] and "verdict" in sentences["less_dropout"]
    assert "filters (32, 64) → (16, 32)" in sentences["wide_adamw"]
    assert "optimizer adam → adamw" in sentences["wide_adamw"]
    report = (out / "report.md").read_text()
    assert (
        "(against its base) less_dropout against its base baseline (dropout 0.5 → 0.25)" in report
    )


def test_your_own_model_trains_predicts_and_serves(tiny_archive, tmp_path):
    out = tmp_path / "mine"
    arguments = ["train", "baseline", "--model", "tests.custom_models:small_network", "--data",
                 str(tiny_archive), "--out", str(out), "--epochs", "1", "--quiet",
                 "--precision", "float32"]  # fmt: skip
    assert cli.main(arguments) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["model"] == "tests.custom_models:small_network"
    assert len(stored["model_sha256"]) == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == models.build_model(config.Config(**{
        **asdict(config.BASELINE), "model": stored["model"], "augmentation": config.Augmentation()
    }), 10).count_params()  # fmt: skip
    assert "verdict" in metrics["diagnosis"]
    # Its Normalization layer was adapted to the training images before the first step.
    images = dataset.load_for(config.BASELINE, tiny_archive, quiet=True).x_train
    adapted = keras.saving.load_model(out / "best.keras").get_layer("pixel_statistics").mean
    np.testing.assert_allclose(
        np.ravel(adapted), images[: models.ADAPT_SAMPLE].mean(axis=(0, 1, 2)) / 255, rtol=1e-4
    )
    # Rerunning resumes nothing and retrains nothing: the same config, recorded hash included.
    assert cli.main(arguments) == 2  # A finished run is not redone unasked.

    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    assert cli.main(["predict", str(out), str(image), "--explain", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "photo.gradcam.png").is_file()
    client = TestClient(serve_app.create_app([out]))
    response = client.post("/api/predict", files={"image": ("photo.png", image.read_bytes())})
    assert response.status_code == 200 and response.json()["heatmap_png"]
    # A fresh process, which has not imported the builder's module, loads the user's own layer.
    fresh = subprocess.run(
        [sys.executable, "-m", "cifarlab.cli", "predict", str(out), str(image)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        )}, capture_output=True, text=True,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert "photo.png" in fresh.stdout


def test_grad_cam_and_features_find_their_layers_by_inspection():
    mine = config.override(config.BASELINE, model="tests.custom_models:small_network")
    own = models.build_model(mine)
    # The activation after the last convolution's batch normalization, before the pooling.
    assert isinstance(models.last_conv_layer(own), keras.layers.Activation)
    assert models.feature_extractor(own).output.shape[-1] == 16
    notebook = models.build_model(config.BATCHNORM)
    assert models.last_conv_layer(notebook).name == "block2_conv2"
    assert models.feature_extractor(notebook).output.shape[-1] == 512
    # The residual network's last map is the sum of its shortcut and its last convolutions.
    modern = models.build_model(config.MODERN)
    assert models.last_conv_layer(modern).name == "block3_add2"
    assert models.feature_extractor(modern).output.shape[-1] == config.MODERN.filters[-1]


def test_the_built_in_modern_recipe_trains_and_explains_on_tiny_data(tiny_archive, tmp_path):
    out = tmp_path / "modern"
    arguments = ["train", "modern", "--data", str(tiny_archive), "--out", str(out),
                 "--epochs", "2", "--quiet", "--precision", "float32"]  # fmt: skip
    assert cli.main(arguments) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["network"] == "residual" and stored["model"] == "" and stored["test_time_flip"]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    # Training adapted the whitening layer to the images: its filters come in opposite pairs.
    kernel = keras.saving.load_model(out / "best.keras").get_layer("whitening").kernel
    kernel = keras.ops.convert_to_numpy(kernel)
    assert np.allclose(kernel[..., 12:], -kernel[..., :12])

    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (30, 200, 30)).save(image)
    assert cli.main(["predict", str(out), str(image), "--explain", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "photo.gradcam.png").is_file()


def test_the_notebooks_three_keep_their_settings_and_parameter_counts():
    expected = {"baseline": 2_168_362, "augmented": 2_168_362, "batchnorm": 2_170_474}
    for name, count in expected.items():
        experiment = config.experiment(name)
        assert models.build_model(experiment).count_params() == count
        assert (experiment.filters, experiment.dropout, experiment.dense_units) == (
            (32, 64),
            0.5,
            512,
        )
        assert (experiment.optimizer, experiment.schedule, experiment.epochs) == (
            "adam",
            "constant",
            50,
        )
    assert (config.BATCHNORM.learning_rate, config.BATCHNORM.batch_size) == (1e-2, 64)


def test_nested_settings_parse_for_grids():
    grid = sweep.parse_grid(
        config.BASELINE, ["augmentation.rotation_degrees=0,10", "dropout=0.25,0.5"]
    )
    assert grid == {"augmentation.rotation_degrees": [0.0, 10.0], "dropout": [0.25, 0.5]}
    points = sweep.expand(config.BASELINE, grid, repeats=1)
    assert [p.configs[0].augmentation.rotation_degrees for p in points] == [0, 0, 10, 10]
    assert points[1].label == "augmentation.rotation_degrees=0.0,dropout=0.5"


@pytest.mark.slow
def test_a_nested_grid_sweep_runs(tiny_archive, tmp_path):
    pytest.importorskip("ray")
    arguments = ["sweep", "baseline", "--grid", "augmentation.rotation_degrees=0,10", "--grid",
                 "dropout=0.25,0.5", "--epochs", "1", "--data", str(tiny_archive), "--out",
                 str(tmp_path), "--workers", "2", "--quiet", "--precision", "float32"]  # fmt: skip
    assert cli.main(arguments) == 0
    rows = (tmp_path / "baseline" / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("augmentation.rotation_degrees,dropout,n,")
    assert len(rows) == 5 and all(row.split(",")[2] == "1" for row in rows[1:])
