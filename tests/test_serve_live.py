"""The real server on loopback: a browser uses the page, 16 clients load it, a fuzzer probes it.

One `cifarlab serve` process (the CLI itself) serves the session's tiny run for all three.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image, ImageDraw
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cifarlab.data.standard import CIFAR10_CLASSES

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, installed by .ci/run.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# No 5xx, and every answer is one the schema documents, with the documented type and shape.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
FUZZ_EXAMPLES = 30  # Per operation and mode (valid, invalid): bounds the fuzz's time.
LOAD_CLIENTS, LOAD_REQUESTS = 16, 50


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photo_bytes() -> bytes:
    """A 640×480 JPEG with a sky, ground and a red box: a photo-like upload."""
    image = Image.new("RGB", (640, 480), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 300, 640, 480), fill=(90, 140, 60))
    draw.rectangle((220, 200, 440, 340), fill=(200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def report(capsys, line: str) -> None:
    """Print past pytest's capture: the figures are the point of the load and fuzz tests."""
    with capsys.disabled():
        print(line)


@pytest.fixture(scope="module")
def server(trained_run, diagnosed_run, tmp_path_factory):
    """Base URL of `cifarlab serve` running the two runs on a free loopback port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "cifarlab.cli", "serve", str(trained_run),
               str(diagnosed_run), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"cifarlab serve exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/api/runs", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"cifarlab serve did not start in 180 s:\n{log_path.read_text()}")
        time.sleep(0.5)
    yield base_url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (see .ci/run)")
def test_browser_uploads_an_image_and_sees_class_and_heat_map(server, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "red-box.jpg"
    photo.write_bytes(photo_bytes())
    requested = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda request: requested.append(request.url))
        page.goto(server)
        page.wait_for_selector("#runs tbody tr:nth-child(2)")
        page.set_input_files("#file-input", str(photo))
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        page.wait_for_function("document.querySelector('#runs img')?.naturalWidth > 0")
        predicted = page.text_content("#predicted-class")
        bars = page.locator("#bars li").all_inner_texts()
        runs_text = page.inner_text("#runs")
        page.screenshot(path=tmp_path / "page.png", full_page=True)
        browser.close()
    assert predicted in CIFAR10_CLASSES
    assert len(bars) == 5 and bars[0].startswith(predicted)
    assert "underfitting: train longer" in runs_text and "no curves.png" in runs_text
    assert (tmp_path / "page.png").stat().st_size > 10_000
    # The page needs nothing from outside this server.
    outside = [url for url in requested if not url.startswith((server, "data:", "blob:"))]
    assert outside == []


@pytest.mark.slow
def test_load_16_clients_50_requests_each_without_errors(server, capsys):
    upload = photo_bytes()

    async def one_client() -> tuple[list[float], Counter]:
        latencies, statuses = [], Counter()
        async with httpx.AsyncClient(base_url=server, timeout=120) as client:
            for _ in range(LOAD_REQUESTS):
                started = time.perf_counter()
                response = await client.post(
                    "/api/predict", files={"image": ("photo.jpg", upload, "image/jpeg")}
                )
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1
        return latencies, statuses

    async def all_clients():
        return await asyncio.gather(*(one_client() for _ in range(LOAD_CLIENTS)))

    started = time.perf_counter()
    results = asyncio.run(all_clients())
    seconds = time.perf_counter() - started
    latencies = np.array([value for client_latencies, _ in results for value in client_latencies])
    statuses = sum((client_statuses for _, client_statuses in results), Counter())
    report(
        capsys,
        f"\nload: {LOAD_CLIENTS} clients × {LOAD_REQUESTS} POST /api/predict in {seconds:.1f} s "
        f"({len(latencies) / seconds:.1f} requests/s); latency p50 "
        f"{1000 * statistics.median(latencies):.0f} ms, p99 "
        f"{1000 * np.percentile(latencies, 99):.0f} ms; statuses {dict(statuses)}",
    )
    assert statuses == Counter({200: LOAD_CLIENTS * LOAD_REQUESTS})


def fuzz(operation, mode: GenerationMode, statuses: Counter) -> None:
    """Send up to FUZZ_EXAMPLES generated requests to `operation`, failing on any 5xx."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def probe(case):
        response = case.call(timeout=60)
        statuses[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        probe()
    except Unsatisfiable:
        # An operation without parameters (GET /api/runs) has no invalid requests to make.
        if mode == GenerationMode.POSITIVE:
            raise


def test_fuzzing_the_openapi_schema_finds_no_server_errors(server, capsys):
    # Hypothesis runs per operation and mode inside this test: schemathesis's pytest fixture
    # loader does not work with pytest 9, and the server's URL is only known at run time.
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode, statuses)
    lines = [f"  {label} ({mode}) → {status}: {count}"
             for (label, mode, status), count in sorted(statuses.items())]  # fmt: skip
    report(capsys, f"\nfuzz: {sum(statuses.values())} generated requests\n" + "\n".join(lines))
    operations = {"GET /api/runs", "GET /api/runs/{name}/curves.png", "POST /api/predict"}
    assert {label for label, _, _ in statuses} == operations
    assert not any(status >= 500 for _, _, status in statuses)
