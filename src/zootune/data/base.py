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
    """``base[indices[i]]`` with ``transform`` applied to the input.

    Keys may be plain indices or ``(index, seed)`` pairs; with a seed, the transform's random
    draws come from ``torch.manual_seed(seed)`` inside a forked RNG, so they are reproducible and
    leave the global RNG untouched.
    """

    def __init__(self, base: Any, indices: Sequence[int] | None = None,
                 transform: Callable | None = None) -> None:
        self.base = base
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return int(len(self.indices))

    @property
    def targets(self) -> np.ndarray:
        """Labels of this subset (used for stratification and labels-per-class sampling)."""
        return np.asarray(self.base.targets)[self.indices]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Any]:
        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = key, None
        x, y = self.base[int(self.indices[int(index)])]
        if self.transform is not None:
            if seed is None:
                x = self.transform(x)
            else:  # seed the CPU generator only (torch.manual_seed/fork_rng cost ~100x more)
                saved = torch.get_rng_state()
                try:
                    torch.default_generator.manual_seed(int(seed))
                    x = self.transform(x)
                finally:
                    torch.set_rng_state(saved)
        return x, y


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
