"""Preprocessing metadata of zoo members, the zoo's consensus, and the matching transform.

A pretrained model expects its inputs resized, cropped and normalised the way it was trained
(input size, mean, std, interpolation); a wrong resize silently ruins a comparison. Every model
returned by :func:`zootune.zoo.load` carries a :class:`Preprocessing` (attribute
``zootune_preprocessing``) read from timm's ``pretrained_cfg`` or from the torchvision weights'
``transforms()``. :func:`zoo_preprocessing` merges the members' values and warns when they
disagree; :func:`build_transform` turns the result into a torchvision transform, which the data
pipeline uses by default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ATTR = "zootune_preprocessing"


class PreprocessingWarning(UserWarning):
    """Members of one zoo expect different preprocessing."""


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input.

    ``input_size`` is ``(C, H, W)`` of the network input (``None``: not fixed by the source,
    e.g. a detector's trunk); ``resize_size`` the shorter side images are resized to before the
    centre crop at evaluation; ``mean``/``std`` per channel on the ``[0, 1]`` scale;
    ``interpolation`` a torchvision ``InterpolationMode`` name (``bilinear``, ``bicubic``...);
    ``source`` where the values come from (shown by ``zootune zoo inspect``).
    """

    input_size: tuple[int, int, int] | None = (3, 224, 224)
    resize_size: int | None = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "default (ImageNet)"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.input_size[1:]) if self.input_size else "any"
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        resize = f"resize {self.resize_size}, " if self.resize_size else ""
        return (
            f"input {size}, {resize}{self.interpolation}, mean ({mean}), std ({std})"
            f"  [{self.source}]"
        )


def from_timm_config(cfg: dict[str, Any], source: str) -> Preprocessing:
    """Preprocessing from a timm data config (``timm.data.resolve_data_config`` output)."""
    size = tuple(int(s) for s in cfg.get("input_size", (3, 224, 224)))
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    resize = int(math.floor(min(size[1:]) / crop_pct))
    return Preprocessing(
        input_size=size,  # type: ignore[arg-type]
        resize_size=resize,
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        source=source,
    )


def from_timm_model(model: nn.Module, source: str) -> Preprocessing:
    import timm.data

    return from_timm_config(timm.data.resolve_data_config({}, model=model), source)


def from_torchvision_weights(weights: Any, source: str) -> Preprocessing:
    """Preprocessing from a torchvision weights enum member's ``transforms()``.

    Classification weights give crop and resize sizes; segmentation weights a resize size only;
    detection weights normalise inside the model (``GeneralizedRCNNTransform``, ImageNet mean
    and std, bilinear resizing to a shorter side of 800), so their input size is ``None``.
    """
    tf = weights.transforms()
    mean = tuple(float(v) for v in getattr(tf, "mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in getattr(tf, "std", IMAGENET_STD))
    interp = getattr(tf, "interpolation", None)
    interp_name = getattr(interp, "value", None) or "bilinear"
    crop = getattr(tf, "crop_size", None)
    resize = getattr(tf, "resize_size", None)
    crop_v = int(crop[0]) if crop else None
    resize_v = int(resize[0]) if resize else None
    if crop_v is None and not hasattr(tf, "mean"):
        source += " (detector: normalises inside the model with ImageNet mean/std)"
    return Preprocessing(
        input_size=(3, crop_v, crop_v) if crop_v else None,
        resize_size=resize_v,
        mean=mean,
        std=std,
        interpolation=str(interp_name),
        source=source,
    )


def preprocessing_of(model: nn.Module) -> Preprocessing | None:
    """The :class:`Preprocessing` attached to a model by :func:`zootune.zoo.load`, if any."""
    return getattr(model, ATTR, None)


def _close(a: Sequence[float], b: Sequence[float], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def disagreements(items: Sequence[Preprocessing], names: Sequence[str]) -> list[str]:
    """Human-readable differences between members' preprocessing (empty when they agree).

    A member whose input size is not fixed (``None``) agrees with any size.
    """
    out: list[str] = []
    if len(items) < 2:
        return out
    ref_i = next((i for i, p in enumerate(items) if p.input_size), 0)
    ref = items[ref_i]
    for name, p in zip(names, items):
        if p is ref:
            continue
        if p.input_size and ref.input_size and p.input_size != ref.input_size:
            out.append(f"input size of {name!r} {p.input_size} vs {names[ref_i]!r} {ref.input_size}")
        if not _close(p.mean, ref.mean):
            out.append(f"mean of {name!r} {p.mean} vs {names[ref_i]!r} {ref.mean}")
        if not _close(p.std, ref.std):
            out.append(f"std of {name!r} {p.std} vs {names[ref_i]!r} {ref.std}")
        if p.input_size and ref.input_size and p.interpolation != ref.interpolation:
            out.append(
                f"interpolation of {name!r} {p.interpolation} vs {names[ref_i]!r} "
                f"{ref.interpolation}"
            )
    return out


def zoo_preprocessing(
    items: Sequence[Preprocessing | None], names: Sequence[str], *, warn: bool = True
) -> Preprocessing:
    """One preprocessing for a whole zoo: the first member's that fixes an input size.

    Members without metadata are skipped; when members disagree a
    :class:`PreprocessingWarning` lists every difference (the zoo still gets one pipeline:
    Zoo-Tuning feeds one input to all members).
    """
    known = [(n, p) for n, p in zip(names, items) if p is not None]
    if not known:
        return Preprocessing()
    ps = [p for _, p in known]
    diffs = disagreements(ps, [n for n, _ in known])
    if diffs and warn:
        warnings.warn(
            "zoo members expect different preprocessing: " + "; ".join(diffs)
            + ". Using the first member's; override it in the data config if needed.",
            PreprocessingWarning,
            stacklevel=2,
        )
    chosen = next((p for p in ps if p.input_size), ps[0])
    if chosen.input_size is None:
        chosen = replace(chosen, input_size=(3, 224, 224), resize_size=chosen.resize_size or 256)
    return chosen


def build_transform(pre: Preprocessing, *, train: bool = False) -> Any:
    """A torchvision (``transforms.v2``) pipeline implementing ``pre`` for PIL images or tensors.

    Evaluation: resize the shorter side to ``resize_size``, centre-crop ``input_size``,
    convert to float in ``[0, 1]``, normalise. Training: random-resized crop to ``input_size``
    and horizontal flip instead of resize + centre crop (the paper's §4.2 augmentation).
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    size = pre.input_size[1:] if pre.input_size else (224, 224)
    interp = InterpolationMode(pre.interpolation)
    tail = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ]
    if train:
        head = [v2.RandomResizedCrop(list(size), interpolation=interp), v2.RandomHorizontalFlip()]
    else:
        resize = pre.resize_size or int(math.floor(min(size) / 0.875))
        head = [v2.Resize(resize, interpolation=interp), v2.CenterCrop(list(size))]
    return v2.Compose(head + tail)
