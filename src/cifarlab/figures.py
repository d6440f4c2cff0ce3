"""A run folder's figures: what `cifarlab study` draws into each run after training it.

`curves.png`, `confusion.png` and `per_class.png` come from the folder's files alone;
`errors.png`, `features.png`, `samples.png` and (for augmenting runs) `augmentation.png` also
need the images, and `features.png` the trained model's 512-d penultimate features.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from cifarlab import augmentation, evaluation, models, pipeline, plots, report
from cifarlab.config import Config
from cifarlab.data import Dataset

AUGMENTATION = "augmentation.png"
FEATURE_IMAGES = 2000  # Test images in the feature plot: enough to see clusters, few to overlap.
AUGMENTED_COPIES = 7  # Augmented versions shown beside the original image.


def expected(run_dir: Path) -> list[str]:
    """The figure files a finished run folder should hold."""
    names = [*report.RUN_FIGURES, "samples.png"]
    if Config.load(Path(run_dir) / "config.json").augmentation.active:
        names.append(AUGMENTATION)
    return names


def missing(run_dir: Path) -> list[str]:
    return [name for name in expected(run_dir) if not (Path(run_dir) / name).is_file()]


def write(run_dir: Path, data: Dataset, projection: str = "pca") -> list[Path]:
    """Every figure of a finished run folder, drawn from its files, its model and `data`."""
    run_dir = Path(run_dir)
    config = Config.load(run_dir / "config.json")
    written = report.draw_run_figures(report.load_run(run_dir))
    probabilities = np.load(run_dir / "test_probabilities.npy")
    names = data.class_names
    written.append(
        plots.errors(data.x_test, data.y_test, probabilities, names, run_dir / "errors.png")
    )
    written.append(plots.samples(data.x_train, data.y_train, names, run_dir / "samples.png"))
    written.append(write_features(run_dir, data, projection, config.seed))
    if config.augmentation.active:
        written.append(write_augmentation(run_dir, data, config))
    return written


def write_features(run_dir: Path, data: Dataset, projection: str, seed: int) -> Path:
    """`features.png`: the best checkpoint's penultimate features of test images, in 2-D."""
    count = min(FEATURE_IMAGES, len(data.y_test))
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.y_test), count, replace=False))
    extractor = models.feature_extractor(evaluation.load_best(run_dir))
    features = extractor.predict(pipeline.image_batches(data.x_test[chosen]), verbose=0)
    points = plots.project(np.asarray(features, dtype=np.float32), projection, seed)
    return plots.features(
        points, data.y_test[chosen], data.class_names, run_dir / "features.png", projection
    )


def write_augmentation(run_dir: Path, data: Dataset, config: Config) -> Path:
    """`augmentation.png`: one training image and versions of it as this run's training sees."""
    augment = augmentation.augmenter(config.augmentation, config.seed)
    image = data.x_train[0]
    copies = np.repeat(pipeline.scale(image)[None], AUGMENTED_COPIES, axis=0)
    augmented = keras.ops.convert_to_numpy(augment(copies, training=True)).astype(np.float32)
    images = np.concatenate([image[None], np.round(np.clip(augmented, 0, 1) * 255)])
    label = data.class_names[data.y_train[0]]
    titles = [f"original ({label})"] + [
        f"augmented {index}" for index in range(1, AUGMENTED_COPIES + 1)
    ]
    settings = config.augmentation
    flip = "on" if settings.horizontal_flip else "off"
    title = (
        f"What '{config.name}' trains on: rotation up to ±{settings.rotation_degrees:g}°, "
        f"shift up to {settings.shift:.0%}, horizontal flip {flip}"
    )
    return plots.image_grid(
        images.astype(np.uint8), titles, run_dir / AUGMENTATION, columns=4, title=title
    )
