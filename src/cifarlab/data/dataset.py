"""The notebook's steps A–C: find the data, read it safely, and split it reproducibly.

`load` is the one entry point. A `--data` folder of class folders is read by
`cifarlab.data.folders`; otherwise `dataset` names a standard set read by
`cifarlab.data.standard` (CIFAR-10 by default). Images stay uint8 in memory; scaling to [0, 1]
and one-hot labels happen per batch in `cifarlab.input_pipeline`. As in the notebook, a seeded
random share of the training images becomes the validation set, and the test set is kept
apart for the end; a class-folder dataset without a `test/` folder has a stratified test share
carved out first.

    cifarlab data info --data cifar-10-python.tar.gz
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarlab.config import DataSpec
from cifarlab.data import cache, folders, images, safe_files, standard
from cifarlab.errors import UserError

# Training images below which a standard set counts as a small subset: a random validation
# split of a few hundred images per class can leave one class with twice another's share.
SMALL_SUBSET = 20_000


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test images (uint8, N×H×W×3) with integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str  # Where the images came from, for run records and reports.
    name: str = "cifar10"
    notes: dict = field(default_factory=dict)  # How the splits were made.
    spec: DataSpec = field(default_factory=DataSpec)  # The settings it was loaded and split with.

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {sum(counts)}" for split, counts in self.counts().items())
        return (
            f"Dataset({self.name}: {sizes} images of {'×'.join(map(str, self.image_shape))}, "
            f"{self.num_classes} classes, from {self.source})"
        )

    @property
    def split_settings(self) -> dict:
        """The config fields this data was loaded with, which a run on it must record."""
        return self.spec.to_dict()

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of every image, label and class name in every split: equal exactly when two
        datasets hold the same splits. BLAKE2b reads full CIFAR-10 (180 MB) in about 0.3 s."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(list(self.class_names)).encode())
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test,
                      self.y_test):  # fmt: skip
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    def record(self) -> dict:
        """What a run folder keeps of the data it trained on (`run_folder.DATA`)."""
        return {
            "fingerprint": self.fingerprint,
            "source": self.source,
            "name": self.name,
            "class_names": list(self.class_names),
            "images": {split: sum(counts) for split, counts in self.counts().items()},
        }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split, in class order."""
        splits = {"train": self.y_train, "val": self.y_val, "test": self.y_test}
        return {
            split: np.bincount(labels, minlength=self.num_classes).tolist()
            for split, labels in splits.items()
        }


def load(
    path: str | Path | None = None,
    dataset: str = "cifar10",
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    test_fraction: float = 0.2,
    quiet: bool = False,
    stratify: bool = False,
    max_val_images: int = 0,
) -> Dataset:
    """The data at `path` (or `$CIFARLAB_DATA`), split, with images `image_size` pixels square.

    A folder of class folders is read as such; anything else is standard dataset `dataset`
    (archive, extracted folder, or a folder holding either), and without a path it comes from
    the per-user cache, else the official download. `test_fraction` applies only to
    class-folder datasets without a `test/` folder. The validation split is class-balanced for
    class folders, for standard sets under `SMALL_SUBSET` training images, and with `stratify`;
    the full standard sets otherwise keep the notebook's random split. `max_val_images` (if
    set) caps the validation split.
    """
    spec = DataSpec(dataset, image_size, val_fraction, test_fraction, stratify, seed,
                    max_val_images)
    return load_spec(path, spec, quiet)


def load_spec(path: str | Path | None, spec: DataSpec, quiet: bool = False) -> Dataset:
    """The data at `path` loaded and split as `spec` says; the `Dataset` keeps `spec`."""
    folders.refuse_in_an_importing_worker()
    path = given_path(path)
    if path is not None and safe_files.holds_images(path, images.IMAGE_SUFFIXES):
        loaded = _load_folder_archive(path, spec, quiet)
    elif path is not None and folders.is_class_folder(path):
        if spec.dataset != "cifar10":
            raise UserError(
                f"{path} is a folder of class folders, not {spec.dataset}; leave out --dataset."
            )
        loaded = load_folders(
            path, spec.val_fraction, spec.seed, spec.image_size, spec.test_fraction, quiet,
            spec.max_val_images,
        )
    else:
        arrays = standard.read(spec.dataset, path, spec.image_size, quiet)
        loaded = split(
            arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test, arrays.class_names,
            arrays.source, spec.val_fraction, spec.seed, spec.dataset, arrays.notes,
            spec.stratify, spec.max_val_images,
        )  # fmt: skip
    return dataclasses.replace(loaded, spec=spec)


