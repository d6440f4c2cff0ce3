"""A run folder's figures: what `cifarlab study` draws into each run after training it.

The learning curves, confusion matrix and per-class bars come from the folder's files alone
(`draw_from_files`, which `cifarlab report` also uses); the most confident errors, the feature
plot, the sample grid and (for augmenting runs) the augmentation grid also need the images, and
the feature plot the trained model's penultimate features (`draw_all`). File names are
`run_folder`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarlab import run_folder
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.report import plots
from cifarlab.views import Run

FEATURE_IMAGES = 2000  # Test images in the feature plot: enough to see clusters, few to overlap.
AUGMENTED_COPIES = 7  # Augmented versions shown beside the original image.


def expected(run_dir: Path) -> list[str]:
    """The figure files a finished run folder should hold."""
    names = [*run_folder.RUN_FIGURES, run_folder.SAMPLES]
    if run_folder.read_config(run_dir).augmentation.active:
        names.append(run_folder.AUGMENTATION)
    return names


def missing(run_dir: Path, names: tuple[str, ...] | None = None) -> list[str]:
    """Which of `names` (default: every expected figure) the run folder lacks."""
    names = expected(run_dir) if names is None else names
    return [name for name in names if not (Path(run_dir) / name).is_file()]


def draw_from_files(run: Run) -> list[Path]:
    """The figures drawn from a run folder's files: curves, confusion matrix, per-class bars."""
    metrics, run_dir = run.finished_metrics(), run.path
    return [
        plots.curves(
            run.history_rows,
            metrics["best_epoch"],
            run_dir / run_folder.CURVES,
            f"{run.name}: training and validation per epoch",
        ),
        plots.confusion(
            metrics["confusion_matrix"], metrics["class_names"], run_dir / run_folder.CONFUSION
        ),
        plots.per_class(metrics["per_class"], run_dir / run_folder.PER_CLASS),
    ]


def draw_all(run_dir: Path, data: Dataset, projection: str = "pca") -> list[Path]:
    """Every figure of a finished run folder, drawn from its files, its model and `data`."""
    run_dir = Path(run_dir)
    config = run_folder.read_config(run_dir)
    written = draw_from_files(Run(run_dir))
    probabilities = np.load(run_dir / run_folder.TEST_PROBABILITIES)
    names = data.class_names
    written.append(
        plots.errors(data.x_test, data.y_test, probabilities, names, run_dir / run_folder.ERRORS)
    )
    written.append(plots.samples(data.x_train, data.y_train, names, run_dir / run_folder.SAMPLES))
    written.append(draw_features(run_dir, data, projection, config.seed))
    if config.augmentation.active:
        written.append(draw_augmentation(run_dir, data, config))
    return written


def draw_features(run_dir: Path, data: Dataset, projection: str, seed: int) -> Path:
    """The feature plot: the best checkpoint's penultimate features of test images, in 2-D."""
    from cifarlab import input_pipeline, models  # Keras: only for drawing these.

    count = min(FEATURE_IMAGES, len(data.y_test))
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.y_test), count, replace=False))
    extractor = models.feature_extractor(run_folder.load_best_model(run_dir))
    features = extractor.predict(input_pipeline.image_batches(data.x_test[chosen]), verbose=0)
    points = plots.project(np.asarray(features, dtype=np.float32), projection, seed)
    return plots.features(
        points, data.y_test[chosen], data.class_names, run_dir / run_folder.FEATURES, projection
    )


def draw_augmentation(run_dir: Path, data: Dataset, config: Config) -> Path:
    """The augmentation grid: one training image and versions of it as this run's training sees."""
    import keras

    from cifarlab import augmentation, input_pipeline

    augment = augmentation.augmenter(config.augmentation, config.seed)
    image = data.x_train[0]
    copies = np.repeat(input_pipeline.scale(image)[None], AUGMENTED_COPIES, axis=0)
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
        images.astype(np.uint8), titles, run_dir / run_folder.AUGMENTATION, columns=4, title=title
    )
