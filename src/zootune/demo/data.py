"""Data of the demo: the zoo's source domains and the target task.

Source domains (one per zoo member; see :data:`ZOO_DOMAINS`): glyphs rendered by
:mod:`zootune.data.glyphs` at the demo resolution, with augmentation baked into a pre-rendered
set (deterministic given the seed).

Target task (:func:`target_splits`): real handwritten digits (scikit-learn's 8x8 digits, via the
trainer's :class:`zootune.data.digits.DigitsArrays`) mixed with a *held-apart* domain, ten
lower-case Greek letters that no source model saw (:data:`zootune.data.glyphs.GREEK_HELD_APART`),
rendered at the digits' 8x8 resolution. Both are upsampled to 16x16 by the same transform. So
different samples relate to different sources: digits to the ``numerals`` model (printed digits),
Greek letters to the ``greek`` model (the other Greek letters) — the case per-sample aggregation
is built for. The data set is fixed; ``seed`` only changes the split and which
``labels_per_class`` training images are kept.

Both builders are registered with :func:`zootune.data.register_dataset` (``glyphs`` and
``demo_target``) so configs can name them once this module is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zootune.data import DataError, DataSplits, TransformedDataset, register_dataset
from zootune.data.base import TensorImages, stratified_split, take_per_class
from zootune.data.glyphs import GREEK_HELD_APART, SCRIPTS, Augment, distinct_chars, render_glyphs
from zootune.demo.model import RESOLUTION

__all__ = ["ZOO_DOMAINS", "domain_chars", "TensorImages", "AugmentedImages", "glyph_splits", "target_splits",
           "TARGET_POOL_SEED", "GREEK_PER_CLASS"]

#: The zoo's members and their source domains, in zoo order. ``base`` is the broad pretraining
#: domain (every script, look-alike characters merged); the others are fine-tuned from it.
ZOO_DOMAINS: dict[str, str] = {
    "base": "latin+greek+cyrillic+digits+symbols",
    "latin": "latin",
    "greek": "greek",
    "cyrillic": "cyrillic",
    "numerals": "digits+symbols",
}

#: Seed of the rendered held-apart Greek pool (fixed: it is part of the data set, like the digits).
TARGET_POOL_SEED = 20210718
#: Images per held-apart Greek letter (about as many as scikit-learn has per digit).
GREEK_PER_CLASS = 180


def domain_chars(spec: str) -> str:
    """Characters of a domain spec: script names joined by ``+`` (look-alikes merged if > 1)."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    unknown = [p for p in parts if p not in SCRIPTS]
    if unknown or not parts:
        raise DataError(f"unknown glyph script(s) {unknown or spec!r}; valid: {', '.join(SCRIPTS)}")
    chars = "".join(SCRIPTS[p] for p in parts)
    return distinct_chars(chars) if len(parts) > 1 else chars


class AugmentedImages:
    """Training images with ``copies`` pre-drawn random-affine versions of each (batched, fast).

    Keys are plain indices (the original image) or the trainer's ``(index, sample_seed)`` pairs
    (copy ``sample_seed % copies``), so a sample's augmentation is a pure function of its key —
    what the trainer's resumable sampler needs — without a per-sample transform call.
    """

    def __init__(self, images: torch.Tensor, targets: Any, *, copies: int = 32, seed: int = 0,
                 rotate: float = 10.0, translate: float = 0.1,
                 scale: tuple[float, float] = (0.9, 1.1)) -> None:
        from zootune.data.glyphs import random_affine

        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        g = torch.Generator().manual_seed(int(seed))
        n = images.shape[0]
        rep = images.repeat_interleave(copies, dim=0)
        aug = random_affine(rep, g, rotate=rotate, scale=scale, translate=translate)
        self.copies = aug.view(n, copies, *images.shape[1:])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            i, seed = int(key[0]), int(key[1])
            return self.copies[i, seed % self.copies.shape[1]], int(self.targets[i])
        return self.images[int(key)], int(self.targets[int(key)])



def glyph_splits(spec: str, n_train: int, n_eval: int = 20, *, seed: int = 0,
                 resolution: int = RESOLUTION, augment: Augment | None = None) -> DataSplits:
    """A source domain: ``n_train`` augmented images per class for training, ``n_eval`` per
    class (other seeds) for validation and for test."""
    chars = domain_chars(spec)
    tr = render_glyphs(chars, n_train, resolution=resolution, seed=seed, augment=augment)
    va = render_glyphs(chars, n_eval, resolution=resolution, seed=seed + 7_000_001, augment=augment)
    te = render_glyphs(chars, n_eval, resolution=resolution, seed=seed + 7_000_002, augment=augment)
    mk = lambda g: TransformedDataset(TensorImages(g.x, g.y))  # noqa: E731
    return DataSplits(train=mk(tr), val=mk(va), test=mk(te), classes=list(chars),
                      info={"name": "glyphs", "domain": spec, "classes": len(chars),
                            "train": len(tr.y), "val": len(va.y), "test": len(te.y),
                            "seed": seed, "resolution": resolution})


