"""Standard train / eval transforms built from ``torchvision.transforms.v2``.

Normalisation statistics and input size come, in order of precedence, from the config
(``data.mean``, ``data.std``, ``data.image_size``), from the zoo's preprocessing (what its
models were pretrained with), or from the data set's defaults.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def _v2():
    from torchvision.transforms import v2

    return v2


def resolve_preprocessing(cfg_data: Any, zoo_pre: Mapping[str, Any] | None,
                          default_size: int | None, default_channels: int) -> dict[str, Any]:
    """Merge config > zoo > data-set defaults into ``{size, channels, mean, std}``."""
    if zoo_pre is not None and hasattr(zoo_pre, "to_dict"):
        zoo_pre = zoo_pre.to_dict()
    zoo_pre = dict(zoo_pre or {})
    in_size = zoo_pre.get("input_size")  # (C, H, W) as zootune.zoo.Preprocessing has it
    size = (cfg_data.image_size or zoo_pre.get("image_size") or zoo_pre.get("size")
            or (in_size[-1] if in_size else None) or default_size)
    if isinstance(size, (list, tuple)):
        size = int(size[-1])
    channels = (cfg_data.channels or zoo_pre.get("channels") or (in_size[0] if in_size else None)
                or default_channels)
    mean = cfg_data.mean or zoo_pre.get("mean")
    std = cfg_data.std or zoo_pre.get("std")
    if mean is not None and len(mean) != channels:
        mean = [float(sum(mean) / len(mean))] * channels
    if std is not None and len(std) != channels:
        std = [float(sum(std) / len(std))] * channels
    return {"size": int(size) if size else None, "channels": int(channels), "mean": mean, "std": std}


def image_transforms(pre: Mapping[str, Any], train: bool, augment: bool = True):
    """Natural images (PIL): random-resized crop + flip for training, resize + center crop else."""
    v2 = _v2()
    size = pre["size"] or 224
    ops: list[Any] = [v2.ToImage()]
    if train and augment:
        ops += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops += [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if pre.get("mean") is not None and pre.get("std") is not None:
        ops.append(v2.Normalize(list(pre["mean"]), list(pre["std"])))
    return v2.Compose(ops)


def small_image_transforms(pre: Mapping[str, Any], train: bool, augment: bool = True,
                           degrees: float = 10.0, translate: Sequence[float] = (0.1, 0.1)):
    """Float tensors of glyphs/digits (C, H, W) in [0, 1]: resize, small affine jitter, channels.

    No flips: they change the class of characters.
    """
    v2 = _v2()
    ops: list[Any] = []
    if pre.get("size"):
        ops.append(v2.Resize((pre["size"], pre["size"]), antialias=True))
    if train and augment:
        ops.append(v2.RandomAffine(degrees=degrees, translate=tuple(translate), scale=(0.9, 1.1)))
    channels = pre.get("channels", 1)
    if channels != 1:
        ops.append(v2.Lambda(lambda x: x.expand(channels, *x.shape[-2:]).contiguous()))
    if pre.get("mean") is not None and pre.get("std") is not None:
        ops.append(v2.Normalize(list(pre["mean"]), list(pre["std"])))
    return v2.Compose(ops) if ops else None
