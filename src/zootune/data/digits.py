"""scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes): built in, no download.

Split deterministically and stratified into train / val / test (``val_fraction``,
``test_fraction``, ``seed``); ``labels_per_class`` keeps only that many training images per
class (the few-label regime where a zoo helps most). Images are float tensors (1, 8, 8) in
[0, 1]; ``image_size`` resizes them, ``channels: 3`` repeats the channel.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from zootune.data.base import DataError, DataSplits, TransformedDataset, stratified_split, take_per_class
from zootune.data.transforms import eval_record, resolve_preprocessing, small_image_transforms


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) in 0..16, labels)``, read once per process.

    The CSV that scikit-learn ships is read directly when it can be found (importing
    ``sklearn.datasets`` takes seconds); ``load_digits`` is the fallback.
    """
    spec = importlib.util.find_spec("sklearn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        f = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            raw = np.loadtxt(f, delimiter=",")
            return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int64)


class DigitsArrays:
    """The raw digits as a map-style data set of ``(tensor (1, 8, 8), label)``."""

    def __init__(self) -> None:
        images, targets = _digits_arrays()
        self.images = torch.as_tensor(images, dtype=torch.float32).div(16.0).unsqueeze(1)
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


def build_digits(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    base = DigitsArrays()
    if cfg_data.val_fraction + cfg_data.test_fraction >= 1.0:
        raise DataError("data.val_fraction + data.test_fraction must be < 1")
    train_idx, val_idx, test_idx = stratified_split(
        base.targets, [cfg_data.val_fraction, cfg_data.test_fraction], cfg_data.seed)
    if cfg_data.labels_per_class is not None:
        train_idx = take_per_class(train_idx, base.targets, cfg_data.labels_per_class, cfg_data.seed)
    pre = resolve_preprocessing(cfg_data, preprocessing, default_size=None, default_channels=1)
    tr = small_image_transforms(pre, train=True, augment=cfg_data.augment)
    ev = small_image_transforms(pre, train=False)
    return DataSplits(
        train=TransformedDataset(base, train_idx, tr),
        val=TransformedDataset(base, val_idx, ev) if len(val_idx) else None,
        test=TransformedDataset(base, test_idx, ev) if len(test_idx) else None,
        classes=[str(c) for c in range(10)],
        info={"name": "digits", "train": len(train_idx), "val": len(val_idx),
              "test": len(test_idx), "preprocessing": pre,
              "eval_preprocessing": eval_record(pre, "tensor")},
    )
