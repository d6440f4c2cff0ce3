"""`cifarlab predict` on the session's tiny trained run: kinds of image, folders, bad files."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from cifarlab import cli, prediction
from cifarlab.data import images
from cifarlab.data.standard import CIFAR10_CLASSES

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Photos of many kinds, one of them EXIF-rotated and one in a subfolder, plus a text file."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    pixels = RNG.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.convert("RGBA").save(folder / "alpha.png")
    photo.convert("P").save(folder / "palette.gif")
    photo.convert("L").save(folder / "gray.webp")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    photo.resize((7, 900)).save(folder / "more" / "tall.bmp")
    (folder / "readme.txt").write_text("not an image")
    return folder


def test_predict_walks_folders_and_classifies_every_image(trained_run, photo_folder):
    results = prediction.predict(trained_run, [photo_folder], top_k=3)
    names = sorted(result.file.removeprefix(str(photo_folder) + "/") for result in results)
    assert names == ["alpha.png", "deep16.png", "gray.webp", "more/tall.bmp", "palette.gif",
                     "rotated.jpg"]  # fmt: skip
    for result in results:
        assert result.error is None and len(result.classes) == 3
        assert set(result.classes) <= set(CIFAR10_CLASSES)
        assert result.probabilities == sorted(result.probabilities, reverse=True)


def test_predict_scales_images_exactly_as_training(trained_run, tmp_path):
    # A 32×32 PNG reaches the model unchanged, so predict must match the model on the array.
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    [result] = prediction.predict(trained_run, [tmp_path / "exact.png"], top_k=10)
    model = keras.models.load_model(trained_run / "best.keras")
    expected = model.predict(pixels[None].astype(np.float32) / 255.0, verbose=0)[0]
    by_name = dict(zip(result.classes, result.probabilities, strict=True))
    got = np.array([by_name[name] for name in CIFAR10_CLASSES])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cli_table_reports_non_images_and_exits_2(trained_run, photo_folder, capsys):
    code = cli.main(["predict", str(trained_run), str(photo_folder / "alpha.png"),
                     str(photo_folder / "readme.txt"), "--top-k", "2"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2
    header, row = out.strip().splitlines()
    assert header.split() == ["file", "top-1", "top-2"]
    assert row.startswith(str(photo_folder / "alpha.png"))
    readme = photo_folder / "readme.txt"
    supported = "JPEG, PNG, BMP, GIF, WebP or TIFF"
    assert err.strip() == f"cifarlab: {readme} is not a supported image ({supported})."


def test_cli_json_prints_one_parsable_object_per_image(trained_run, photo_folder, capsys):
    assert cli.main(["predict", str(trained_run), str(photo_folder), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(objects) == 6
    for item in objects:
        assert len(item["top"]) == 3
        assert abs(sum(entry["probability"] for entry in item["top"])) <= 1.0 + 1e-6


def test_cli_explain_saves_one_overlay_per_image(trained_run, photo_folder, tmp_path, capsys):
    out_dir = tmp_path / "heatmaps"
    assert (
        cli.main(["predict", str(trained_run), str(photo_folder), "--explain", str(out_dir)]) == 0
    )
    saved = sorted(path.name for path in out_dir.iterdir())
    assert saved == sorted(
        f"{path.stem}.gradcam.png" for path in images.image_files([photo_folder])
    )
    with Image.open(out_dir / "alpha.gradcam.png") as overlay:
        assert overlay.size == (256, 256) and overlay.mode == "RGB"


def test_a_keras_file_works_as_well_as_a_run_folder(trained_run, photo_folder):
    from_folder = prediction.predict(trained_run, [photo_folder / "alpha.png"])
    from_file = prediction.predict(trained_run / "best.keras", [photo_folder / "alpha.png"])
    assert from_folder[0].to_dict() == from_file[0].to_dict()


def test_class_names_come_from_the_run_not_a_fixed_list(trained_run, photo_folder, tmp_path):
    run_dir = tmp_path / "renamed"
    shutil.copytree(trained_run, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["class_names"] = [f"kind{index}" for index in range(10)]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    [result] = prediction.predict(run_dir, [photo_folder / "alpha.png"], top_k=10)
    assert sorted(result.classes) == sorted(metrics["class_names"])
    # Without metrics.json a 10-output model falls back to CIFAR-10's names.
    (run_dir / "metrics.json").unlink()
    [result] = prediction.predict(run_dir, [photo_folder / "alpha.png"], top_k=10)
    assert sorted(result.classes) == sorted(CIFAR10_CLASSES)


def test_other_class_counts_get_neutral_names_without_metrics():
    assert prediction.class_names({}, 3) == ("class 0", "class 1", "class 2")


def test_cli_refuses_a_top_k_above_the_class_count(trained_run, photo_folder, capsys):
    assert cli.main(["predict", str(trained_run), str(photo_folder), "--top-k", "11"]) == 2
    assert "--top-k must lie between 1 and 10, not 11." in capsys.readouterr().err


def test_cli_says_so_when_a_folder_has_no_images(trained_run, tmp_path, capsys):
    assert cli.main(["predict", str(trained_run), str(tmp_path)]) == 2
    assert "No image files were found" in capsys.readouterr().err


def test_cli_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "neither a trained run folder nor a .keras model file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def flip_run(tiny_archive, tmp_path_factory):
    """A run whose config asks for flip and shift test-time augmentation, as `modern`'s does."""
    from cifarlab import config, training
    from cifarlab.data import dataset

    run_config = config.override(
        config.experiment("baseline"), epochs=1, precision="float32", test_time_flip=True,
        test_time_shift=True,
    )  # fmt: skip
    run_dir = tmp_path_factory.mktemp("runs") / "flip"
    training.train_and_evaluate(
        run_config, run_dir, dataset.load_for(run_config, tiny_archive), quiet=True
    )
    return run_dir


