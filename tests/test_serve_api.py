"""The HTTP API in-process: every endpoint, every kind of bad input, and the server keeps going."""

from __future__ import annotations

import base64
import io
import json
import shutil
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cifarlab.data.standard import CIFAR10_CLASSES
from cifarlab.serve import app as serve_app


def jpeg(size=(120, 90), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def client(trained_run, diagnosed_run):
    with TestClient(serve_app.create_app([trained_run, diagnosed_run])) as test_client:
        yield test_client


def post(client, data: bytes, filename="photo.jpg", **fields):
    return client.post("/api/predict", files={"image": (filename, data, "image/jpeg")},
                       data={key: str(value) for key, value in fields.items()})  # fmt: skip


def test_runs_lists_metrics_verdict_and_curves(client, trained_run):
    runs = {run["name"]: run for run in client.get("/api/runs").json()}
    assert list(runs) == ["baseline", "diagnosed"]
    assert runs["baseline"]["class_names"] == list(CIFAR10_CLASSES)
    assert set(runs["baseline"]["accuracy"]) == {"train", "val", "test"}
    # Evaluation stores every run's diagnosis; the service reports the stored verdict.
    stored = json.loads((trained_run / "metrics.json").read_text())["diagnosis"]["verdict"]
    assert runs["baseline"]["verdict"] == stored and runs["baseline"]["curves_url"] is None
    assert runs["baseline"]["damaged"] is None and runs["diagnosed"]["damaged"] is None
    assert runs["baseline"]["source"] == str(trained_run)
    assert runs["diagnosed"]["verdict"] == "underfitting: train longer"
    curves = client.get(runs["diagnosed"]["curves_url"])
    assert curves.status_code == 200 and curves.headers["content-type"] == "image/png"
    missing = client.get("/api/runs/baseline/curves.png")
    assert missing.status_code == 404 and "no learning curves" in missing.json()["detail"]


def test_two_runs_named_alike_are_told_apart_by_their_folders(trained_run, tmp_path):
    copies = [shutil.copytree(trained_run, tmp_path / study / "baseline") for study in ("a", "b")]
    with TestClient(serve_app.create_app(copies)) as two:
        runs = two.get("/api/runs").json()
    assert [(run["name"], run["source"]) for run in runs] == [
        ("baseline", str(copies[0])), ("baseline-2", str(copies[1]))]  # fmt: skip


def test_predict_returns_top_k_and_a_heat_map_png(client):
    response = post(client, jpeg(), run="diagnosed", top_k=4)
    assert response.status_code == 200
    result = response.json()
    assert result["run"] == "diagnosed" and len(result["predictions"]) == 4
    probabilities = [entry["probability"] for entry in result["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert result["explained_class"] == result["predictions"][0]["class_name"]
    with Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"]))) as heat_map:
        assert heat_map.format == "PNG" and heat_map.size == (256, 256)


def test_predict_defaults_to_the_first_run_and_five_classes(client):
    result = post(client, jpeg()).json()
    assert result["run"] == "baseline" and len(result["predictions"]) == 5


def test_page_static_files_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop-zone"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    docs = client.get("/docs")
    # The docs page works offline: Swagger UI comes from this server, not from a CDN.
    assert docs.status_code == 200 and "cdn" not in docs.text
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]


def test_the_page_and_the_docs_have_an_icon_from_this_server(client):
    icon = 'href="/static/favicon.svg"'
    assert icon in client.get("/").text and icon in client.get("/docs").text
    for path in ("/static/favicon.svg", "/favicon.ico"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("image/svg+xml"), path
        assert response.text.startswith("<svg"), path


@pytest.mark.parametrize(
    ("data", "fields", "status", "message"),
    [
        (b"hello, I am text", {}, 400, "not a supported image"),
        (jpeg((300, 300))[:500], {}, 400, "truncated"),
        (b"", {}, 400, "empty"),
        (jpeg(), {"run": "nonexistent"}, 404, "Unknown run 'nonexistent'"),
        (jpeg(), {"run": "../../etc/passwd"}, 404, "Unknown run"),
        (png_claiming(8000, 8000), {}, 413, "more than the limit"),
        (png_claiming(60_000, 60_000), {}, 413, "too many pixels"),
        (b"\xff\xd8" + b"0" * (10 * 1024 * 1024), {}, 413, "larger than the 10 MB limit"),
        (jpeg(), {"top_k": 0}, 422, "top_k"),
        (jpeg(), {"top_k": 11}, 422, "top_k"),
        (jpeg(), {"top_k": "three"}, 422, "top_k"),
    ],
)
def test_bad_input_gets_a_4xx_json_sentence_and_the_server_keeps_serving(
    client, data, fields, status, message
):
    response = post(client, data, **fields)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert post(client, jpeg()).status_code == 200


def test_missing_or_empty_body_is_a_422_sentence(client):
    for response in (
        client.post("/api/predict"),
        client.post("/api/predict", content=b"", headers={"content-type": "multipart/form-data"}),
        client.post("/api/predict", data={"top_k": "3"}),
    ):
        assert response.status_code in (400, 422)
        assert isinstance(response.json()["detail"], str)
    assert "image: Field required" in client.post("/api/predict").json()["detail"]


def test_streamed_upload_over_the_limit_is_cut_off(client):
    # Without a Content-Length the body is counted as it arrives.
    def chunks():
        for _ in range(12):
            yield b"0" * (1024 * 1024)

    response = client.post("/api/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert response.status_code == 413
    assert "10 MB" in response.json()["detail"]


def test_no_request_reaches_files_outside_the_served_runs(client):
    paths = [
        "/static/../images.py",
        "/static/%2e%2e/app.py",
        "/api/runs/..%2f..%2fx/curves.png",
        "/api/runs/baseline/best.keras",
        "/api/runs/baseline/metrics.json",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 404, path


def test_a_run_with_a_wrong_typed_metrics_file_is_listed_as_damaged_beside_the_others(
    trained_run, diagnosed_run, tmp_path
):
    edited = tmp_path / "edited"
    shutil.copytree(trained_run, edited)
    metrics = json.loads((edited / "metrics.json").read_text())
    metrics["experiment"] = 5  # A hand edit: a number where the experiment's name belongs.
    (edited / "metrics.json").write_text(json.dumps(metrics))
    app = serve_app.create_app([edited, diagnosed_run])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/runs")
        assert response.status_code == 200, response.text
        runs = {run["name"]: run for run in response.json()}
        assert list(runs) == ["edited", "diagnosed"]
        assert runs["diagnosed"]["experiment"] == "baseline"
        assert set(runs["diagnosed"]["accuracy"]) == {"train", "val", "test"}
        assert runs["diagnosed"]["damaged"] is None
        # None of the damaged file's numbers are shown as the run's, and the reason is given.
        assert runs["edited"]["damaged"] == "its metrics.json has no experiment of type str"
        assert runs["edited"]["experiment"] is None and runs["edited"]["accuracy"] == {}
        assert runs["edited"]["verdict"] is None
        # Its model still classifies.
        assert post(client, jpeg(), run="edited").status_code == 200


def test_serving_no_runs_is_a_user_error():
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="at least one run folder"):
        serve_app.create_app([])


def test_the_model_sees_the_same_pixels_as_predict(client, trained_run, tmp_path):
    from cifarlab import prediction

    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    served = post(client, (tmp_path / "exact.png").read_bytes(), "exact.png", top_k=10).json()
    [local] = prediction.predict(trained_run, [tmp_path / "exact.png"], top_k=10)
    assert [entry["class_name"] for entry in served["predictions"]] == local.classes
    np.testing.assert_allclose([entry["probability"] for entry in served["predictions"]],
                               local.probabilities, atol=1e-5)  # fmt: skip
