"""Facial-landmark data: the procedural face set and the real formats (300-W, WFLW, COFW).

Samples are ``{"image": float tensor (C, S, S), "keypoints": float tensor (K, 2)}`` with the
keypoints in pixels of that image (pixel-edge convention, :mod:`.transforms`). Every data set
records its scheme in ``DataSplits.info["landmarks"]`` (name, number of points, the pair whose
distance normalises the error), which the ``landmarks`` task reads.

Registered data sets (``data.name``):

* ``procedural_faces``: drawn faces with 68 known landmarks (:mod:`.faces`), offline, any size
  (``data.image_size``, default 64); ``data.options``: ``train`` / ``val`` / ``test`` (counts,
  default 2000 / 300 / 500), ``occlusion`` (0.25), augmentation ``rotation`` (30),
  ``scale`` ([0.75, 1.25]), ``flip_p`` (0.5);
* ``300w``: ``data.root`` holds the 300-W folders (:data:`.formats.W300_SPLITS`); the 3,148
  training faces and the 689-face full test set (``data.options.test_split``: ``test``,
  ``common`` or ``challenging``);
* ``wflw``: ``data.root`` holds ``WFLW_annotations/list_98pt_rect_attr_train_test/`` and
  ``WFLW_images/`` (7,500 training and 2,500 test faces);
* ``cofw``: ``data.root`` holds ``COFW_train.mat`` and ``COFW_test.mat`` (1,345 / 507 faces).

Real faces are cropped by their box (:func:`.transforms.crop_by_box`: the square of side 1.25 x
the box's longer side about its centre) and resized to ``data.image_size`` (default 256, the
paper's). The validation split is ``data.val_fraction`` of the training faces (the paper tunes
nothing; never tune on the test split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zootune.data.base import DataError, DataSplits, TransformedDataset
from zootune.data.landmarks.faces import ProceduralFaces, render_face
from zootune.data.landmarks.formats import (
    FaceRecord,
    LandmarkFormatError,
    read_300w,
    read_cofw,
    read_pts,
    read_wflw,
)
from zootune.data.landmarks.schemes import SCHEMES, LandmarkScheme, flip_permutation, get_scheme
from zootune.data.landmarks.transforms import (
    ImageNormalize,
    JointCompose,
    LandmarkAugment,
    crop_by_box,
    flip_keypoints,
    landmark_transforms,
)

__all__ = ["FaceRecord", "FaceRecords", "ImageNormalize", "JointCompose", "LandmarkAugment",
           "LandmarkFormatError", "LandmarkScheme", "ProceduralFaces", "SCHEMES", "build_300w",
           "build_cofw", "build_procedural_faces", "build_wflw", "crop_by_box", "flip_keypoints",
           "flip_permutation", "get_scheme", "landmark_transforms", "read_300w", "read_cofw",
           "read_pts", "read_wflw", "render_face"]

#: what the crop of real faces is, in words (task descriptions and model cards)
CROP_NOTE = "face square about the box centre, side 1.25 x the box's longer side, resized"


def _image_tensor(image: Any) -> torch.Tensor:
    """A path or an array as a float RGB tensor (3, H, W) in [0, 1]."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        try:
            with Image.open(image) as im:
                arr = np.array(im.convert("RGB"))
        except OSError as exc:
            raise DataError(f"cannot read image {str(image)!r} ({exc})") from None
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


class FaceRecords(Dataset):
    """Annotated faces (:class:`FaceRecord`) as samples: image read, cropped by its box and
    resized to ``size`` (:func:`crop_by_box`), keypoints mapped with it."""

    def __init__(self, records: Sequence[FaceRecord], size: int, enlarge: float = 1.25) -> None:
        self.records, self.size, self.enlarge = list(records), int(size), float(enlarge)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[int(i)]
        img, kp = crop_by_box(_image_tensor(r.image), torch.from_numpy(r.keypoints), r.box, self.size,
                              self.enlarge)
        return {"image": img, "keypoints": kp}


def _augment_options(cfg_data: Any) -> dict[str, Any]:
    o = dict(cfg_data.options or {})
    out = {"rotation": float(o.pop("rotation", 30.0)), "scale": tuple(o.pop("scale", (0.75, 1.25))),
           "flip_p": float(o.pop("flip_p", 0.5))}
    return out


def _check_options(cfg_data: Any, allowed: Sequence[str]) -> None:
    extra = sorted(set(cfg_data.options or {}) - set(allowed) - {"rotation", "scale", "flip_p"})
    if extra:
        raise DataError(f"unknown data.options {extra} for data set {cfg_data.name!r}; valid: "
                        + ", ".join(sorted(set(allowed) | {"rotation", "scale", "flip_p"})))


