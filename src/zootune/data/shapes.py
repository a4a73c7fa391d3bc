"""Procedural geometric shapes (``data.name: shapes``): a non-glyph few-label target.

What and why: the small grey-scale zoo (:class:`zootune.demo.model.MiniCNN`, 1x16x16 inputs in
[0, 1], not normalised) is pretrained on rendered letters and symbols (:mod:`.glyphs`). A
benchmark with several targets needs one that is a *different kind* of image: not strokes of a
character but filled or outlined geometric shapes, at any position, size and rotation, on
textured, noisy backgrounds of either polarity. Like the glyphs, it is rendered offline with torch
alone, so nothing is downloaded.

Classes (:data:`SHAPE_CLASSES`, in label order): ``circle``, ``ellipse``, ``square``,
``triangle``, ``star`` (five points), ``plus``, ``arrow``, ``heart``, ``crescent``, ``bowtie``
(two triangles tip to tip). ``options.classes`` picks a subset (its order is the label order).

Randomisation, per sample: centre (the shape stays mostly inside the image), size (circumradius
0.25-0.42 of the side), rotation (any angle: none of the classes depends on it), aspect jitter
(a small stretch of one axis, +-10 to 15 %, where it keeps the class: circle vs ellipse are kept
apart, ellipses are 1.7-2.3 times as long as wide), filled (65 %) or outlined (stroke 1-1.7 px
at 16 px), a background level in [0.15, 0.85] and a foreground that is 0.3-0.65 brighter or
darker (either polarity), a background texture added to the whole image (a smooth
low-frequency field, a linear gradient, sometimes fine stripes) and Gaussian pixel noise. Shapes
are polygons (round ones with 20-26 vertices) whose signed distance / even-odd inside test is
evaluated on a grid supersampled 4x (at 16 px) and area-downsampled, so edges are anti-aliased;
the whole pool is rendered in batches (one class at a time).

Determinism: the pool is part of the data set and fixed — every class is drawn from its own
``torch.Generator`` seeded with ``(SHAPES_POOL_SEED, class)``, so a subset of classes has the same
images as the full set (for the same ``per_class``) and the global RNG is never touched; the pool (``options.per_class``
images per class, default :data:`SHAPES_PER_CLASS`) is cached per process. As for
``demo_target`` and ``digits``, ``data.seed`` only changes the stratified train / val / test
split (``val_fraction``, ``test_fraction``) and which ``labels_per_class`` training images are
kept. ``image_size`` (default 16) is the rendering resolution (no resampling); ``channels`` and
``mean`` / ``std`` (config, else the zoo's preprocessing) are applied to the rendered tensors.

Augmentation (``augment``, default on): the demo target's mechanism (pre-drawn copies, the same
``zootune.data.glyphs.random_affine`` and ranges: +-10 degrees, 10 % shift, scale 0.9-1.1,
``copies = 32`` per training image; a trainer key ``(index, sample_seed)`` picks copy
``sample_seed % copies``, a plain index the original), with one difference: the affine jitter
moves the shape's anti-aliased coverage mask only, and the image is composed again over the
sample's own background texture with fresh pixel noise — so a warp never pads a textured
background with black borders nor blurs the pixel noise. Validation and test images are never
augmented. (:class:`AugmentedShapes` repeats ``AugmentedImages``' few lines rather than import it:
the library never imports :mod:`zootune.demo`.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zootune.data.base import (
    TensorImages,
    DataError,
    DataSplits,
    TransformedDataset,
    stratified_split,
    take_per_class,
)
from zootune.data.transforms import eval_record, resolve_preprocessing

__all__ = [
    "SHAPES_PER_CLASS",
    "SHAPES_POOL_SEED",
    "SHAPE_CLASSES",
    "AugmentedShapes",
    "ShapePool",
    "build_shapes",
    "shape_pool",
    "shape_splits",
]

#: The classes, in label order.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "star", "plus",
                                  "arrow", "heart", "crescent", "bowtie")
#: Seed of the rendered pool (fixed: the pool is part of the data set, like the digits).
SHAPES_POOL_SEED = 20240611
#: Default images per class (``options.per_class``).
SHAPES_PER_CLASS = 200
#: Default rendering resolution (the demo zoo's input size).
DEFAULT_SIZE = 16


# ---------------------------------------------------------------------------------------------
# Shapes: polygons in a local frame (circumradius about 1) and per-class aspect ranges
# ---------------------------------------------------------------------------------------------

def _ngon(n: int, rx: float = 1.0, ry: float = 1.0, start: float = 90.0) -> list[tuple[float, float]]:
    a0 = math.radians(start)
    return [(rx * math.cos(a0 + 2 * math.pi * k / n), ry * math.sin(a0 + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _plus(arm: float = 0.95, half: float = 0.3) -> list[tuple[float, float]]:
    a, h = arm, half
    return [(h, h), (h, a), (-h, a), (-h, h), (-a, h), (-a, -h), (-h, -h), (-h, -a), (h, -a),
            (h, -h), (a, -h), (a, h)]


def _heart(n: int = 22) -> list[tuple[float, float]]:
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        pts.append((16 * math.sin(t) ** 3,
                    13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    s = max(math.hypot(x - cx, y - cy) for x, y in pts)
    return [((x - cx) / s, (y - cy) / s) for x, y in pts]


def _crescent(n: int = 14, inner_r: float = 0.78, inner_dx: float = 0.42) -> list[tuple[float, float]]:
    """The unit disc minus a disc of radius ``inner_r`` centred at ``(inner_dx, 0)``."""
    x = (1.0 - inner_r ** 2 + inner_dx ** 2) / (2 * inner_dx)  # the circles' intersections
    y = math.sqrt(1.0 - x * x)
    a_out = math.atan2(y, x)
    a_in = math.atan2(y, x - inner_dx)
    outer = [(math.cos(a), math.sin(a))
             for a in np.linspace(a_out, 2 * math.pi - a_out, n)]  # the far side, through 180 deg
    inner = [(inner_dx + inner_r * math.cos(a), inner_r * math.sin(a))
             for a in np.linspace(2 * math.pi - a_in, a_in, n)[1:-1]]  # back along the inner arc
    pts = outer + inner
    cx = (max(p[0] for p in pts) + min(p[0] for p in pts)) / 2
    return [(px - cx, py) for px, py in pts]


#: name -> (polygon vertices in the local frame, (aspect low, aspect high)).
_SHAPES: dict[str, tuple[list[tuple[float, float]], tuple[float, float]]] = {
    "circle": (_ngon(20), (1.0, 1.08)),
    "ellipse": (_ngon(20, 1.0, 0.5), (0.85, 1.15)),  # base aspect 2 -> 1.7..2.3
    "square": (_ngon(4, 1.0, 1.0, 45.0), (0.9, 1.1)),
    "triangle": (_ngon(3, 1.0, 1.0, 90.0), (0.85, 1.15)),
    "star": (_star(), (0.9, 1.1)),
    "plus": (_plus(), (0.85, 1.15)),
    "arrow": ([(-0.95, 0.22), (0.1, 0.22), (0.1, 0.62), (0.95, 0.0), (0.1, -0.62), (0.1, -0.22),
               (-0.95, -0.22)], (0.85, 1.15)),
    "heart": (_heart(), (0.9, 1.1)),
    "crescent": (_crescent(), (0.9, 1.1)),
    "bowtie": ([(-0.9, -0.7), (0.0, -0.14), (0.9, -0.7), (0.9, 0.7), (0.0, 0.14), (-0.9, 0.7)],
               (0.85, 1.15)),
}
assert tuple(_SHAPES) == SHAPE_CLASSES


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _edges(verts: torch.Tensor):
    """Per edge ``k``: start point ``(ax, ay)`` and direction ``(ex, ey)``, each (N, 1)."""
    e = verts.shape[1]
    for k in range(e):
        ax, ay = verts[:, k, 0:1], verts[:, k, 1:2]
        yield ax, ay, verts[:, (k + 1) % e, 0:1] - ax, verts[:, (k + 1) % e, 1:2] - ay


def _polygon_inside(verts: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Even-odd inside test of points ``(px, py)`` (1, P) for polygons ``verts`` (N, E, 2): (N, P)."""
    inside = torch.zeros((verts.shape[0], px.shape[-1]), dtype=torch.bool)
    for ax, ay, ex, ey in _edges(verts):
        wy = py - ay
        crosses = (wy > 0) != (wy > ey)  # the edge spans the point's row (half-open)
        left = ((px - ax) * ey < wy * ex) == (ey > 0)  # the point is left of the crossing
        inside ^= crosses & left
    return inside


