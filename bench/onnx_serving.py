"""Classifying with an ONNX export and ONNX Runtime alone against the Keras checkpoint.

    python bench/onnx_serving.py RUN_DIR [--data cifar-10-python.tar.gz] [--install-size]

It exports RUN_DIR as ONNX (`cifarlab export`, checked against the checkpoint), then, for each
path (the run folder through Keras, the export through ONNX Runtime), measures in fresh
processes:

- start-up: seconds from starting Python to the first answer of `prediction.load_classifier` +
  one `probabilities` call on one image (median of 3 processes);
- latency: milliseconds per single-image `probabilities` call, the page's and the API's unit of
  work (median of 200 calls after 20 warm-up calls), on one 32x32 image.

With `--install-size` it also builds two fresh venvs, `pip install .[onnx]` and `pip install
.[tf,serve]`, and prints the size of each site-packages (this needs the package index).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: prints the seconds to the first answer, then per-call latencies.
MEASURE = """
import json, sys, time
started = float(sys.argv[2])
import numpy as np
from cifarlab import prediction
classifier = prediction.load_classifier(sys.argv[1])
image = np.random.default_rng(0).integers(0, 256, (1, classifier.image_size,
                                           classifier.image_size, 3), dtype=np.uint8)
classifier.probabilities(image)
first = time.time() - started
calls = int(sys.argv[3])
latencies = []
for index in range(calls + 20):
    begun = time.perf_counter()
    classifier.probabilities(image)
    if index >= 20:
        latencies.append(time.perf_counter() - begun)
print(json.dumps({"first": first, "latencies": latencies,
                  "keras": "keras" in sys.modules, "tensorflow": "tensorflow" in sys.modules}))
"""


def measure(source: Path, calls: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(source), repr(time.time()), str(calls)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def site_packages_size(extra: str, root: Path) -> float:
    """MB of site-packages after `pip install .[extra]` into a fresh venv."""
    venv = root / extra.replace(",", "-")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{REPO}[{extra}]"], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--install-size", action="store_true")
    args = parser.parse_args()

    from cifarlab import api

    with tempfile.TemporaryDirectory() as scratch:
        export = api.export(args.run_dir, "onnx", Path(scratch) / "model.onnx", path=args.data)
        print(export.summary())
        for label, source in (("keras (run folder)", args.run_dir), ("onnx runtime", export.path)):
            runs = [measure(source, args.calls) for _ in range(args.processes)]
            first = statistics.median(run["first"] for run in runs)
            latency = statistics.median(value for run in runs for value in run["latencies"])
            imported = "TensorFlow imported" if runs[0]["tensorflow"] else "no TensorFlow"
            print(f"{label:20} start-up to first answer {first:6.2f} s   "
                  f"per image {1000 * latency:7.2f} ms   ({imported})")  # fmt: skip
        if args.install_size:
            for extra in ("onnx", "tf,serve"):
                size = site_packages_size(extra, Path(scratch))
                print(f"pip install .[{extra}]: site-packages {size:,.0f} MB")


if __name__ == "__main__":
    main()
