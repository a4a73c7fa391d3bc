"""Procedural faces with known landmarks: an offline stand-in for 300W (68-point scheme).

No facial-landmark data set can be downloaded on the development machines, so the demo, the
tests and the benchmark use drawn faces whose 68 landmarks follow the iBUG/300-W markup exactly
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67; :mod:`.schemes`), so flip pairs
and the inter-ocular normalisation are the real scheme's.

How a face is made (every number drawn from ``numpy.random.default_rng([seed, face_id])``, so
face ``i`` of a seed is always the same image, whatever else is drawn, in any order):

* **shape**: a 3-D template (jaw width and length, squareness, eye size, spacing and height,
  brow height, arch and thickness, nose length and width, mouth width, lip thickness), with a
  small independent jitter on every point (faces are not symmetric);
* **expression**: mouth opening, smile / frown (corners up or down), eye openness (blinks),
  raised brows;
* **pose**: yaw ±40°, pitch ±20°, roll ±25° of the 3-D template, orthographic projection; face
  size and position in the frame vary;
* **appearance**: skin and hair colour, hair line and fringe, glasses, lip colour, a cluttered
  background (gradient, low-frequency noise, random shapes), directional lighting, contrast and
  sensor noise;
* **occlusion**: with probability ``occlusion`` a random opaque shape covers part of the face
  (the points under it keep their true positions, as COFW annotates occluded points).

Drawing is PIL's (polygons, ellipses, thick polylines) at twice the resolution, reduced by box
filtering (anti-aliasing); about 2,000 64x64 faces per second on one core.
Coordinates use the pixel-edge convention of :mod:`.transforms` (pixel ``j`` spans ``[j, j+1)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_POINTS = 68
SUPERSAMPLE = 2
#: face ids of the validation and test splits start here (disjoint from training ids)
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def face_template(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``(landmarks (68, 3), skull outline (N, 3), facts)`` of a random face in its own frame
    (x right, y down, z towards the viewer; the jaw's half-width is about 1)."""
    u = rng.uniform
    p = np.zeros((NUM_POINTS, 3))
    # jaw 0..16: the lower half of a super-ellipse from the left temple to the right one
    a, b, q = u(0.85, 1.05), u(1.0, 1.3), u(0.65, 1.0)
    y0 = -0.05
    t = np.pi * np.arange(17) / 16
    c, s = np.cos(t), np.sin(t)
    p[:17, 0] = -a * np.sign(c) * np.abs(c) ** q
    p[:17, 1] = y0 + b * s ** 0.9
    p[:17, 2] = 0.55 * s - 0.45
    # eyes 36..47
    ex, ey, ew = u(0.36, 0.5), u(-0.36, -0.2), u(0.14, 0.2)
    openness = u(0.25, 0.55) * (0.15 if rng.random() < 0.1 else 1.0)
    eh = ew * openness
    for side, base in ((-1, 36), (1, 42)):
        cx = side * ex
        outer, inner = cx + side * ew, cx - side * ew
        if side < 0:  # 36 outer, 37-38 upper, 39 inner, 40-41 lower (left to right on top)
            pts = [(outer, ey), (cx - ew / 3, ey - eh), (cx + ew / 3, ey - eh), (inner, ey),
                   (cx + ew / 3, ey + 0.8 * eh), (cx - ew / 3, ey + 0.8 * eh)]
        else:  # 42 inner, 43-44 upper, 45 outer, 46-47 lower
            pts = [(inner, ey), (cx - ew / 3, ey - eh), (cx + ew / 3, ey - eh), (outer, ey),
                   (cx + ew / 3, ey + 0.8 * eh), (cx - ew / 3, ey + 0.8 * eh)]
        p[base:base + 6, :2] = pts
        p[base:base + 6, 2] = 0.22
    # brows 17..26 (left: outer -> inner; right: inner -> outer)
    raise_ = u(0.0, 0.08) if rng.random() < 0.3 else 0.0
    by, arch = ey - u(0.17, 0.28) - raise_, u(0.02, 0.1)
    v = np.linspace(0, 1, 5)
    lx = -ex - ew * 1.35 + v * (ew * 2.45)
    p[17:22, 0], p[17:22, 1] = lx, by - arch * np.sin(np.pi * v) + u(-0.04, 0.04) * v
    p[22:27, 0], p[22:27, 1] = -lx[::-1], (by - arch * np.sin(np.pi * v))[::-1] + u(-0.04, 0.04) * v
    p[17:27, 2] = 0.3
    # nose 27..35: bridge down to the tip, then nostrils left to right
    ny, nw, nl = u(0.18, 0.34), u(0.14, 0.24), u(0.15, 0.35)
    p[27:31, 1] = np.linspace(ey + 0.02, ny, 4)
    p[27:31, 2] = 0.3 + np.linspace(0.05, 1.0, 4) * nl
    p[31:36, 0] = np.array([-1, -0.5, 0, 0.5, 1]) * nw
    p[31:36, 1] = ny + 0.08 + np.array([0, 0.02, 0.035, 0.02, 0])
    p[31:36, 2] = 0.35 + 0.1 * np.array([0, 0.5, 1, 0.5, 0])
    # mouth 48..67
    my, mw = ny + u(0.25, 0.38), u(0.28, 0.44)
    smile = u(-0.05, 0.1)
    ut, lt = u(0.04, 0.09), u(0.05, 0.11)
    o = u(0.02, 0.22) if rng.random() < 0.4 else 0.0
    up, lo = my - o / 2, my + o / 2
    cy_ = my - smile
    p[48:60, :2] = [(-mw, cy_), (-0.55 * mw, up - ut * 0.8 - 0.3 * smile), (-0.2 * mw, up - ut * 1.2),
                    (0, up - ut * 0.9), (0.2 * mw, up - ut * 1.2), (0.55 * mw, up - ut * 0.8 - 0.3 * smile),
                    (mw, cy_), (0.55 * mw, lo + lt * 0.9 - 0.3 * smile), (0.25 * mw, lo + lt * 1.1),
                    (0, lo + lt * 1.15), (-0.25 * mw, lo + lt * 1.1), (-0.55 * mw, lo + lt * 0.9 - 0.3 * smile)]
    p[60:68, :2] = [(-0.85 * mw, my - 0.8 * smile), (-0.4 * mw, up - 0.25 * smile), (0, up),
                    (0.4 * mw, up - 0.25 * smile), (0.85 * mw, my - 0.8 * smile),
                    (0.4 * mw, lo - 0.25 * smile), (0, lo), (-0.4 * mw, lo - 0.25 * smile)]
    p[48:68, 2] = 0.3
    p[:, :2] += rng.normal(0.0, 0.012, size=(NUM_POINTS, 2))  # nobody is symmetric
    # skull: from the right temple (where the jaw ends) over the forehead to the left one
    fh = u(0.95, 1.25)
    ts = np.pi * (1 + np.arange(1, 16) / 16)
    skull = np.stack([-a * np.cos(ts), y0 + fh * a * np.sin(ts), 0.5 * np.abs(np.sin(ts)) - 0.45], 1)
    return p, skull, {"eye_h": eh, "open": o, "y0": y0, "forehead": fh, "a": a}