def _splits(name: str, scheme: LandmarkScheme, train: Dataset, val: Dataset | None, test: Dataset | None,
            cfg_data: Any, pre: dict[str, Any], crop: str | None) -> DataSplits:
    from zootune.data.transforms import eval_record

    aug = _augment_options(cfg_data)
    tr = landmark_transforms(pre, scheme.flip_perm, train=True, augment=cfg_data.augment, **aug)
    ev = landmark_transforms(pre, scheme.flip_perm, train=False)
    wrap = lambda ds, t: TransformedDataset(ds, None, t) if ds is not None and len(ds) else None  # noqa: E731
    info = {"name": name, "train": len(train), "val": len(val) if val is not None else 0,
            "test": len(test) if test is not None else 0, "preprocessing": pre,
            "eval_preprocessing": eval_record(pre, "tensor"),
            "landmarks": {**scheme.describe(), "crop": crop, "augment": aug if cfg_data.augment else None}}
    return DataSplits(train=TransformedDataset(train, None, tr), val=wrap(val, ev), test=wrap(test, ev),
                      classes=[], info=info)


def _pre(cfg_data: Any, preprocessing: Mapping[str, Any] | None, default_size: int) -> dict[str, Any]:
    from zootune.data.transforms import resolve_preprocessing

    pre = resolve_preprocessing(cfg_data, preprocessing, default_size=default_size, default_channels=3)
    if not cfg_data.image_size and (pre["size"] or 0) < 32:
        pre["size"] = default_size  # a zoo of tiny-input models (e.g. the 16x16 demo zoo) is
        # fully convolutional: faces need more pixels than its pretraining glyphs
    return pre


def build_procedural_faces(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """The ``procedural_faces`` data set (module docstring); the seed is ``data.seed``."""
    _check_options(cfg_data, ["train", "val", "test", "occlusion"])
    o = dict(cfg_data.options or {})
    pre = _pre(cfg_data, preprocessing, 64)
    size, occ, seed = pre["size"], float(o.get("occlusion", 0.25)), cfg_data.seed
    n = {k: int(o.get(k, d)) for k, d in (("train", 2000), ("val", 300), ("test", 500))}
    if n["train"] < 1:
        raise DataError("data.options.train must be at least 1")
    sets = {k: ProceduralFaces(v, seed, size, k, occ) if v > 0 else None for k, v in n.items()}
    return _splits("procedural_faces", get_scheme("300w"), sets["train"], sets["val"], sets["test"],
                   cfg_data, pre, None)


def _val_split(records: list[FaceRecord], fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(records) < 2:
        return records, []
    perm = np.random.default_rng([int(seed), 4242]).permutation(len(records))
    k = max(1, int(round(fraction * len(records))))
    val = set(perm[:k].tolist())
    return ([r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val])


def _root(cfg_data: Any) -> Path:
    if not cfg_data.root:
        raise DataError(f"data set {cfg_data.name!r} needs data.root (the folder of its files)")
    root = Path(cfg_data.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {str(root)!r} does not exist")
    return root


def _build_real(name: str, scheme: str, train: list[FaceRecord], test: list[FaceRecord], cfg_data: Any,
                preprocessing: Mapping[str, Any] | None) -> DataSplits:
    pre = _pre(cfg_data, preprocessing, 256)
    train, val = _val_split(train, cfg_data.val_fraction, cfg_data.seed)
    mk = lambda rs: FaceRecords(rs, pre["size"]) if rs else None  # noqa: E731
    return _splits(name, get_scheme(scheme), FaceRecords(train, pre["size"]), mk(val), mk(test),
                   cfg_data, pre, CROP_NOTE)


def build_300w(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """300-W: train on the 3,148 faces, test on ``data.options.test_split`` (default ``test``:
    the 689-face full set)."""
    _check_options(cfg_data, ["test_split"])
    root = _root(cfg_data)
    test_split = str((cfg_data.options or {}).get("test_split", "test"))
    return _build_real("300w", "300w", read_300w(root, "train"), read_300w(root, test_split),
                       cfg_data, preprocessing)


def build_wflw(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """WFLW: the official train / test annotation lists."""
    _check_options(cfg_data, [])
    root = _root(cfg_data)
    lists = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    files = {s: lists / f"list_98pt_rect_attr_{s}.txt" for s in ("train", "test")}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"WFLW annotation list {str(f)!r} does not exist")
    images = root / "WFLW_images"
    return _build_real("wflw", "wflw", read_wflw(files["train"], images), read_wflw(files["test"], images),
                       cfg_data, preprocessing)


def build_cofw(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """COFW: ``COFW_train.mat`` and ``COFW_test.mat``."""
    _check_options(cfg_data, [])
    root = _root(cfg_data)
    files = {s: root / f"COFW_{s}.mat" for s in ("train", "test")}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"COFW file {str(f)!r} does not exist")
    return _build_real("cofw", "cofw", read_cofw(files["train"], "train"), read_cofw(files["test"], "test"),
                       cfg_data, preprocessing)
