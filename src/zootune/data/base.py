"""Shared pieces of the target data sets: splits, seeded transforms, errors.

Every data set is returned as :class:`DataSplits` (train / val / test ``Dataset``s plus class
names). Random augmentation is made a pure function of ``(seed, epoch, index)``: the trainer's
sampler hands the dataset ``(index, sample_seed)`` keys and :class:`TransformedDataset` seeds the
transform's random draws with ``sample_seed``. So the data a step sees never depends on worker
processes, and a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zootune.errors import ZootuneError


class DataError(ZootuneError, ValueError):
    """A data set is missing, unreadable, empty, or cannot be split as asked."""


class TransformedDataset(Dataset):
    """``base[indices[i]]`` as a sample dict, with a joint ``transform`` applied.

    ``transform``: a joint transform ``(sample, generator) -> sample``
    (:mod:`zootune.data.sample`), or a plain callable of the input alone (wrapped in
    :class:`~zootune.data.sample.ImageOnly`). Keys may be plain indices or the trainer's
    ``(index, seed)`` pairs; with a seed, the transform draws from a ``torch.Generator`` seeded
    with it, so the augmentation of a sample is a pure function of its key and the global RNG is
    left untouched.
    """

    def __init__(self, base: Any, indices: Sequence[int] | None = None,
                 transform: Callable | None = None) -> None:
        from zootune.data.sample import ImageOnly, TorchvisionJoint

        self.base = base
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices, dtype=np.int64)
        if transform is not None and not isinstance(transform, (ImageOnly, TorchvisionJoint)) \
                and not getattr(transform, "joint", False):
            transform = ImageOnly(transform)
        self.transform = transform

    def __len__(self) -> int:
        return int(len(self.indices))

    @property
    def targets(self) -> np.ndarray:
        """Labels of this subset (used for stratification and labels-per-class sampling)."""
        return np.asarray(self.base.targets)[self.indices]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        from zootune.data.sample import as_sample

        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = key, None
        sample = as_sample(self.base[int(self.indices[int(index)])])
        if self.transform is not None:
            gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            sample = self.transform(sample, gen)
        return sample


class TensorImages:
    """Images (N, C, H, W) + integer labels as a map-style data set with ``targets``."""

    def __init__(self, images: torch.Tensor, targets: Any) -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


@dataclass
class DataSplits:
    """Train / validation / test sets of one target task."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into ``len(fractions) + 1`` parts, class by class, deterministically.

    ``fractions`` are the shares of the later parts (e.g. ``[val, test]``); the first part gets
    the rest. Every class is shuffled with its own generator seeded by ``(seed, class)``.
    """
    labels = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(seed), int(c)])
        idx = idx[rng.permutation(len(idx))]
        start = len(idx)
        bounds = []
        for f in reversed(fractions):
            n = int(round(f * len(idx)))
            bounds.append((start - n, start))
            start -= n
        parts[0].extend(idx[:start].tolist())
        for j, (a, b) in enumerate(reversed(bounds)):
            parts[j + 1].extend(idx[a:b].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def take_per_class(indices: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices of each class out of ``indices`` (deterministic; fewer if a class is short)."""
    labels = np.asarray(labels)
    keep: list[int] = []
    for c in np.unique(labels[indices]):
        idx = indices[labels[indices] == c]
        rng = np.random.default_rng([int(seed), int(c), 7919])
        keep.extend(idx[rng.permutation(len(idx))[:k]].tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))