def _polygon_dist(verts: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Distance of points ``(px, py)`` (1, P) to the outlines of polygons ``verts`` (N, E, 2)."""
    best = torch.full((verts.shape[0], px.shape[-1]), float("inf"))
    for ax, ay, ex, ey in _edges(verts):
        wx, wy = px - ax, py - ay
        inv = 1.0 / (ex * ex + ey * ey).clamp_min(1e-12)
        h = ((wx * ex).add_(wy * ey).mul_(inv)).clamp_(0.0, 1.0)
        d2 = wx.sub_(h * ex).square_().add_(wy.sub_(h * ey).square_())
        torch.minimum(best, d2, out=best)
    return best.sqrt_()


@functools.lru_cache(maxsize=8)
def _grid(size: int, ss: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the supersampled pixels, in output-pixel units (0..size)."""
    c = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


def _supersampling(size: int) -> int:
    return max(1, min(4, math.ceil(64 / size)))


def _render_masks(shape: str, n: int, size: int, g: torch.Generator, chunk: int = 200
                  ) -> torch.Tensor:
    """Anti-aliased coverage masks (n, 1, size, size) in [0, 1] of ``n`` random poses."""
    poly, (alo, ahi) = _SHAPES[shape]
    base = torch.tensor(poly, dtype=torch.float32)  # (E, 2)
    radius = _u(n, 0.25, 0.42, g) * size
    margin = (0.5 * size - radius).clamp_min(0.0) * 0.75
    cx = 0.5 * size + _u(n, -1.0, 1.0, g) * margin
    cy = 0.5 * size + _u(n, -1.0, 1.0, g) * margin
    theta = _u(n, 0.0, 2 * math.pi, g)
    aspect = _u(n, alo, ahi, g).sqrt()
    outline = torch.rand(n, generator=g) < 0.35
    stroke = _u(n, 1.0, 1.7, g) * (size / DEFAULT_SIZE)  # in output pixels
    # local (x * sqrt a, y / sqrt a) -> rotate -> scale by radius -> translate
    lx = base[:, 0].view(1, -1) * aspect.view(-1, 1)
    ly = base[:, 1].view(1, -1) / aspect.view(-1, 1)
    cos, sin = theta.cos().view(-1, 1), theta.sin().view(-1, 1)
    r = radius.view(-1, 1)
    vx = cx.view(-1, 1) + r * (cos * lx - sin * ly)
    vy = cy.view(-1, 1) + r * (sin * lx + cos * ly)
    verts = torch.stack([vx, vy], -1)  # (n, E, 2) in output pixels
    ss = _supersampling(size)
    gx, gy = _grid(size, ss)
    px, py = gx.view(1, -1), gy.view(1, -1)
    cover = torch.empty(n, gx.numel())
    for a in range(0, n, chunk):
        v, o, c = verts[a:a + chunk], outline[a:a + chunk], cover[a:a + chunk]
        if (~o).any():  # filled: inside the polygon
            c[~o] = _polygon_inside(v[~o], px, py).to(torch.float32)
        if o.any():  # outlined: within half a stroke of the outline
            half = 0.5 * stroke[a:a + chunk][o].view(-1, 1)
            c[o] = (_polygon_dist(v[o], px, py) <= half).to(torch.float32)
    cover = cover.view(n, 1, size * ss, size * ss)
    return F.avg_pool2d(cover, ss) if ss > 1 else cover


def _textures(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Additive background textures (n, 1, size, size): smooth field + gradient + stripes."""
    low = torch.randn(n, 1, 4, 4, generator=g)
    low = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    tex = low * _u(n, 0.0, 0.12, g).view(-1, 1, 1, 1)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    phi = _u(n, 0.0, 2 * math.pi, g).view(-1, 1, 1, 1)
    tex = tex + _u(n, 0.0, 0.15, g).view(-1, 1, 1, 1) * (xx * phi.cos() + yy * phi.sin())
    psi = _u(n, 0.0, math.pi, g).view(-1, 1, 1, 1)
    period = _u(n, 2.5, 4.5, g).view(-1, 1, 1, 1) * (2.0 / DEFAULT_SIZE)  # in [-1, 1] units
    phase = _u(n, 0.0, 2 * math.pi, g).view(-1, 1, 1, 1)
    stripes = torch.sin(2 * math.pi * (xx * psi.cos() + yy * psi.sin()) / period + phase)
    amp = torch.where(torch.rand(n, generator=g) < 0.3, _u(n, 0.03, 0.08, g), torch.zeros(n))
    return tex + amp.view(-1, 1, 1, 1) * stripes


def _levels(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Background and foreground levels (either polarity; the contrast is 0.3-0.65)."""
    bg = _u(n, 0.15, 0.85, g)
    contrast = _u(n, 0.3, 0.65, g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    fg = bg + sign * contrast
    flip = (fg < 0.05) | (fg > 0.95)
    fg = torch.where(flip, bg - sign * contrast, fg).clamp(0.0, 1.0)
    return bg, fg


def _compose(mask: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor, tex: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    b, f = bg.view(-1, 1, 1, 1), fg.view(-1, 1, 1, 1)
    return (b + (f - b) * mask + tex + noise).clamp_(0.0, 1.0)


class ShapePool:
    """Rendered shapes with their parts: ``images`` (N, 1, S, S) in [0, 1], ``targets`` (N,),
    and what composes an image again (``masks``, ``bg``, ``fg``, ``textures``, ``noise_std``)."""

    def __init__(self, parts: Sequence[dict[str, torch.Tensor]], classes: Sequence[str]) -> None:
        cat = lambda k: torch.cat([p[k] for p in parts])
        self.classes = list(classes)
        self.masks, self.bg, self.fg = cat("mask"), cat("bg"), cat("fg")
        self.textures, self.noise_std = cat("tex"), cat("noise_std")
        self.images = cat("image")
        self.targets = np.concatenate([np.full(len(p["bg"]), i, dtype=np.int64)
                                       for i, p in enumerate(parts)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


@functools.lru_cache(maxsize=64)
def _class_part(shape: str, per_class: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SHAPES_POOL_SEED + 1_000_003 * (SHAPE_CLASSES.index(shape) + 1))
    mask = _render_masks(shape, per_class, size, g)
    tex = _textures(per_class, size, g)
    bg, fg = _levels(per_class, g)
    noise_std = _u(per_class, 0.0, 0.06, g)
    noise = torch.randn(per_class, 1, size, size, generator=g) * noise_std.view(-1, 1, 1, 1)
    return {"mask": mask, "tex": tex, "bg": bg, "fg": fg, "noise_std": noise_std,
            "image": _compose(mask, bg, fg, tex, noise)}


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return SHAPE_CLASSES
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise DataError(f"data.options.classes must be a list of shape names, got {classes!r}")
    names = tuple(str(c) for c in classes)
    unknown = [c for c in names if c not in SHAPE_CLASSES]
    if unknown:
        raise DataError(f"unknown shape class(es) {', '.join(map(repr, unknown))} in "
                        f"data.options.classes; valid: {', '.join(SHAPE_CLASSES)}")
    if len(set(names)) != len(names):
        raise DataError(f"data.options.classes lists a class twice: {list(names)}")
    if len(names) < 2:
        raise DataError("data.options.classes needs at least 2 classes")
    return names


def shape_pool(per_class: int = SHAPES_PER_CLASS, size: int = DEFAULT_SIZE,
               classes: Sequence[str] | None = None) -> ShapePool:
    """The fixed pool: ``per_class`` images of each class (labels: positions in ``classes``).

    Each class is rendered once per process (cached) from its own fixed generator."""
    names = _check_classes(classes)
    if int(per_class) < 1:
        raise DataError(f"data.options.per_class must be >= 1, got {per_class}")
    if int(size) < 4:
        raise DataError(f"data.image_size must be >= 4 for shapes, got {size}")
    return ShapePool([_class_part(c, int(per_class), int(size)) for c in names], names)


class AugmentedShapes(TensorImages):
    """Training shapes with ``copies`` pre-drawn jittered versions of each (batched, fast).

    As :class:`zootune.demo.data.AugmentedImages` (same keys: a plain index is the original, the
    trainer's ``(index, sample_seed)`` is copy ``sample_seed % copies``; same random affine and
    ranges), but the affine moves the coverage mask alone; each copy is composed again over the
    sample's background texture with fresh pixel noise of the sample's strength.
    """

    def __init__(self, pool: ShapePool, indices: np.ndarray, finish, *, copies: int = 32,
                 seed: int = 0, rotate: float = 10.0, translate: float = 0.1,
                 scale: tuple[float, float] = (0.9, 1.1)) -> None:
        from zootune.data.glyphs import random_affine

        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        super().__init__(finish(pool.images[idx]), pool.targets[np.asarray(indices, dtype=np.int64)])
        n = len(idx)
        rep = lambda t: t[idx].repeat_interleave(copies, dim=0)
        g = torch.Generator().manual_seed(int(seed))
        masks = random_affine(rep(pool.masks), g, rotate=rotate, scale=scale, translate=translate)
        tex = rep(pool.textures)
        noise = torch.randn(tex.shape, generator=g) * rep(pool.noise_std).view(-1, 1, 1, 1)
        aug = finish(_compose(masks.clamp_(0.0, 1.0), rep(pool.bg), rep(pool.fg), tex, noise))
        self.copies = aug.view(n, copies, *aug.shape[1:])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            i, seed = int(key[0]), int(key[1])
            return self.copies[i, seed % self.copies.shape[1]], int(self.targets[i])
        return self.images[int(key)], int(self.targets[int(key)])


def _finisher(pre: Mapping[str, Any]):
    """Channels and normalisation of the preprocessing, applied to whole image tensors."""
    channels = int(pre.get("channels") or 1)
    mean, std = pre.get("mean"), pre.get("std")

    def finish(x: torch.Tensor) -> torch.Tensor:
        if channels != 1:
            x = x.expand(x.shape[0], channels, *x.shape[-2:]).contiguous()
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
            if not (bool((m == 0).all()) and bool((s == 1).all())):
                x = (x - m) / s
        return x

    return finish


def shape_splits(labels_per_class: int | None = None, seed: int = 0, *,
                 per_class: int = SHAPES_PER_CLASS, classes: Sequence[str] | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, size: int = DEFAULT_SIZE,
                 augment: bool = True, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """The shapes target: stratified split of the fixed pool by ``seed``, ``labels_per_class``
    training images kept per class (``None``: all), training copies jittered when ``augment``."""
    pool = shape_pool(per_class, size, classes)
    if val_fraction + test_fraction >= 1.0:
        raise DataError("data.val_fraction + data.test_fraction must be < 1")
    train_idx, val_idx, test_idx = stratified_split(pool.targets, [val_fraction, test_fraction], seed)
    if labels_per_class is not None:
        train_idx = take_per_class(train_idx, pool.targets, labels_per_class, seed)
    pre = dict(preprocessing or {"size": size, "channels": 1, "mean": None, "std": None})
    finish = _finisher(pre)
    sub = lambda idx: TensorImages(finish(pool.images[torch.as_tensor(idx)]), pool.targets[idx])
    train = (AugmentedShapes(pool, train_idx, finish, seed=seed) if augment
             else TransformedDataset(sub(train_idx)))
    return DataSplits(
        train=train,
        val=TransformedDataset(sub(val_idx)) if len(val_idx) else None,
        test=TransformedDataset(sub(test_idx)) if len(test_idx) else None,
        classes=list(pool.classes),
        info={"name": "shapes", "classes": len(pool.classes), "per_class": int(per_class),
              "labels_per_class": labels_per_class, "seed": seed, "augment": bool(augment),
              "train": len(train_idx), "val": len(val_idx), "test": len(test_idx),
              "resolution": int(size), "pool_seed": SHAPES_POOL_SEED, "preprocessing": pre,
              "eval_preprocessing": eval_record(pre, "tensor")},
    )


def build_shapes(cfg_data: Any, preprocessing: Mapping[str, Any] | None = None) -> DataSplits:
    """``data.name: shapes`` (options: ``per_class``, ``classes``)."""
    opt = dict(cfg_data.options or {})
    unknown = sorted(set(opt) - {"per_class", "classes"})
    if unknown:
        raise DataError(f"unknown data.options for shapes: {', '.join(unknown)}; "
                        "valid: per_class, classes")
    pre = resolve_preprocessing(cfg_data, preprocessing, default_size=DEFAULT_SIZE, default_channels=1)
    return shape_splits(cfg_data.labels_per_class, cfg_data.seed,
                        per_class=int(opt.get("per_class", SHAPES_PER_CLASS)),
                        classes=opt.get("classes"), val_fraction=cfg_data.val_fraction,
                        test_fraction=cfg_data.test_fraction, size=int(pre["size"] or DEFAULT_SIZE),
                        augment=cfg_data.augment, preprocessing=pre)
