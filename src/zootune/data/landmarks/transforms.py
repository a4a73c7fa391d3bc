"""Keypoint-aware joint transforms: box cropping, the paper's augmentation, normalisation.

Coordinates: a keypoint ``(x, y)`` is in pixels of its image with the **pixel-edge convention**
— pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``, its centre is ``(j + 0.5, i + 0.5)``
— the convention under which torchvision's affine warps of images and of ``tv_tensors.KeyPoints``
agree (``v2.functional.affine`` rotates both about ``(W/2, H/2)``). Resizing by ``s`` multiplies
coordinates by ``s``; a horizontal flip maps ``x -> W - x``.

torchvision 0.29's ``horizontal_flip_keypoints`` uses ``x -> W - 1 - x`` instead (the
pixel-index convention), so under the convention its own affine uses it misplaces every flipped
point by one pixel — an error of about 1/70 of the inter-ocular distance of a 256-pixel face
crop, a third of the paper's NME differences. The flip here is done explicitly (image with
``v2.functional.horizontal_flip``, keypoints with ``W - x``) together with the mirrored index
swap of the scheme, which no augmentation library does for you.

The augmentation is the paper's (§4.3, following Sun et al. 2019): in-plane rotation uniform in
±30°, scaling uniform in 0.75–1.25 about the crop centre, and a horizontal flip with
probability 0.5. Its random draws come from the explicit ``torch.Generator`` of the trainer's
sampler (:mod:`zootune.data.sample`), so a sample's augmentation is a pure function of its key.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

IMAGE, KEYPOINTS = "image", "keypoints"


def _F():
    from torchvision.transforms.v2 import functional as F

    return F


def square_box(box: Sequence[float], enlarge: float = 1.25) -> tuple[float, float, float]:
    """``(left, top, side)`` of the square crop around a face box ``(x1, y1, x2, y2)``: centred
    on the box centre, side ``enlarge * max(w, h)`` (1.25 as HRNet's face protocol)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * enlarge
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - side / 2, cy - side / 2, side


def crop_by_box(image: torch.Tensor, keypoints: torch.Tensor, box: Sequence[float], size: int,
                enlarge: float = 1.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop the face square around ``box`` (:func:`square_box`) and resize it to ``size``.

    The paper (§4.3): "faces are cropped by the provided boxes according to the center location
    and resized to 256x256". Parts of the square outside the image are zero. The crop box is
    rounded to whole pixels and the keypoints are mapped with exactly that box, so the image and
    the points stay consistent. Returns ``(image (C, size, size), keypoints (K, 2))``.
    """
    left, top, side = square_box(box, enlarge)
    li, ti, si = int(round(left)), int(round(top)), max(int(round(side)), 1)
    out = _F().resized_crop(image, ti, li, si, si, [size, size], antialias=True)
    kp = (torch.as_tensor(keypoints, dtype=torch.float32) - torch.tensor([li, ti], dtype=torch.float32))
    return out, kp * (size / si)


def flip_keypoints(keypoints: torch.Tensor, width: float, perm: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Mirror ``(K, 2)`` keypoints of an image ``width`` pixels wide (``x -> width - x``) and
    swap the mirrored indices (``perm``, :func:`~zootune.data.landmarks.schemes.flip_permutation`)."""
    kp = keypoints.clone()
    kp[..., 0] = width - kp[..., 0]
    return kp[..., torch.as_tensor(np.asarray(perm), dtype=torch.long), :]


class JointCompose:
    """Joint transforms applied in order, all drawing from the one generator."""

    joint = True

    def __init__(self, steps: Sequence[Callable[..., dict[str, Any]]]) -> None:
        self.steps = list(steps)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        for step in self.steps:
            sample = step(sample, generator)
        return sample

    def __repr__(self) -> str:
        return "JointCompose(" + ", ".join(map(repr, self.steps)) + ")"


class LandmarkAugment:
    """Random rotation, scaling and flip of ``image`` and ``keypoints`` together (see module).

    ``flip_perm``: the scheme's flip permutation; ``None`` disables flipping. Points pushed
    outside the image stay where they are (the task gives them no heatmap target).
    """

    joint = True

    def __init__(self, flip_perm: Sequence[int] | np.ndarray | None, rotation: float = 30.0,
                 scale: tuple[float, float] = (0.75, 1.25), flip_p: float = 0.5) -> None:
        if rotation < 0 or not (0 < scale[0] <= scale[1]) or not 0 <= flip_p <= 1:
            raise ValueError("rotation must be >= 0, 0 < scale[0] <= scale[1], 0 <= flip_p <= 1")
        self.flip_perm = None if flip_perm is None else np.asarray(flip_perm)
        self.rotation, self.scale, self.flip_p = float(rotation), tuple(map(float, scale)), float(flip_p)

    def draw(self, generator: torch.Generator | None) -> tuple[float, float, bool]:
        """``(angle in degrees, scale, flip)`` from ``generator``."""
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        angle = (2 * u[0] - 1) * self.rotation
        s = self.scale[0] + u[1] * (self.scale[1] - self.scale[0])
        flip = self.flip_perm is not None and u[2] < self.flip_p
        return angle, s, flip

    def apply(self, image: torch.Tensor, keypoints: torch.Tensor, angle: float, scale: float,
              flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic part: warp both by ``(angle, scale)``, then flip and swap."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import InterpolationMode

        F = _F()
        h, w = image.shape[-2:]
        kp = torch.as_tensor(keypoints, dtype=torch.float32)
        if angle != 0.0 or scale != 1.0:
            image = F.affine(image, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                             interpolation=InterpolationMode.BILINEAR)
            kp = F.affine(tv_tensors.KeyPoints(kp, canvas_size=(h, w)), angle=angle,
                          translate=[0, 0], scale=scale, shear=[0.0, 0.0]).as_subclass(torch.Tensor)
        if flip:
            image = F.horizontal_flip(image)
            kp = flip_keypoints(kp, float(w), self.flip_perm)
        return image, kp

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        angle, s, flip = self.draw(generator)
        out = dict(sample)
        out[IMAGE], out[KEYPOINTS] = self.apply(sample[IMAGE], sample[KEYPOINTS], angle, s, flip)
        return out

    def __repr__(self) -> str:
        return (f"LandmarkAugment(rotation=±{self.rotation:g}°, scale={self.scale}, "
                f"flip_p={self.flip_p if self.flip_perm is not None else 0})")


class ImageNormalize:
    """``(image - mean) / std`` per channel (and channel expansion of grey images): the last
    step of training and evaluation, the one :func:`zootune.data.transforms.eval_record` records."""

    joint = True

    def __init__(self, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.channels = int(channels)
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        x = torch.as_tensor(sample[IMAGE], dtype=torch.float32)
        if x.shape[0] != self.channels:
            x = x.mean(0, keepdim=True) if self.channels == 1 else x.expand(self.channels, *x.shape[1:])
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        out = dict(sample)
        out[IMAGE] = x.contiguous()
        out[KEYPOINTS] = torch.as_tensor(sample[KEYPOINTS], dtype=torch.float32)
        return out

    def __repr__(self) -> str:
        return f"ImageNormalize(channels={self.channels})"


def landmark_transforms(pre: dict[str, Any], flip_perm: Sequence[int] | np.ndarray | None,
                        train: bool, augment: bool = True, rotation: float = 30.0,
                        scale: tuple[float, float] = (0.75, 1.25), flip_p: float = 0.5) -> JointCompose:
    """Training (paper augmentation, then normalisation) or evaluation (normalisation) pipeline."""
    steps: list[Any] = []
    if train and augment:
        steps.append(LandmarkAugment(flip_perm, rotation, scale, flip_p))
    steps.append(ImageNormalize(pre.get("channels") or 3, pre.get("mean"), pre.get("std")))
    return JointCompose(steps)

