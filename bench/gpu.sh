#!/usr/bin/env bash
# The full study (3 experiments x 50 epochs) on a GPU machine that has JAX with CUDA but no
# TensorFlow and no package registry; prints seconds per epoch and accuracy per experiment.
#
# Bring along, inside the repository (the device tool's `carry`, 64 MiB at most in all):
#   .whl/                     wheels the machine lacks, made here with bench/gpu-wheels.sh
#   .data/cifar10-jpeg.tar.gz the JPEG copy of CIFAR-10 (train|test/<class>/NNNN.jpg), or
#   .data/cifar-10-python.tar.gz the official archive; without either, synthetic data is used.
#
#     bash bench/gpu.sh                      # the real thing: 50 epochs each
#     EPOCHS=1 PER_CLASS=100 bash bench/gpu.sh   # a quick check, also on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${EPOCHS:-50}"
PER_CLASS="${PER_CLASS:-}"  # Training images per class to keep from the JPEGs; empty for all.
PYTHON="${PYTHON:-python3}"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"  # Measured faster than torch for this on GPUs.
export PYTHONPATH="$PWD/src:$PWD/.whl-site${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME="$PWD/.gpu-cache"
export TF_CPP_MIN_LOG_LEVEL=3
WORK=".gpu-run"
mkdir -p "$WORK"

# Install only the brought-along wheels whose distribution the machine does not have already.
if [ -d .whl ]; then
    missing=$("$PYTHON" - <<'EOF'
import importlib.metadata, pathlib, re
for wheel in sorted(pathlib.Path(".whl").glob("*.whl")):
    name = wheel.name.split("-")[0]
    try:
        importlib.metadata.version(re.sub(r"[-_.]+", "-", name))
    except importlib.metadata.PackageNotFoundError:
        print(wheel)
EOF
)
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install -q --no-index --no-deps --target .whl-site $missing
    fi
fi

# The data: the official archive if brought, else the JPEGs converted into the official
# layout (a cifar-10-batches-py folder, which cifarlab reads directly), else synthetic data.
DATA="$WORK/cifar-10-batches-py"
if [ -f .data/cifar-10-python.tar.gz ]; then
    DATA=.data/cifar-10-python.tar.gz
elif [ ! -f "$DATA/batches.meta" ]; then
    "$PYTHON" - "$DATA" "$PER_CLASS" <<'EOF'
import io, pathlib, pickle, sys, tarfile
import numpy as np
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
out, per_class = pathlib.Path(sys.argv[1]), int(sys.argv[2]) if sys.argv[2] else None
rng = np.random.default_rng(0)

def jpeg_split(split, keep):
    from PIL import Image
    images, labels, counts = [], [], dict.fromkeys(CLASSES, 0)
    with tarfile.open(".data/cifar10-jpeg.tar.gz") as tar:
        for member in sorted((m for m in tar if m.isfile() and m.name.startswith(split + "/")),
                             key=lambda m: m.name):
            name = member.name.split("/")[1]
            if keep is not None and counts[name] >= keep:
                continue
            counts[name] += 1
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            images.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).reshape(-1))
            labels.append(CLASSES.index(name))
    order = rng.permutation(len(labels))
    return np.stack(images)[order], [labels[i] for i in order]

def synthetic_split(split, keep):
    count = 10 * (keep or (5000 if split == "train" else 1000))
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).tolist()

real = pathlib.Path(".data/cifar10-jpeg.tar.gz").is_file()
split_images = jpeg_split if real else synthetic_split
if not real:
    print("bench/gpu.sh: no .data/cifar10-jpeg.tar.gz; training on SYNTHETIC data.")
train = split_images("train", per_class)
test = split_images("test", None if per_class is None else max(1, per_class // 5))
out.mkdir(parents=True, exist_ok=True)
for index, chunk in enumerate(np.array_split(np.arange(len(train[1])), 5), start=1):
    batch = {b"data": train[0][chunk], b"labels": [train[1][i] for i in chunk]}
    (out / f"data_batch_{index}").write_bytes(pickle.dumps(batch, protocol=4))
(out / "test_batch").write_bytes(pickle.dumps({b"data": test[0], b"labels": test[1]}, protocol=4))
meta = {b"label_names": [name.encode() for name in CLASSES]}
(out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
print(f"bench/gpu.sh: {len(train[1])} training and {len(test[1])} test images in {out}")
EOF
fi

"$PYTHON" -c "import keras; from cifarlab import environment as e; \
print(e.hardware_summary(e.record(e.resolve_precision('auto'))))"
started=$(date +%s)
for experiment in baseline augmented batchnorm modern; do
    "$PYTHON" -m cifarlab.cli train "$experiment" --data "$DATA" --epochs "$EPOCHS" \
        --out "$WORK/runs/$experiment" --overwrite --quiet > "$WORK/$experiment.log" 2>&1 \
        || { tail -20 "$WORK/$experiment.log"; exit 1; }
    "$PYTHON" - "$WORK/runs/$experiment/metrics.json" <<'EOF'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(f"{metrics['experiment']:<10} {metrics['epochs_run']} epochs, "
      f"{metrics['seconds_per_epoch']:.2f} s/epoch ({metrics['images_per_second']:.0f} img/s), "
      f"val acc {metrics['val']['accuracy']:.2%}, test acc {metrics['test']['accuracy']:.2%}")
EOF
done
echo "study: $(( $(date +%s) - started )) s in all (training, evaluation and start-up)"
