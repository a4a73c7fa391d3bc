"""A folder of images with one sub-folder per class.

Layouts:

* ``root/train/<class>/*.jpg`` (+ optional ``root/val``, ``root/test``): the given splits; a
  missing val/test split is carved out of train with ``val_fraction`` / ``test_fraction``.
* ``root/<class>/*.jpg``: one pool, split stratified by ``val_fraction`` / ``test_fraction``.

Every problem is one :class:`DataError` naming the path: a missing or unreadable folder, no
class folders, an empty class, a split with a class unknown to train, an unreadable image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from zootune.data.base import DataError, DataSplits, TransformedDataset, stratified_split, take_per_class
from zootune.data.transforms import eval_record, image_transforms, resolve_preprocessing

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _check_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"{what} {str(path)!r} is not readable (check its permissions)")


def scan_classes(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` of ``root/<class>/``; errors for empty classes."""
    _check_dir(root, "image folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {str(root)!r} has no class sub-folders "
                        "(expected one sub-folder of images per class)")
    out: dict[str, list[Path]] = {}
    for c in classes:
        _check_dir(c, "class folder")
        files = sorted(f for f in c.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS and f.is_file())
        if not files:
            raise DataError(f"class folder {str(c)!r} contains no images "
                            f"(extensions: {', '.join(IMG_EXTENSIONS)})")
        out[c.name] = files
    return out


class ImageFiles:
    """Map-style data set of ``(PIL image, label)`` from lists of files."""

    def __init__(self, files: list[Path], targets: list[int], mode: str = "RGB") -> None:
        self.files = files
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                img = im.convert(self.mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {str(path)!r}: {exc.__class__.__name__}") from None
        return img, int(self.targets[i])


def _files_for(split_root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    found = scan_classes(split_root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{str(split_root)!r} has classes not in the training split: {unknown}")
    files, targets = [], []
    for name, fs in found.items():
        files += fs
        targets += [classes.index(name)] * len(fs)
    return files, targets


def build_image_folder(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    if not cfg_data.root:
        raise DataError("data.root must name the image folder for data.name=image_folder")
    root = Path(cfg_data.root).expanduser()
    _check_dir(root, "image folder")
    pre = resolve_preprocessing(cfg_data, preprocessing, default_size=224, default_channels=3)
    mode = "L" if pre["channels"] == 1 else "RGB"
    tr = image_transforms(pre, train=True, augment=cfg_data.augment)
    ev = image_transforms(pre, train=False)

    if (root / "train").is_dir():
        found = scan_classes(root / "train")
        classes = list(found)
        files = [f for fs in found.values() for f in fs]
        targets = [i for i, fs in enumerate(found.values()) for _ in fs]
        pool = ImageFiles(files, targets, mode)
        given = {s: (root / s) for s in ("val", "test") if (root / s).is_dir()}
        fracs = [cfg_data.val_fraction if "val" not in given else 0.0,
                 cfg_data.test_fraction if "test" not in given else 0.0]
        train_idx, val_idx, test_idx = stratified_split(pool.targets, fracs, cfg_data.seed)
        splits: dict[str, Any] = {"val": (pool, val_idx), "test": (pool, test_idx)}
        for s, path in given.items():
            f, t = _files_for(path, classes)
            splits[s] = (ImageFiles(f, t, mode), np.arange(len(f)))
    else:
        found = scan_classes(root)
        classes = list(found)
        files = [f for fs in found.values() for f in fs]
        targets = [i for i, fs in enumerate(found.values()) for _ in fs]
        pool = ImageFiles(files, targets, mode)
        train_idx, val_idx, test_idx = stratified_split(
            pool.targets, [cfg_data.val_fraction, cfg_data.test_fraction], cfg_data.seed)
        splits = {"val": (pool, val_idx), "test": (pool, test_idx)}
    if cfg_data.labels_per_class is not None:
        train_idx = take_per_class(train_idx, pool.targets, cfg_data.labels_per_class, cfg_data.seed)
    if len(train_idx) == 0:
        raise DataError(f"image folder {str(root)!r}: the training split is empty")

    def mk(split: str):
        ds, idx = splits[split]
        return TransformedDataset(ds, idx, ev) if len(idx) else None

    return DataSplits(
        train=TransformedDataset(pool, train_idx, tr), val=mk("val"), test=mk("test"),
        classes=classes,
        info={"name": "image_folder", "root": str(root), "train": len(train_idx),
              "val": len(splits["val"][1]), "test": len(splits["test"][1]), "preprocessing": pre,
              "eval_preprocessing": eval_record(pre, "image")},
    )