def _project(pts: np.ndarray, rot: np.ndarray, scale: float, centre: np.ndarray) -> np.ndarray:
    return (pts @ rot.T)[:, :2] * scale + centre


def _colour(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.uniform(lo, hi, 3) * 255)  # type: ignore[return-value]


def render_face(rng: np.random.Generator, size: int = 64, occlusion: float = 0.25
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(image (size, size, 3) uint8, landmarks (68, 2) float32)`` of one random face."""
    from PIL import Image, ImageDraw

    u = rng.uniform
    ss = SUPERSAMPLE
    big = size * ss
    # ---- background: a gradient plus low-frequency noise, drawn at 8x8 and upsampled (fast)
    g = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    grad = rng.normal(0, 0.35, 2).astype(np.float32)
    bg = (rng.uniform(0, 1, 3).astype(np.float32) + (grad[0] * g[None, :] + grad[1] * g[:, None])[..., None]
          + 0.25 * rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32))
    img = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8), "RGB").resize(
        (big, big), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * big
        w, h = rng.uniform(0.1, 0.6, 2) * big
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=_colour(rng))

    # ---- geometry
    pts3, skull3, facts = face_template(rng)
    rot = _rot(math.radians(u(-40, 40)), math.radians(u(-20, 20)), math.radians(u(-25, 25)))
    scale = size * u(0.24, 0.34)
    centre = np.array([size / 2, size * 0.47]) + rng.uniform(-0.08, 0.08, 2) * size
    lm = _project(pts3, rot, scale, centre)  # edge-convention coordinates at the output size
    skull = _project(skull3, rot, scale, centre)

    def P(xy: np.ndarray) -> list[float]:  # output edge coords -> PIL's pixel grid
        return (xy * ss - 0.5).ravel().tolist()

    skin = np.array(_colour(rng, 0.25, 0.95))
    hair = _colour(rng, 0.0, 0.6)
    # hair behind the head
    if rng.random() < 0.8:
        outline = np.concatenate([lm[:17], skull])
        c = outline.mean(0)
        draw.polygon(P(c + (outline - c) * u(1.05, 1.2)), fill=hair)
    draw.polygon(P(np.concatenate([lm[:17], skull])), fill=tuple(int(v) for v in skin))
    # fringe: the top part of the skull in hair colour
    if rng.random() < 0.7:
        cut = u(0.25, 0.7)
        k = max(2, int(round(len(skull) * cut / 2)))
        mid = (len(skull) - 1) // 2  # the top of the head: a cap cut off by a chord
        fringe = skull[mid - k: mid + k + 1]
        draw.polygon(P(fringe), fill=hair)
    dark = tuple(int(v) for v in skin * u(0.2, 0.5))
    # eyes
    sclera = _colour(rng, 0.8, 1.0)
    iris = _colour(rng, 0.0, 0.5)
    gaze = rng.uniform(-0.3, 0.3, 2)
    for base in (36, 42):
        eye = lm[base:base + 6]
        draw.polygon(P(eye), fill=sclera)
        cen = eye.mean(0)
        half_w = np.linalg.norm(eye[3] - eye[0]) / 2
        half_h = max(np.linalg.norm(eye[1] - eye[5]), np.linalg.norm(eye[2] - eye[4])) / 2
        r = min(0.9 * half_h, 0.5 * half_w)
        cc = (cen + gaze * half_w * 0.4) * ss - 0.5
        if r > 0.2:
            draw.ellipse([cc[0] - r * ss, cc[1] - r * ss, cc[0] + r * ss, cc[1] + r * ss], fill=iris)
        draw.line(P(np.concatenate([eye, eye[:1]])), fill=dark, width=max(1, int(round(0.6 * ss))))
    # brows
    bw = max(1, int(round(scale * u(0.05, 0.1) * ss)))
    for base in (17, 22):
        draw.line(P(lm[base:base + 5]), fill=hair, width=bw, joint="curve")
    # nose
    shade = tuple(int(v) for v in skin * u(0.6, 0.85))
    draw.line(P(lm[27:31]), fill=shade, width=max(1, int(round(0.5 * ss))))
    draw.line(P(lm[31:36]), fill=dark, width=max(1, int(round(0.8 * ss))), joint="curve")
    # mouth
    lip = tuple(int(v) for v in np.clip(skin * np.array([1.0, 0.55, 0.55]) * u(0.6, 1.0), 0, 255))
    draw.polygon(P(lm[48:60]), fill=lip)
    if facts["open"] > 0:
        draw.polygon(P(lm[60:68]), fill=_colour(rng, 0.0, 0.25) if rng.random() < 0.7 else _colour(rng, 0.8, 1))
    else:
        draw.line(P(lm[[60, 61, 62, 63, 64]]), fill=dark, width=max(1, int(round(0.5 * ss))))
    # glasses
    if rng.random() < 0.15:
        frame = _colour(rng, 0.0, 0.4)
        for base in (36, 42):
            cen = lm[base:base + 6].mean(0) * ss - 0.5
            r = np.linalg.norm(lm[base + 3] - lm[base]) * 0.8 * ss
            draw.ellipse([cen[0] - r, cen[1] - 0.8 * r, cen[0] + r, cen[1] + 0.8 * r], outline=frame,
                         width=max(1, ss))
        draw.line(P(np.stack([lm[39], lm[42]])), fill=frame, width=max(1, ss))
    # occluder
    if rng.random() < occlusion:
        at = lm[rng.integers(0, NUM_POINTS)] * ss
        w, h = rng.uniform(0.3, 0.8, 2) * scale * ss
        box = [at[0] - w / 2, at[1] - h / 2, at[0] + w / 2, at[1] + h / 2]
        shape = rng.integers(0, 3)
        fill = _colour(rng)
        if shape == 0:
            draw.rectangle(box, fill=fill)
        elif shape == 1:
            draw.ellipse(box, fill=fill)
        else:
            ang = np.sort(rng.uniform(0, 2 * np.pi, 5))
            poly = [(at[0] + w / 2 * math.cos(t), at[1] + h / 2 * math.sin(t)) for t in ang]
            draw.polygon(poly, fill=fill)

    # ---- reduce (anti-aliasing), then lighting, contrast and noise
    img = img.reduce(ss)
    arr = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    g = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    light = rng.normal(0, 0.6, 2).astype(np.float32)
    contrast, shift = np.float32(u(0.6, 1.3)), np.float32(u(-0.15, 0.15))
    field = (1.0 + light[0] * g[None, :] + light[1] * g[:, None]) * contrast
    arr = arr * field[..., None] + (0.5 - 0.5 * contrast + shift)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(u(0.0, 0.06))
    out = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out, lm.astype(np.float32)


class ProceduralFaces(Dataset):
    """``n`` procedural faces of one split: sample ``i`` is ``{"image": float tensor (3, size,
    size) in [0, 1], "keypoints": (68, 2)}``, a pure function of ``(seed, split, i)``."""

    def __init__(self, n: int, seed: int = 0, size: int = 64, split: str = "train",
                 occlusion: float = 0.25) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        self.n, self.seed, self.size, self.split = int(n), int(seed), int(size), split
        self.occlusion = float(occlusion)

    def __len__(self) -> int:
        return self.n

    def face_id(self, i: int) -> int:
        return SPLIT_OFFSETS[self.split] + int(i)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.face_id(i)])
        img, kp = render_face(rng, self.size, self.occlusion)
        return {"image": torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0),
                "keypoints": torch.from_numpy(kp)}
