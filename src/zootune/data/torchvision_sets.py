"""The paper's classification targets that torchvision reads: CIFAR-100, FGVC Aircraft, Stanford
Cars, EuroSAT (Zoo-Tuning §4.2, Table 1). Nothing here downloads: ``data.root`` is the folder
where the user put the files, in exactly the layout the torchvision class of the same name
expects (so ``torchvision.datasets.X(root, download=True)`` run once by the user fills it):

* ``cifar100``: ``ROOT/cifar-100-python/{train,test,meta}`` (pickles); official train 50,000 /
  test 10,000.
* ``aircraft``: ``ROOT/fgvc-aircraft-2013b/data/{images/*.jpg, variants.txt,
  images_variant_{trainval,train,val,test}.txt}``; official trainval 6,667 / test 3,333
  (``options.annotation_level``: variant (100 classes, default) | family | manufacturer).
* ``stanford_cars``: ``ROOT/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
  cars_test_annos_withlabels.mat, cars_train/*.jpg, cars_test/*.jpg}``; official train 8,144 /
  test 8,041 (needs scipy).
* ``eurosat``: ``ROOT/eurosat/2750/<class>/*.jpg`` (RGB, 27,000 images); no official split.

Split rule (the same for all four, and the one the paper's setting needs: no tuning on test):
the official test split is the test set; the validation set is carved out of the official
training split, stratified by class, with ``data.val_fraction`` and ``data.seed``
(:func:`~zootune.data.base.stratified_split`); ``data.labels_per_class`` then keeps that many
training images per class (the few-label regime). Aircraft's official ``val`` is part of
``trainval``, so by default it is carved like the others; ``options.official_val: true`` uses
the official train / val / test files instead. EuroSAT has no official split: test is carved
out of the pool with ``data.test_fraction`` first, then val out of the rest.

Why our own reader for CIFAR: torchvision's ``CIFAR100`` refuses files whose MD5 differs from
the published archive, which makes any offline test of the adapter impossible; the pickle
format is three dictionaries and is read the same way here (``options.verify_md5: true`` checks
the published checksums as torchvision does). The other three go through torchvision's own
classes (``download=False``), so a layout they accept is a layout we accept.

Images come out as PIL RGB images through the standard transforms of
:func:`~zootune.data.transforms.image_transforms` (random-resized crop + flip for training,
resize + centre crop for evaluation; 224 unless ``data.image_size`` or the zoo says otherwise).
Every problem is one :class:`DataError` line naming the path and what was expected.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zootune.data.base import (
    DataError,
    DataSplits,
    TransformedDataset,
    stratified_split,
    take_per_class,
)
from zootune.data.transforms import eval_record, image_transforms, resolve_preprocessing

__all__ = ["PAPER_SETS", "build_aircraft", "build_cifar100", "build_eurosat", "build_stanford_cars"]

#: the published MD5 sums of CIFAR-100's files (torchvision.datasets.CIFAR100)
CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                "meta": "7973b15100ade9c7d40fb424638fde48"}


class ArrayImages:
    """``(PIL image, label)`` from a uint8 array (N, H, W, 3) and labels (CIFAR); ``mode``:
    the PIL mode the images are converted to (``"RGB"``, or ``"L"`` for a one-channel zoo)."""

    def __init__(self, images: np.ndarray, targets: Any, mode: str = "RGB") -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i]).convert(self.mode), int(self.targets[i])


class TorchvisionImages:
    """A torchvision classification data set with ``targets`` (for stratification), yielding
    ``(PIL image, label)`` in ``mode``; images are read lazily by the wrapped data set."""

    def __init__(self, ds: Any, targets: Any, mode: str = "RGB") -> None:
        self.ds = ds
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        try:
            img, y = self.ds[i]
        except OSError as exc:
            raise DataError(f"cannot read an image of {type(self.ds).__name__} (item {i}): "
                            f"{exc.__class__.__name__}: {exc}") from None
        return img.convert(self.mode), int(y)


# ---------------------------------------------------------------------------------------------
# readers: (train pool, test set, class names), or (train, val, test, classes) with official val
# ---------------------------------------------------------------------------------------------


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist ({hint})")
    return path


def _root(cfg_data: Any, name: str) -> Path:
    if not cfg_data.root:
        raise DataError(f"data.root must name the folder that holds the {name} files "
                        f"for data.name={name} (see docs/paper_scale.md)")
    root = Path(cfg_data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} (data.name={name}) is not a folder")
    return root


def _unpickle(path: Path, md5: str | None) -> dict:
    if md5 is not None and hashlib.md5(path.read_bytes()).hexdigest() != md5:
        raise DataError(f"{str(path)!r} is not the published CIFAR-100 file (MD5 differs)")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.__class__.__name__}") from None


def read_cifar100(cfg_data: Any):
    root = _root(cfg_data, "cifar100")
    folder = _need(root / "cifar-100-python", "CIFAR-100 folder",
                   "expected data.root/cifar-100-python/{train,test,meta} as torchvision unpacks "
                   "cifar-100-python.tar.gz")
    verify = bool(dict(cfg_data.options).get("verify_md5", False))
    parts = {}
    for split in ("train", "test", "meta"):
        f = _need(folder / split, "CIFAR-100 file", "the archive unpacks train, test and meta")
        parts[split] = _unpickle(f, CIFAR100_MD5[split] if verify else None)
    classes = list(parts["meta"]["fine_label_names"])

    def arrays(entry: dict, split: str) -> ArrayImages:
        try:
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.asarray(entry["fine_labels"], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"CIFAR-100 file {str(folder / split)!r} is malformed "
                            f"({exc.__class__.__name__}: {exc})") from None
        if len(labels) != len(data) or (len(labels) and labels.max() >= len(classes)):
            raise DataError(f"CIFAR-100 file {str(folder / split)!r}: labels do not match the images "
                            f"or the {len(classes)} classes of meta")
        return ArrayImages(np.ascontiguousarray(data), labels)

    return arrays(parts["train"], "train"), arrays(parts["test"], "test"), classes


def _tv(cls_name: str, hint: str, **kwargs):
    import torchvision.datasets as tvd

    try:
        return getattr(tvd, cls_name)(download=False, **kwargs)
    except RuntimeError as exc:  # torchvision's "Dataset not found ..."
        raise DataError(f"{cls_name} not found under {str(kwargs['root'])!r}: {hint} "
                        f"(torchvision: {exc})") from None
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{cls_name} under {str(kwargs['root'])!r} is malformed: "
                        f"{exc.__class__.__name__}: {exc}") from None


def read_aircraft(cfg_data: Any):
    root = _root(cfg_data, "aircraft")
    opt = dict(cfg_data.options)
    level = str(opt.get("annotation_level", "variant"))
    if level not in ("variant", "family", "manufacturer"):
        raise DataError(f"data.options.annotation_level must be variant, family or manufacturer, "
                        f"got {level!r}")
    hint = "expected data.root/fgvc-aircraft-2013b/data/ as fgvc-aircraft-2013b.tar.gz unpacks"

    def load(split: str) -> TorchvisionImages:
        ds = _tv("FGVCAircraft", hint, root=str(root), split=split, annotation_level=level)
        return TorchvisionImages(ds, ds._labels)

    test = load("test")
    classes = list(test.ds.classes)
    if opt.get("official_val", False):
        return load("train"), load("val"), test, classes
    return load("trainval"), test, classes


def read_stanford_cars(cfg_data: Any):
    root = _root(cfg_data, "stanford_cars")
    hint = ("expected data.root/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
            "cars_test_annos_withlabels.mat, cars_train/, cars_test/}")

    def load(split: str) -> TorchvisionImages:
        ds = _tv("StanfordCars", hint, root=str(root), split=split)
        return TorchvisionImages(ds, [t for _, t in ds._samples])

    test = load("test")
    return load("train"), test, [str(c) for c in test.ds.classes]


def read_eurosat(cfg_data: Any):
    root = _root(cfg_data, "eurosat")
    ds = _tv("EuroSAT", "expected data.root/eurosat/2750/<class>/*.jpg as EuroSAT.zip unpacks",
             root=str(root))
    return TorchvisionImages(ds, ds.targets), None, list(ds.classes)


# ---------------------------------------------------------------------------------------------
# the shared split logic
# ---------------------------------------------------------------------------------------------


def paper_splits(name: str, reader: Callable[[Any], tuple], cfg_data: Any,
                 preprocessing: Mapping[str, Any] | None) -> DataSplits:
    """Official test; val carved from the official train split (stratified, ``data.seed``);
    ``labels_per_class`` training images per class. See the module docstring."""
    parts = reader(cfg_data)
    if len(parts) == 4:  # official train / val / test
        train_pool, val_set, test_set, classes = parts
        train_idx = np.arange(len(train_pool))
        val = (val_set, np.arange(len(val_set)))
        test = (test_set, np.arange(len(test_set)))
    else:
        train_pool, test_set, classes = parts
        if test_set is None:  # no official test split: carve test, then val, from the pool
            if cfg_data.val_fraction + cfg_data.test_fraction >= 1.0:
                raise DataError("data.val_fraction + data.test_fraction must be < 1")
            train_idx, val_idx, test_idx = stratified_split(
                train_pool.targets, [cfg_data.val_fraction, cfg_data.test_fraction], cfg_data.seed)
            test = (train_pool, test_idx)
        else:
            train_idx, val_idx = stratified_split(train_pool.targets, [cfg_data.val_fraction], cfg_data.seed)
            test = (test_set, np.arange(len(test_set)))
        val = (train_pool, val_idx)
    if cfg_data.labels_per_class is not None:
        train_idx = take_per_class(train_idx, train_pool.targets, cfg_data.labels_per_class, cfg_data.seed)
    if len(train_idx) == 0:
        raise DataError(f"data.name={name} under {cfg_data.root!r}: the training split is empty")
    pre = resolve_preprocessing(cfg_data, preprocessing, default_size=224, default_channels=3)
    if pre["channels"] not in (1, 3):
        raise DataError(f"data.name={name}: data.channels must be 3 (RGB) or 1 (grey), got {pre['channels']}")
    mode = "L" if pre["channels"] == 1 else "RGB"
    for ds in {id(d): d for d in (train_pool, val[0], test[0])}.values():
        ds.mode = mode
    tr = image_transforms(pre, train=True, augment=cfg_data.augment)
    ev = image_transforms(pre, train=False)
    mk = lambda ds, ix: TransformedDataset(ds, ix, ev) if len(ix) else None
    return DataSplits(
        train=TransformedDataset(train_pool, train_idx, tr), val=mk(*val), test=mk(*test),
        classes=[str(c) for c in classes],
        info={"name": name, "root": str(cfg_data.root), "train": len(train_idx), "val": len(val[1]),
              "test": len(test[1]), "preprocessing": pre, "eval_preprocessing": eval_record(pre, "image")},
    )


def build_cifar100(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """CIFAR-100 (100 classes, 500 train / 100 test images per class, 32x32 upsampled)."""
    return paper_splits("cifar100", read_cifar100, cfg_data, preprocessing)


def build_aircraft(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """FGVC Aircraft (100 variants by default, ~100 images each)."""
    return paper_splits("aircraft", read_aircraft, cfg_data, preprocessing)


def build_stanford_cars(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """Stanford Cars (196 classes; 8,144 train / 8,041 test). Needs scipy (``.mat`` files)."""
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise DataError("data.name=stanford_cars needs scipy to read its .mat files: pip install scipy") from None
    return paper_splits("stanford_cars", read_stanford_cars, cfg_data, preprocessing)


def build_eurosat(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """EuroSAT RGB (10 classes, 27,000 64x64 images; no official split)."""
    return paper_splits("eurosat", read_eurosat, cfg_data, preprocessing)


#: ``data.name`` -> builder (registered in :mod:`zootune.data`)
PAPER_SETS = {"cifar100": build_cifar100, "aircraft": build_aircraft,
              "stanford_cars": build_stanford_cars, "eurosat": build_eurosat}