def load_for(config, path: str | Path | None = None, quiet: bool = False) -> Dataset:
    """The data a run of `config` trains on: its dataset, split and image size."""
    return load_spec(path, config.data_spec, quiet)


def split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
    val_fraction: float,
    seed: int,
    name: str = "cifar10",
    notes: dict | None = None,
    stratify: bool = False,
    max_val_images: int = 0,
) -> Dataset:
    """Hold out a seeded random `val_fraction` of the training images (but at most
    `max_val_images`, if set), as the notebook's step A; the same share of every class when
    `stratify` or when the set is a small subset."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie between 0 and 1, not {val_fraction}.")
    num_val, share = held_out(val_fraction, max_val_images, len(y_train))
    if num_val < 1 or num_val == len(y_train):
        raise UserError(f"{len(y_train)} training images are too few to hold out {val_fraction}.")
    limit = _limit_text(share, val_fraction, len(y_train))
    if stratify or len(y_train) < SMALL_SUBSET:
        train, val = stratified_split(y_train, share, seed, class_names, "validation")
        how = f"{share:.0%} of each class{limit}, seed {seed}"
    else:
        order = np.random.default_rng(seed).permutation(len(y_train))
        val, train = order[:num_val], order[num_val:]
        how = f"a random {share:.0%}{limit}, seed {seed}, as in the notebook"
    return Dataset(
        x_train=x_train[train],
        y_train=y_train[train],
        x_val=x_train[val],
        y_val=y_train[val],
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(class_names),
        source=source,
        name=name,
        notes={"val_fraction": val_fraction, "seed": seed, "stratify": stratify, "val_split": how,
               **(notes or {})},
        spec=DataSpec(name, int(x_train.shape[1]), val_fraction, stratify=stratify, seed=seed,
                      max_val_images=max_val_images),
    )  # fmt: skip


def held_out(fraction: float, max_images: int, images: int) -> tuple[int, float]:
    """How many of `images` a split of `fraction` holds out, and their share: `fraction` of
    them, or `max_images` (if set) where that is fewer."""
    if max_images and fraction * images > max_images:
        return max_images, max_images / images
    return int(fraction * images), fraction


def _limit_text(share: float, fraction: float, images: int) -> str:
    """" (N images, the limit)" where the limit lowered the share, else ""."""
    return f" ({round(share * images):,} images, the limit)" if share < fraction else ""


def _load_folder_archive(archive: Path, spec: DataSpec, quiet: bool = False) -> Dataset:
    """A class-folder dataset packed as a tar archive, extracted once into the cache."""
    root = cache.extracted(archive)
    children = [child for child in root.iterdir() if child.is_dir()]
    if len(children) == 1:
        root = children[0]  # One class is no dataset: the archive wraps its folders in one.
    if not folders.is_class_folder(root):
        raise UserError(f"{archive} holds images but not in one folder per class.")
    dataset = load_folders(
        root, spec.val_fraction, spec.seed, spec.image_size, spec.test_fraction, quiet,
        spec.max_val_images,
    )
    name = archive.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    return dataclasses.replace(dataset, source=str(archive), name=name)


def load_folders(
    root: Path,
    val_fraction: float,
    seed: int,
    image_size: int,
    test_fraction: float,
    quiet: bool = False,
    max_val_images: int = 0,
) -> Dataset:
    """A class-folder dataset, its missing test and validation splits carved out per class
    (the validation split at most `max_val_images`, if set)."""
    decoded = folders.read(root, image_size, quiet)
    # Splits are chosen as indices first, so each image is copied once into its split.
    chosen = {split: decoded.indices(split) for split in folders.SPLITS}
    notes = {"val_fraction": val_fraction, "seed": seed}
    for split, fraction, limit, purpose in (("test", test_fraction, 0, "test"),
                                            ("val", val_fraction, max_val_images,
                                             "validation")):  # fmt: skip
        if len(chosen[split]):
            notes[f"{split}_split"] = f"the {split}/ folder"
            continue
        train = chosen["train"]
        _, share = held_out(fraction, limit, len(train))
        keep, held = stratified_split(
            decoded.labels[train], share, seed, decoded.class_names, purpose
        )
        chosen["train"], chosen[split] = train[keep], train[held]
        notes[f"{split}_split"] = (f"{share:.0%} of each class"
                                   f"{_limit_text(share, fraction, len(train))}, carved out "
                                   f"with seed {seed}")  # fmt: skip
    notes["original_sizes"] = folders.size_summary(decoded.original_sizes)
    if decoded.skipped:
        notes["skipped"] = folders.skipped_summary(decoded.skipped)
    images, labels = decoded.images, decoded.labels
    x_train, x_val, x_test = (images[chosen[split]] for split in ("train", "val", "test"))
    y_train, y_val, y_test = (labels[chosen[split]] for split in ("train", "val", "test"))
    return Dataset(
        x_train, y_train, x_val, y_val, x_test, y_test, decoded.class_names,
        source=str(root), name=root.resolve().name, notes=notes,
        spec=DataSpec(image_size=image_size, val_fraction=val_fraction,
                      test_fraction=test_fraction, seed=seed, max_val_images=max_val_images),
    )  # fmt: skip


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, class_names: tuple[str, ...], purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices kept and held out: a seeded `fraction` of every class, at least one image each."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for index, name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(labels == index))
        num_held = max(1, round(fraction * len(members)))
        if num_held >= len(members):
            raise UserError(
                f"Class '{name}' has {len(members)} image(s) left, too few to hold out "
                f"{fraction:.0%} for {purpose} and still train on it; add images to it."
            )
        held.append(members[:num_held])
        kept.append(members[num_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def locate(path: str | Path | None = None, dataset: str = "cifar10", quiet: bool = False) -> Path:
    """The file or folder `load` would read: a class-folder dataset or archive as given, else
    the standard dataset's archive or folder, downloading it only as the last resort."""
    path = given_path(path)
    if path is not None and (
        safe_files.holds_images(path, images.IMAGE_SUFFIXES) or folders.is_class_folder(path)
    ):
        return path
    if dataset not in standard.STANDARDS:
        raise UserError(f"Unknown dataset '{dataset}'; choose {', '.join(standard.STANDARDS)}.")
    return standard.find_source(standard.STANDARDS[dataset], path, quiet)


