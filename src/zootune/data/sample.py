"""Samples are dicts of named fields; transforms change every field consistently.

A sample is ``{"image": ..., "label": ...}`` for classification, ``{"image", "keypoints"}`` for
landmarks, and so on: the task names the fields it reads. Data sets may return ``(input,
target)`` tuples (torchvision's convention); :func:`as_sample` turns them into
``{"image": input, "label": target}``, so any map-style data set plugs in.

A *joint transform* is a callable ``transform(sample, generator) -> sample`` that draws its
randomness from the explicit ``torch.Generator`` it is given (seeded per sample by the trainer's
sampler), so the augmentation of a sample is a pure function of its key and every field (an image
and its keypoints) moves together. :class:`ImageOnly` adapts a torchvision transform of the image
alone; :class:`TorchvisionJoint` hands the whole dict to a ``torchvision.transforms.v2``
transform, which moves ``tv_tensors`` (images, boxes, keypoints) together.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

IMAGE = "image"
LABEL = "label"


def as_sample(item: Any) -> dict[str, Any]:
    """A data set item as a sample dict (``(x, y)`` -> ``{"image": x, "label": y}``)."""
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return {IMAGE: item[0], LABEL: item[1]}
    raise TypeError(f"a data set item must be a dict of fields or an (input, target) pair, "
                    f"got {type(item).__name__}")


def collate_samples(items: Sequence[Any]) -> dict[str, Any]:
    """``DataLoader`` collate function: samples (or pairs) -> one batch dict of stacked fields."""
    from torch.utils.data import default_collate

    return default_collate([as_sample(it) for it in items])


class JointTransform(Protocol):
    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        ...


class _GlobalRNGFromGenerator:
    """Run torchvision code (which draws from the global CPU generator) on ``generator``'s
    stream: the global generator takes its state for the call and gets its own back after."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self._saved: torch.Tensor | None = None

    def __enter__(self) -> None:
        if self.generator is not None:
            self._saved = torch.get_rng_state()
            torch.default_generator.set_state(self.generator.get_state())

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            self.generator.set_state(torch.default_generator.get_state())
            torch.set_rng_state(self._saved)


class ImageOnly:
    """A transform of the input field alone (e.g. a ``v2.Compose`` of image ops), as a joint
    transform: the other fields are left as they are (right for class labels)."""

    def __init__(self, transform: Callable[[Any], Any], field: str = IMAGE) -> None:
        self.transform = transform
        self.field = field

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        out = dict(sample)
        with _GlobalRNGFromGenerator(generator):
            out[self.field] = self.transform(sample[self.field])
        return out

    def __repr__(self) -> str:
        return f"ImageOnly({self.transform!r}, field={self.field!r})"


class TorchvisionJoint:
    """A ``torchvision.transforms.v2`` transform applied to the whole sample dict: geometric
    ops move ``tv_tensors`` (Image, BoundingBoxes, KeyPoints) consistently."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        with _GlobalRNGFromGenerator(generator):
            return dict(self.transform(dict(sample)))

    def __repr__(self) -> str:
        return f"TorchvisionJoint({self.transform!r})"