def test_predict_and_serve_average_with_mirrored_and_shifted_images_when_the_run_does(
    flip_run, tmp_path
):
    from fastapi.testclient import TestClient

    from cifarlab.serve import app as serve_app

    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    model = keras.models.load_model(flip_run / "best.keras")
    # airbench's weighting: half for the image, a quarter each for it shifted one pixel
    # down-right and up-left (edges reflected); each of the three averaged with its mirror.
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [pixels, padded[:-2, :-2], padded[2:, 2:]]
    outputs = model.predict(np.stack([v for view in views for v in (view, view[:, ::-1])]) / 255.0,
                            verbose=0).reshape(3, 2, -1)  # fmt: skip
    assert np.abs(outputs[0, 0] - outputs[0, 1]).max() > 1e-4  # Else the check proves nothing.
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4
    expected = outputs[0].mean(0) / 2 + (outputs[1].mean(0) + outputs[2].mean(0)) / 4
    expected = dict(zip(CIFAR10_CLASSES, expected, strict=True))

    [result] = prediction.predict(flip_run, [tmp_path / "exact.png"], top_k=10)
    np.testing.assert_allclose(
        result.probabilities, [expected[name] for name in result.classes], atol=1e-5
    )
    with TestClient(serve_app.create_app([flip_run])) as client:
        files = {"image": ("exact.png", (tmp_path / "exact.png").read_bytes(), "image/png")}
        served = client.post("/api/predict", files=files, data={"top_k": "10"}).json()
    assert [entry["class_name"] for entry in served["predictions"]] == result.classes
    np.testing.assert_allclose([entry["probability"] for entry in served["predictions"]],
                               result.probabilities, atol=1e-5)  # fmt: skip
    assert served["explained_class"] == result.classes[0]


def test_a_model_file_outside_its_run_folder_takes_nothing_from_files_beside_it(
    flip_run, tmp_path, capsys
):
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    photo = tmp_path / "exact.png"
    Image.fromarray(pixels).save(photo)

    def predicted(model_or_run) -> dict[str, float]:
        assert cli.main(["predict", str(model_or_run), str(photo), "--top-k", "10", "--json"]) == 0
        top = json.loads(capsys.readouterr().out)["top"]
        return {entry["class"]: entry["probability"] for entry in top}

    model = keras.models.load_model(flip_run / "best.keras")
    plain = dict(zip(CIFAR10_CLASSES, model.predict(pixels[None] / 255.0, verbose=0)[0],
                     strict=True))  # fmt: skip
    in_run = predicted(flip_run)  # Averaged with mirrored and shifted copies, as its run says.
    assert max(abs(in_run[name] - plain[name]) for name in CIFAR10_CLASSES) > 1e-4
    # The run's own checkpoint, named directly, is still the run's.
    assert predicted(flip_run / "best.keras") == in_run

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copy(flip_run / "best.keras", downloads / "model.keras")
    shutil.copy(flip_run / "config.json", downloads / "config.json")  # Asks for flip and shift.
    metrics = json.loads((flip_run / "metrics.json").read_text())
    metrics["class_names"] = [f"kind{index}" for index in range(10)]
    (downloads / "metrics.json").write_text(json.dumps(metrics))
    bare = predicted(downloads / "model.keras")
    assert set(bare) == set(CIFAR10_CLASSES)  # Not the names in the metrics beside it.
    for name in CIFAR10_CLASSES:
        assert bare[name] == pytest.approx(plain[name], abs=1e-5)

    # Named as a run's checkpoint, but beside another program's config: a bare model too.
    shutil.copy(flip_run / "best.keras", downloads / "best.keras")
    (downloads / "config.json").write_text(json.dumps({"name": "photos", "epochs": "all"}))
    assert predicted(downloads / "best.keras") == bare
