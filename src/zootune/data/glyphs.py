"""Procedurally generated glyph domains: the offline source (and part of the target) data of the demo.

Glyphs of several scripts (Latin, Greek, Cyrillic, digits, symbols) are rasterised from the fonts
that matplotlib ships (DejaVu Sans/Serif/Mono and STIX, in several weights and slants) with
FreeType, so nothing is downloaded. Each (character, font) pair is rendered once into a
``base x base`` bitmap (``base = 2 * resolution``) and cached in memory; samples are then drawn
in batches with torch: stroke-width variation (dilation/erosion), a random affine jitter
(rotation, scale, shear, translation), area downsampling to the target resolution, an optional
low-resolution pass (which mimics scikit-learn's blurry 8x8 digits), contrast jitter and noise.

Everything is deterministic given ``seed`` (one ``torch.Generator`` drives every random draw),
and each sample's label is the index of its character in the requested character string.

Why glyphs: different scripts are *related but different* domains (shared strokes, different
shapes), which is what a zoo of models pretrained on different sources needs so that
aggregating them has something to decide (see DESIGN.md, "When aggregating weights works").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = [
    "SCRIPTS",
    "GREEK_HELD_APART",
    "FONTS",
    "Augment",
    "random_affine",
    "GlyphSet",
    "available_fonts",
    "base_bitmaps",
    "distinct_chars",
    "render_glyphs",
    "glyph_dataset",
]

_GREEK_UPPER = "".join(chr(c) for c in range(0x0391, 0x03AA) if c != 0x03A2)  # 24 letters
_GREEK_LOWER = "".join(chr(c) for c in range(0x03B1, 0x03CA))  # 25 letters incl. final sigma
_CYRILLIC = "".join(chr(c) for c in range(0x0410, 0x0450)) + "\u0401\u0451"  # 66 letters
_GEORGIAN = "".join(chr(c) for c in range(0x10D0, 0x10F1))  # 33 Mkhedruli letters (DejaVu only)

#: Lower-case Greek letters used by no source model of the demo zoo: the held-apart part of the
#: demo's target task (distinctive shapes, none identical to a Latin letter).
GREEK_HELD_APART = "\u03b1\u03b2\u03b3\u03b4\u03b6\u03b7\u03b8\u03bb\u03be\u03c8"  # αβγδζηθλξψ

#: Character sets of each script (``greek`` excludes the held-apart letters).
SCRIPTS: dict[str, str] = {
    "latin": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "greek": "".join(c for c in _GREEK_UPPER + _GREEK_LOWER if c not in GREEK_HELD_APART),
    "greek_all": _GREEK_UPPER + _GREEK_LOWER,
    "cyrillic": _CYRILLIC,
    #: no zoo member shipped here sees it: a held-apart target script (``paper_tables`` benchmark)
    "georgian": _GEORGIAN,
    "digits": "0123456789",
    "symbols": "+\u00d7\u00f7=<>%&@#$?!\u00a7\u00b6\u221e\u2211\u222b\u221a\u2248\u2260\u2264\u2265"
    "\u2190\u2192\u2191\u2193\u2660\u2663\u2665\u2666\u2202\u2207\u2208\u2229\u222a\u2282\u2295"
    "\u2297\u2200\u2203\u00ac\u2227\u2228",
}

#: Font files (in matplotlib's ``mpl-data/fonts/ttf``) used for rendering: font variation is part
#: of the augmentation. A character missing from a font is simply not rendered in that font.
FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)

_CANVAS = 64  # rendering canvas (pixels) before area-downsampling to the base size
_EM = 52  # font size in pixels on that canvas


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges (all sampled uniformly; probabilities in [0, 1]).

    ``stroke``: probability of changing the stroke width (half dilation, half a mild erosion,
    applied at twice the output resolution). Each glyph is rescaled to peak intensity 1 before the
    contrast jitter. ``lowres``: probability of a pass through half the resolution
    (blur like scikit-learn's 8x8 digits). ``scale``/``rotate`` (degrees)/``shear``/``translate``
    (fraction of the image) define the affine jitter; ``contrast`` the minimum peak intensity;
    ``noise`` the standard deviation of additive Gaussian noise (output clamped to [0, 1]).
    """

    rotate: float = 12.0
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 0.15
    translate: float = 0.08
    stroke: float = 0.5
    lowres: float = 0.3
    contrast: float = 0.7
    noise: float = 0.04

    @classmethod
    def none(cls) -> "Augment":
        """No augmentation: the cached bitmaps, only downsampled."""
        return cls(rotate=0.0, scale=(1.0, 1.0), shear=0.0, translate=0.0, stroke=0.0,
                   lowres=0.0, contrast=1.0, noise=0.0)


