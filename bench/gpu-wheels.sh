#!/usr/bin/env bash
# Download into .whl/ the wheels bench/gpu.sh installs on a GPU machine without a registry:
# Keras and what it needs beyond JAX's own dependencies (numpy, scipy, ml_dtypes), plus
# cifarlab's scikit-learn and tqdm. About 25 MiB, so the JPEG data (19 MiB) fits beside it.
#
#     bash bench/gpu-wheels.sh 3.11    # the GPU machine's Python version
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${1:?usage: bench/gpu-wheels.sh PYTHON_VERSION (e.g. 3.11)}"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version "$PYTHON_VERSION" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    keras namex optree rich markdown-it-py mdurl pygments absl-py h5py packaging \
    scikit-learn joblib threadpoolctl tqdm pillow
du -sh .whl
