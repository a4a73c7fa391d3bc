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


def eval_record(pre: Mapping[str, Any], input_kind: str) -> dict[str, Any]:
    """The evaluation preprocessing as plain data: what a deployed model must be fed.

    ``input_kind``: ``"image"`` (PIL images, converted to ``"RGB"`` or ``"L"`` by channels) or
    ``"tensor"`` (float tensors ``(C, H, W)`` in [0, 1]). Keys: ``input``, ``resize`` (an int:
    the shorter side; a pair: both sides; None), ``crop`` (centre crop size or None),
    ``interpolation``, ``channels``, ``mean``, ``std``. :func:`eval_transform` builds the
    transform from it, so the record is by construction what evaluation runs; it goes into the
    exported model's metadata and :func:`eval_transform_code` writes it as code for the card.
    """
    size = pre.get("size")
    if input_kind == "image":
        size = size or 224
        resize: Any = int(round(size * 256 / 224))
        crop = int(size)
    elif input_kind == "tensor":
        resize, crop = ([int(size), int(size)] if size else None), None
    else:
        raise ValueError(f"input_kind must be 'image' or 'tensor', got {input_kind!r}")
    return {"input": input_kind, "resize": resize, "crop": crop, "interpolation": "bilinear",
            "channels": int(pre.get("channels") or (3 if input_kind == "image" else 1)),
            "mean": list(pre["mean"]) if pre.get("mean") is not None else None,
            "std": list(pre["std"]) if pre.get("std") is not None else None}


def _expand_channels(channels: int):
    return lambda x: x.expand(channels, *x.shape[-2:]).contiguous()


def eval_transform(rec: Mapping[str, Any]):
    """The ``torchvision.transforms.v2`` pipeline an :func:`eval_record` describes."""
    v2 = _v2()
    interp = v2.InterpolationMode(rec.get("interpolation", "bilinear"))
    image = rec["input"] == "image"
    ops: list[Any] = [v2.ToImage()] if image else []
    if rec.get("resize"):
        ops.append(v2.Resize(rec["resize"], interpolation=interp, antialias=True))
    if rec.get("crop"):
        ops.append(v2.CenterCrop(rec["crop"]))
    if image:
        ops.append(v2.ToDtype(torch.float32, scale=True))
    elif rec.get("channels", 1) != 1:
        ops.append(v2.Lambda(_expand_channels(int(rec["channels"]))))
    if rec.get("mean") is not None and rec.get("std") is not None:
        ops.append(v2.Normalize(list(rec["mean"]), list(rec["std"])))
    return v2.Compose(ops) if ops else None


def eval_transform_code(rec: Mapping[str, Any]) -> str:
    """Python source (torch + torchvision only) that defines ``preprocess`` as
    :func:`eval_transform` does, for model cards."""
    image = rec["input"] == "image"
    lines = ["import torch", "from torchvision.transforms import v2", "", "preprocess = v2.Compose(["]
    if image:
        mode = "L" if rec.get("channels") == 1 else "RGB"
        lines[3:3] = [f"# input: a PIL image converted with .convert({mode!r})"]
        lines.append("    v2.ToImage(),")
    else:
        lines[3:3] = ["# input: a float tensor (C, H, W) with values in [0, 1]"]
    if rec.get("resize"):
        r = rec["resize"]
        r = list(r) if isinstance(r, (list, tuple)) else int(r)
        lines.append(f"    v2.Resize({r!r}, interpolation=v2.InterpolationMode."
                     f"{rec.get('interpolation', 'bilinear').upper()}, antialias=True),")
    if rec.get("crop"):
        lines.append(f"    v2.CenterCrop({int(rec['crop'])}),")
    if image:
        lines.append("    v2.ToDtype(torch.float32, scale=True),")
    elif rec.get("channels", 1) != 1:
        c = int(rec["channels"])
        lines.append(f"    v2.Lambda(lambda x: x.expand({c}, *x.shape[-2:]).contiguous()),")
    if rec.get("mean") is not None and rec.get("std") is not None:
        lines.append(f"    v2.Normalize(mean={[float(v) for v in rec['mean']]}, "
                     f"std={[float(v) for v in rec['std']]}),")
    lines.append("])")
    return "\n".join(lines) + "\n"


def image_transforms(pre: Mapping[str, Any], train: bool, augment: bool = True):
    """Natural images (PIL): random-resized crop + flip for training, resize + center crop else."""
    v2 = _v2()
    if not (train and augment):
        return eval_transform(eval_record(pre, "image"))
    size = pre["size"] or 224
    ops: list[Any] = [v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                      v2.ToDtype(torch.float32, scale=True)]
    if pre.get("mean") is not None and pre.get("std") is not None:
        ops.append(v2.Normalize(list(pre["mean"]), list(pre["std"])))
    return v2.Compose(ops)


def small_image_transforms(pre: Mapping[str, Any], train: bool, augment: bool = True,
                           degrees: float = 10.0, translate: Sequence[float] = (0.1, 0.1)):
    """Float tensors of glyphs/digits (C, H, W) in [0, 1]: resize, small affine jitter, channels.

    No flips: they change the class of characters.
    """
    v2 = _v2()
    if not (train and augment):
        return eval_transform(eval_record(pre, "tensor"))
    ops: list[Any] = []
    if pre.get("size"):
        ops.append(v2.Resize((pre["size"], pre["size"]), antialias=True))
    ops.append(v2.RandomAffine(degrees=degrees, translate=tuple(translate), scale=(0.9, 1.1)))
    channels = pre.get("channels", 1)
    if channels != 1:
        ops.append(v2.Lambda(_expand_channels(channels)))
    if pre.get("mean") is not None and pre.get("std") is not None:
        ops.append(v2.Normalize(list(pre["mean"]), list(pre["std"])))
    return v2.Compose(ops)