@dataclass
class GlyphSet:
    """A labelled batch of glyph images: ``x`` (N, 1, R, R) float32 in [0, 1], ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def dataset(self) -> TensorDataset:
        ds = TensorDataset(self.x, self.y)
        ds.classes = list(self.classes)  # type: ignore[attr-defined]
        return ds


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@lru_cache(maxsize=None)
def _font(name: str):
    from matplotlib import ft2font

    return ft2font.FT2Font(os.path.join(_font_dir(), name))


def available_fonts(char: str, fonts: Sequence[str] = FONTS) -> list[str]:
    """The fonts among ``fonts`` that contain a glyph for ``char``."""
    return [f for f in fonts if _font(f).get_char_index(ord(char)) != 0]


def _render_canvas(char: str, font: str) -> np.ndarray:
    """Rasterise one glyph (anti-aliased) centred on its bounding box in a square canvas."""
    ft = _font(font)
    ft.clear()
    ft.set_size(_EM, 72)  # 72 dpi: points == pixels
    ft.set_text(char, 0.0)
    ft.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(ft.get_image(), dtype=np.float32) / 255.0
    canvas = np.zeros((_CANVAS, _CANVAS), dtype=np.float32)
    rows, cols = np.nonzero(img > 0.05)
    if rows.size == 0:
        return canvas
    img = img[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = img.shape
    if h > _CANVAS or w > _CANVAS:  # a very wide/tall glyph: crop its centre
        top, left = max(0, (h - _CANVAS) // 2), max(0, (w - _CANVAS) // 2)
        img = img[top: top + _CANVAS, left: left + _CANVAS]
        h, w = img.shape
    top, left = (_CANVAS - h) // 2, (_CANVAS - w) // 2
    canvas[top: top + h, left: left + w] = img
    return canvas


@lru_cache(maxsize=None)
def _base_bitmap(char: str, font: str, base: int) -> torch.Tensor:
    canvas = torch.from_numpy(_render_canvas(char, font))[None, None]
    return F.adaptive_avg_pool2d(canvas, base)[0, 0].clamp_(0.0, 1.0)


def base_bitmaps(chars: str, base: int, fonts: Sequence[str] = FONTS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """All cached (character, font) bitmaps of ``chars``: ``(bitmaps (K, base, base), label (K,))``.

    Raises ``ValueError`` if a character exists in none of ``fonts``.
    """
    maps, labels = [], []
    for i, c in enumerate(chars):
        have = available_fonts(c, fonts)
        if not have:
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) is in none of the fonts {list(fonts)}")
        for f in have:
            maps.append(_base_bitmap(c, f, base))
            labels.append(i)
    return torch.stack(maps), torch.tensor(labels, dtype=torch.long)


def _ink_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum() / torch.maximum(a, b).sum().clamp_min(1e-6))


def distinct_chars(chars: str, *, threshold: float = 0.1, base: int = 32) -> str:
    """Drop characters that look like an earlier one (Latin ``A`` vs Greek ``Α`` vs Cyrillic ``А``).

    Two characters look alike if ``sum|a - b| / sum(max(a, b))`` of their bitmaps (the share of
    ink where they differ), averaged over the fonts that have both, is below ``threshold``. Used to build a broad multi-script label set
    without classes that no model could tell apart.
    """
    kept: list[str] = []
    for c in chars:
        if c in kept:
            continue
        fonts_c = set(available_fonts(c))
        same = False
        for k in kept:
            common = [f for f in FONTS if f in fonts_c and _font(f).get_char_index(ord(k)) != 0]
            if not common:
                continue
            diff = np.mean([_ink_difference(_base_bitmap(c, f, base), _base_bitmap(k, f, base))
                            for f in common])
            if diff < threshold:
                same = True
                break
        if not same:
            kept.append(c)
    return "".join(kept)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_affine(x: torch.Tensor, g: torch.Generator, *, rotate: float = 10.0,
                  scale: tuple[float, float] = (0.9, 1.1), shear: float = 0.0,
                  translate: float = 0.1) -> torch.Tensor:
    """A random affine jitter of every image of a batch ``x`` (N, C, H, W), in one resampling.

    Rotation in degrees, ``scale`` range, ``shear`` (x-shear factor) and ``translate`` (fraction
    of the image), all uniform; bilinear resampling with zero padding. Draws from ``g`` only.
    """
    n = x.shape[0]
    ang = torch.deg2rad(_uniform(n, -rotate, rotate, g))
    sc = _uniform(n, scale[0], scale[1], g)
    sh = _uniform(n, -shear, shear, g)
    tx = _uniform(n, -translate, translate, g) * 2.0  # affine_grid uses [-1, 1] coordinates
    ty = _uniform(n, -translate, translate, g) * 2.0
    cos, sin = torch.cos(ang), torch.sin(ang)
    # Output->input map: inverse of (scale * rotate * shear); sampling at A @ p + t.
    a = torch.stack([torch.stack([cos, -sin + sh * cos], -1), torch.stack([sin, cos + sh * sin], -1)], -2)
    a = torch.linalg.inv(a * sc.view(n, 1, 1))
    theta = torch.cat([a, torch.stack([tx, ty], -1).unsqueeze(-1)], -1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _augment(x: torch.Tensor, aug: Augment, resolution: int, g: torch.Generator) -> torch.Tensor:
    """Apply :class:`Augment` to base bitmaps ``x`` (N, 1, 2R, 2R); returns (N, 1, R, R)."""
    n = x.shape[0]
    if aug.stroke > 0:
        u = torch.rand(n, generator=g)
        thick = (u < aug.stroke / 2).view(n, 1, 1, 1)
        thin = ((u >= aug.stroke / 2) & (u < aug.stroke)).view(n, 1, 1, 1)
        dil = F.max_pool2d(x, 3, stride=1, padding=1)
        ero = 0.5 * (x - F.max_pool2d(-x, 3, stride=1, padding=1))  # half an erosion: keeps thin strokes
        x = torch.where(thick, dil, torch.where(thin, ero, x))
    x = random_affine(x, g, rotate=aug.rotate, scale=aug.scale, shear=aug.shear,
                      translate=aug.translate)
    x = F.avg_pool2d(x, 2)  # area downsampling to the output resolution
    if aug.lowres > 0:
        low = (torch.rand(n, generator=g) < aug.lowres).view(n, 1, 1, 1)
        small = F.adaptive_avg_pool2d(x, max(1, resolution // 2))
        blurred = F.interpolate(small, size=resolution, mode="bilinear", align_corners=False)
        x = torch.where(low, blurred, x)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)  # every glyph peaks at 1
    if aug.contrast < 1.0:
        x = x * _uniform(n, aug.contrast, 1.0, g).view(n, 1, 1, 1)
    if aug.noise > 0:
        x = x + aug.noise * torch.randn(x.shape, generator=g)
    return x.clamp_(0.0, 1.0)


def render_glyphs(chars: str, n_per_class: int, *, resolution: int = 16, seed: int = 0,
                  augment: Augment | None = None, fonts: Sequence[str] = FONTS,
                  batch_size: int = 4096) -> GlyphSet:
    """Render ``n_per_class`` augmented samples of every character in ``chars``.

    Labels are indices into ``chars``; fonts are drawn uniformly among those that contain the
    character; samples come out shuffled. Deterministic given ``seed`` (and the arguments).
    """
    if not chars:
        raise ValueError("no characters to render")
    if len(set(chars)) != len(chars):
        raise ValueError("characters must be distinct (each one is a class)")
    if n_per_class < 1:
        raise ValueError("n_per_class must be >= 1")
    aug = Augment() if augment is None else augment
    maps, owner = base_bitmaps(chars, 2 * resolution, fonts)
    g = torch.Generator().manual_seed(int(seed))
    # For each class, n_per_class draws among that class's (char, font) bitmaps.
    starts = torch.searchsorted(owner, torch.arange(len(chars)))
    counts = torch.bincount(owner, minlength=len(chars))
    labels = torch.arange(len(chars)).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    pick = starts[labels] + (torch.rand(labels.numel(), generator=g) * counts[labels]).long()
    out = []
    for i in range(0, labels.numel(), batch_size):
        xb = maps[pick[i: i + batch_size]].unsqueeze(1)
        out.append(_augment(xb, aug, resolution, g))
    return GlyphSet(torch.cat(out), labels, list(chars))


def glyph_dataset(chars: str, n_per_class: int, **kwargs) -> TensorDataset:
    """:func:`render_glyphs` as a ``TensorDataset`` of ``(image, label)`` with a ``classes`` list."""
    return render_glyphs(chars, n_per_class, **kwargs).dataset()