def _greek_pool() -> TensorImages:
    """The held-apart Greek letters at 8x8 (rendered at 8 px, i.e. from 16 px bitmaps)."""
    g = render_glyphs(GREEK_HELD_APART, GREEK_PER_CLASS, resolution=8, seed=TARGET_POOL_SEED,
                      augment=Augment(lowres=0.0))
    return TensorImages(g.x, g.y.numpy())


def target_splits(labels_per_class: int | None = 10, seed: int = 0, *, greek: bool = True,
                  val_fraction: float = 0.2, test_fraction: float = 0.2,
                  resolution: int = RESOLUTION, augment: bool = True) -> DataSplits:
    """The demo's target: digits (classes ``0``-``9``) + held-apart Greek letters (10-19).

    Stratified split into train / val / test by ``seed``; ``labels_per_class`` training images
    are kept per class (``None``: all). Every image is upsampled (bilinear) from 8x8 to
    ``resolution`` once; training images get a small random affine jitter when ``augment``
    (the trainer's ranges: +-10 degrees, 10% shift, scale 0.9-1.1; see :class:`AugmentedImages`).
    """
    from zootune.data.digits import DigitsArrays

    digits = DigitsArrays()
    images, targets = digits.images, np.asarray(digits.targets)
    classes = [str(c) for c in range(10)]
    if greek:
        pool = _greek_pool()
        images = torch.cat([images, pool.images])
        targets = np.concatenate([targets, pool.targets + 10])
        classes += list(GREEK_HELD_APART)
    if val_fraction + test_fraction >= 1.0:
        raise DataError("val_fraction + test_fraction must be < 1")
    train_idx, val_idx, test_idx = stratified_split(targets, [val_fraction, test_fraction], seed)
    if labels_per_class is not None:
        train_idx = take_per_class(train_idx, targets, labels_per_class, seed)
    images = torch.nn.functional.interpolate(images, size=resolution, mode="bilinear",
                                             align_corners=False)
    ti = torch.as_tensor(train_idx)
    if augment:
        train = AugmentedImages(images[ti], targets[train_idx], seed=seed)
    else:
        train = TensorImages(images[ti], targets[train_idx])
    sub = lambda idx: TransformedDataset(TensorImages(images[torch.as_tensor(idx)], targets[idx]))  # noqa: E731
    return DataSplits(
        train=TransformedDataset(train) if not augment else train,
        val=sub(val_idx),
        test=sub(test_idx),
        classes=classes,
        info={"name": "demo_target", "greek": greek, "labels_per_class": labels_per_class,
              # the sub-domain of each class (read by zootune.compare.routing: do gates route?)
              "class_domains": ["digits"] * 10 + ["greek"] * (len(classes) - 10),
              "seed": seed, "train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
              "resolution": resolution,
              # what evaluation feeds the model: the (1, resolution, resolution) tensors as they are
              "eval_preprocessing": {"input": "tensor", "resize": None, "crop": None,
                                     "interpolation": "bilinear", "channels": 1, "mean": None,
                                     "std": None}},
    )


def _build_glyphs(cfg_data: Any, preprocessing: Any = None) -> DataSplits:  # noqa: ARG001
    opt = dict(cfg_data.options)
    return glyph_splits(str(opt.get("domain", "latin")), int(opt.get("n_train", 200)),
                        int(opt.get("n_eval", 20)), seed=cfg_data.seed,
                        resolution=cfg_data.image_size or RESOLUTION)


def _build_target(cfg_data: Any, preprocessing: Any = None) -> DataSplits:  # noqa: ARG001
    opt = dict(cfg_data.options)
    return target_splits(cfg_data.labels_per_class, cfg_data.seed, greek=bool(opt.get("greek", True)),
                         val_fraction=cfg_data.val_fraction, test_fraction=cfg_data.test_fraction,
                         resolution=cfg_data.image_size or RESOLUTION, augment=cfg_data.augment)


register_dataset("glyphs", _build_glyphs)
register_dataset("demo_target", _build_target)
