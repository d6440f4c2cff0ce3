"""Peak memory of `cifarlab serve` while many clients upload decompression-heavy images at once.

Trains a one-epoch `baseline` on a tiny archive in the official format (or serves `--run`),
starts the real `cifarlab serve` on 127.0.0.1 only, opens `--stalled` uploads that stop after
2 bytes of their body, then sends `--uploads` worst-case uploads with at most `--clients` in
flight. It samples the server's resident memory every 20 ms, reads its peak (VmHWM) at the
end, and prints the status of every request and how many stalled uploads the server closed.
It exits 1 if the peak passes `--limit-mb` or any answer is not 200, 413 or 429.

    python bench/upload_memory.py --clients 16 --uploads 48
    PYTHONPATH=/tmp/old/src python bench/upload_memory.py --clients 8 --kinds grey16  # old code
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import write_cifar10_archive  # noqa: E402
from tests.test_serve_api import png_claiming  # noqa: E402

SIDE = 6300  # 39.7 MP: under the 40-megapixel limit.
ANSWERS = {200, 413, 429}  # A result, "too large" or "busy": anything else is a failure.


def upload_files() -> dict[str, bytes]:
    """Small files that decode to a lot: each kind's bytes, made with Pillow and NumPy."""
    grey = np.full((SIDE, SIDE), 1000, np.uint16)
    grey[:64, :64] = 60000  # Mostly uniform, so the file stays small.
    palette = Image.new("P", (SIDE, SIDE), 3)
    palette.putpalette([value for index in range(256) for value in (index, 255 - index, 128)])
    rgba = Image.new("RGBA", (SIDE, SIDE), (200, 30, 30, 128))
    kinds = {
        "grey16": (Image.fromarray(grey), "PNG", {}),  # 2 bytes a pixel; the file.
        "palette": (palette, "PNG", {"transparency": 0}),
        "rgba": (rgba, "PNG", {}),
        "progressive": (rgba.convert("RGB"), "JPEG", {"progressive": True, "quality": 90}),
        "webp": (rgba.resize((3600, 3600)), "WEBP", {"quality": 50, "method": 0}),
        "webp-huge": (rgba, "WEBP", {"quality": 50, "method": 0}),  # Over the byte budget.
    }
    files = {}
    for name, (image, format, options) in kinds.items():
        buffer = io.BytesIO()
        image.save(buffer, format=format, **options)
        files[name] = buffer.getvalue()
    files["bomb"] = png_claiming(50_000, 50_000)  # Over the pixel limit.
    return files


def train_run(folder: Path) -> Path:
    archive = write_cifar10_archive(folder / "cifar-10-python.tar.gz")
    run_dir = folder / "baseline"
    command = [sys.executable, "-m", "cifarlab.cli", "train", "baseline", "--data", str(archive),
               "--epochs", "1", "--out", str(run_dir), "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def start_server(run_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "cifarlab.cli", "serve", str(run_dir), "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/api/runs", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"cifarlab serve did not start:\n{log_path.read_text()}")


def memory_kb(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB: VmRSS (now) or VmHWM (the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """The server's resident memory every 20 ms; kills it past `abort_mb` to spare the host."""

    def __init__(self, process: subprocess.Popen, abort_mb: int):
        super().__init__(daemon=True)
        self.process, self.abort_kb, self.peak_kb, self.aborted = process, abort_mb * 1024, 0, False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02) and self.process.poll() is None:
            rss = memory_kb(self.process.pid, "VmRSS")
            self.peak_kb = max(self.peak_kb, rss)
            if rss > self.abort_kb:
                self.aborted = True
                self.process.kill()


def stall(url: str, count: int) -> list[socket.socket]:
    """`count` uploads that send their head and 2 bytes of a 100 kB body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n--")  # fmt: skip
    sockets = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)))
        connection.sendall(head.encode())
        sockets.append(connection)
    return sockets


def closed_by_server(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        while chunk := connection.recv(65536):  # A 408 answer, then the close.
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


async def send_all(url: str, files: dict[str, bytes], kinds: list[str], uploads: int,
                   clients: int) -> list[tuple[str, int | str, float]]:  # fmt: skip
    """(kind, status or error, seconds) of every upload, at most `clients` at once."""
    slots = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(kind: str):
            async with slots:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/api/predict", files={"image": (f"{kind}.img", files[kind])}
                    )
                    status: int | str = response.status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                return kind, status, time.perf_counter() - started

        return await asyncio.gather(*(one(kinds[i % len(kinds)]) for i in range(uploads)))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train one)")
    parser.add_argument("--clients", type=int, default=16, help="uploads in flight at once")
    parser.add_argument("--uploads", type=int, default=48, help="uploads in all")
    parser.add_argument("--kinds", nargs="+", help="upload kinds to send (default: all)")
    parser.add_argument("--stalled", type=int, default=20, help="uploads that stall")
    parser.add_argument("--limit-mb", type=int, default=2000, help="peak memory allowed")
    parser.add_argument("--abort-mb", type=int, default=12000, help="kill the server above")
    args = parser.parse_args()

    files = upload_files()
    kinds = args.kinds or list(files)
    print(f"CPU: {cpu_name()}; Python {platform.python_version()}")
    Image.MAX_IMAGE_PIXELS = None  # Here only headers are read, the bomb's among them.
    for kind in kinds:
        with Image.open(io.BytesIO(files[kind])) as image:
            shape = f"{image.size[0]}×{image.size[1]} {image.format} {image.mode}"
        print(f"  {kind:<12} {len(files[kind]) / 1000:>8,.0f} kB  {shape}")
    with tempfile.TemporaryDirectory(prefix="upload-memory-") as scratch:
        run_dir = args.run or train_run(Path(scratch))
        process, url = start_server(run_dir, Path(scratch) / "server.log")
        try:
            idle_mb = memory_kb(process.pid, "VmRSS") / 1024
            sampler = Sampler(process, args.abort_mb)
            sampler.start()
            stalled = stall(url, args.stalled)
            started = time.perf_counter()
            results = asyncio.run(send_all(url, files, kinds, args.uploads, args.clients))
            seconds = time.perf_counter() - started
            peak_mb = max(memory_kb(process.pid, "VmHWM"), sampler.peak_kb) / 1024
            sampler.done.set()
            # The server closes stalled uploads after its body and head timeouts (20 s each).
            time.sleep(max(0.0, 45 - (time.perf_counter() - started)))
            closed = sum(closed_by_server(connection) for connection in stalled)
            for connection in stalled:
                connection.close()
            crashed = process.poll() is not None
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log = (Path(scratch) / "server.log").read_text()
    statuses = Counter((kind, status) for kind, status, _ in results)
    print(f"{args.uploads} uploads, {args.clients} at once, in {seconds:.1f} s; "
          f"{args.stalled} stalled uploads, {closed} closed by the server after 45 s")  # fmt: skip
    for (kind, status), count in sorted(statuses.items(), key=str):
        times = [took for k, s, took in results if (k, s) == (kind, status)]
        print(f"  {kind:<12} {status!s:<16} ×{count:<3} {min(times):6.1f}–{max(times):.1f} s")
    print(
        f"server memory: {idle_mb:,.0f} MB idle, peak {peak_mb:,.0f} MB "
        f"(limit {args.limit_mb:,} MB){'; ABORTED: killed above --abort-mb' * sampler.aborted}"
    )
    failed = [status for _, status, _ in results if status not in ANSWERS]
    if "Traceback" in log:
        print("the server logged a traceback:\n" + log[-3000:])
    ok = peak_mb <= args.limit_mb and not failed and not crashed and "Traceback" not in log
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