def given_path(path: str | Path | None) -> Path | None:
    """`path`, else `$CIFARLAB_DATA`, else None (meaning the cache or a download)."""
    if path is None and os.environ.get("CIFARLAB_DATA"):
        path = os.environ["CIFARLAB_DATA"]
    return Path(path).expanduser() if path is not None else None


def counts_table(dataset: Dataset) -> str:
    """A table of images per class and split, for `cifarlab data info`."""
    counts = dataset.counts()
    width = max(len(name) for name in dataset.class_names)
    lines = [
        f"source: {dataset.source}",
        f"image shape: {'×'.join(map(str, dataset.image_shape))}",
        f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7}",
    ]
    for index, name in enumerate(dataset.class_names):
        row = [counts[split][index] for split in ("train", "val", "test")]
        lines.append(f"{name:<{width}}  {row[0]:>7} {row[1]:>7} {row[2]:>7}")
    totals = [sum(counts[split]) for split in ("train", "val", "test")]
    lines.append(f"{'total':<{width}}  {totals[0]:>7} {totals[1]:>7} {totals[2]:>7}")
    return "\n".join(lines + _notes_lines(dataset.notes))


def _notes_lines(notes: dict) -> list[str]:
    lines = [f"{key.replace('_', ' ')}: {notes[key]}" for key in ("test_split", "val_split")
             if key in notes]  # fmt: skip
    sizes = notes.get("original_sizes")
    if sizes and sizes["distinct"] == 1:
        lines.append(f"original image size: {sizes['most_common']}")
    elif sizes:
        lines.append(
            f"original image sizes: {sizes['distinct']} distinct, most common "
            f"{sizes['most_common']} ({sizes['most_common_count']} images), smallest "
            f"{sizes['smallest']}, largest {sizes['largest']}"
        )
    if "channels" in notes:
        lines.append(f"channels: {notes['channels']}")
    lines.append(notes.get("skipped", "skipped: none"))
    return lines
