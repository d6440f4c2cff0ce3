"""Screenshots of the served page (after classifying an image) and of a study's report, at a
desktop width (1280 px) and a phone width (390 px), written next to this script.

    .venv/bin/python docs/screenshots.py --image ship.jpg --report runs/report.html \
        runs/baseline runs/batchnorm

Starts `cifarlab serve` on the run folders on a free loopback port, drives Debian's Chromium
(/usr/bin/chromium) with Playwright, and stops the server again. Needs the `serve` and `test`
extras (FastAPI, Playwright) and the chromium package; nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
WIDTHS = {"1280": (1280, 900), "390": (390, 844)}  # Desktop, and an iPhone 12-15's viewport.
START_SECONDS = 180  # Loading and warming up the models takes a while on a small CPU.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run_dirs: list[Path], log) -> tuple[subprocess.Popen, str]:
    """`cifarlab serve run_dirs` on a free port, once it answers; and its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "cifarlab.cli", "serve", *map(str, run_dirs),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base_url}/api/runs", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"cifarlab serve did not start; its log is {log.name}")


def shoot_page(browser, base_url: str, image: Path) -> list[Path]:
    written = []
    for label, (width, height) in WIDTHS.items():
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(base_url)
        page.wait_for_selector("#runs tbody tr")
        page.set_input_files("#file-input", str(image))
        page.wait_for_function(
            "!document.getElementById('result').hidden"
            " && document.getElementById('heatmap').naturalWidth > 0"
            " && document.getElementById('preview').naturalWidth > 0"
        )
        page.wait_for_load_state("networkidle")  # The learning-curve thumbnails.
        path = DOCS / f"page-{label}.png"
        page.screenshot(path=path, full_page=True)
        page.close()
        written.append(path)
    return written


REPORT_HEIGHT = 2400  # Pixels of the report shown, from its top.


def shoot_report(browser, report: Path) -> list[Path]:
    written = []
    for label, (width, height) in WIDTHS.items():
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("networkidle")
        path = DOCS / f"report-{label}.png"
        # The top of the report (context, results, diagnosis): the whole page is 14,000 px long.
        page.screenshot(path=path, full_page=True,
                        clip={"x": 0, "y": 0, "width": width, "height": REPORT_HEIGHT})  # fmt: skip
        page.close()
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders to serve")
    parser.add_argument("--image", type=Path, required=True, help="image to classify")
    parser.add_argument("--report", type=Path, help="a study's report.html to screenshot too")
    arguments = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as log:
        server, base_url = start_server(arguments.run_dirs, log)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            written = shoot_page(browser, base_url, arguments.image)
            if arguments.report:
                written += shoot_report(browser, arguments.report)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
