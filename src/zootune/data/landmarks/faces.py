"""Procedural faces with known landmarks: an offline stand-in for 300W (68-point scheme).

No facial-landmark data set can be downloaded on the development machines, so the demo, the
tests and the benchmark use drawn faces whose 68 landmarks follow the iBUG/300-W markup exactly
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67; :mod:`.schemes`), so flip pairs
and the inter-ocular normalisation are the real scheme's.

What varies from face to face:

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

**Determinism.** Every random number of a face is a counter-based hash (splitmix64) of
``(seed, face id, slot)``: slot ``k`` is always the same quantity of the face (the jaw width,
the hair colour, ...), drawn whether it is used or not. So face ``i`` is a pure function of
``(seed, split, i)``, whatever else is rendered, in any order, and the random numbers of a whole
batch are drawn at once. Faces are rendered in aligned blocks of :data:`BLOCK` ids (face ``i``
always with ids ``BLOCK * (i // BLOCK) ...``), so even the last bit of a vectorised float
operation cannot depend on which other faces were asked for.

**Speed** (batched; no per-pixel Python): the random numbers, the 3-D templates, the pose,
projection, every colour, width and polygon of a block are computed with numpy on the whole
block; the background (gradient + low-frequency noise), the lighting, contrast and sensor noise
are vectorised over the block as well. What stays per face is ~20 calls into PIL's C scanline
rasteriser (polygons, ellipses, thick polylines) on a transparent RGBA canvas at twice the
resolution, box-reduced (anti-aliasing; the reduced canvas is premultiplied colour + coverage)
and composited onto the vectorised background. Scanline filling touches each covered pixel once,
which a brute-force vectorised point-in-polygon test (every pixel x every edge) cannot beat on a
CPU. Throughput: ``python benchmarks/landmarks_faces_speed.py`` (numbers in docs/landmarks.md).

Coordinates use the pixel-edge convention of :mod:`.transforms` (pixel ``j`` spans ``[j, j+1)``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_POINTS = 68
SUPERSAMPLE = 2
#: faces are rendered in aligned blocks of this many ids (see the module docstring)
BLOCK = 64
#: face ids of the validation and test splits start here (disjoint from training ids)
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
#: random numbers per face (slots; :class:`_Draws` checks that no more are used)
SLOTS = 640

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with good avalanche), vectorised."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def face_uniforms(seed: int, face_ids: Sequence[int] | np.ndarray, slots: int = SLOTS) -> np.ndarray:
    """``(len(face_ids), slots)`` float64 uniforms in [0, 1): entry ``[j, k]`` is a hash of
    ``(seed, face_ids[j], k)`` alone."""
    ids = np.asarray(face_ids, dtype=np.int64).astype(np.uint64)
    s = np.asarray([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _mix64(_mix64(s * _GOLDEN + np.uint64(0x632BE59BD9B4E019)) ^ _mix64(ids + np.uint64(1)))
        ctr = (np.arange(1, slots + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix64(key[:, None] + ctr)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Draws:
    """The slots of a batch of faces, handed out column by column in a fixed order."""

    def __init__(self, u: np.ndarray) -> None:
        self.u, self.k = u, 0

    def take(self, n: int | tuple[int, ...] | None = None) -> np.ndarray:
        shape = () if n is None else ((n,) if isinstance(n, int) else tuple(n))
        m = int(np.prod(shape)) if shape else 1
        if self.k + m > self.u.shape[1]:
            raise RuntimeError(f"procedural faces need more than {self.u.shape[1]} random slots")
        out = self.u[:, self.k:self.k + m]
        self.k += m
        return out[:, 0] if not shape else out.reshape((-1,) + shape)

    def uniform(self, lo: float, hi: float, n: int | tuple[int, ...] | None = None) -> np.ndarray:
        return lo + (hi - lo) * self.take(n)

    def normal(self, std: float, n: int | tuple[int, ...] | None = None) -> np.ndarray:
        u1, u2 = self.take(n), self.take(n)  # Box-Muller
        return std * np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)

    def chance(self, p: float) -> np.ndarray:
        return self.take() < p


def face_templates(d: _Draws) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(landmarks (B, 68, 3), skull outline (B, 15, 3), facts)`` of a batch of random faces in
    their own frame (x right, y down, z towards the viewer; the jaw's half-width is about 1)."""
    u = d.uniform
    B = d.u.shape[0]
    p = np.zeros((B, NUM_POINTS, 3))
    C = lambda v: np.asarray(v, dtype=np.float64)[:, None]  # noqa: E731  (B,) -> (B, 1)
    # jaw 0..16: the lower half of a super-ellipse from the left temple to the right one
    a, b, q = u(0.85, 1.05), u(1.0, 1.3), u(0.65, 1.0)
    y0 = -0.05
    t = np.pi * np.arange(17) / 16
    c, s = np.cos(t), np.sin(t)
    p[:, :17, 0] = -C(a) * np.sign(c) * np.abs(c)[None, :] ** C(q)
    p[:, :17, 1] = y0 + C(b) * (s ** 0.9)[None, :]
    p[:, :17, 2] = 0.55 * s - 0.45
    # eyes 36..47 (36 outer, 37-38 upper, 39 inner, 40-41 lower; 42 inner ... 45 outer)
    ex, ey, ew = u(0.36, 0.5), u(-0.36, -0.2), u(0.14, 0.2)
    openness = u(0.25, 0.55) * np.where(d.chance(0.1), 0.15, 1.0)
    eh = ew * openness
    ys = np.stack([ey, ey - eh, ey - eh, ey, ey + 0.8 * eh, ey + 0.8 * eh], 1)
    for side, base in ((-1, 36), (1, 42)):
        cx = side * ex
        outer, inner = cx + side * ew, cx - side * ew
        first, fourth = (outer, inner) if side < 0 else (inner, outer)
        p[:, base:base + 6, 0] = np.stack([first, cx - ew / 3, cx + ew / 3, fourth, cx + ew / 3,
                                           cx - ew / 3], 1)
        p[:, base:base + 6, 1] = ys
        p[:, base:base + 6, 2] = 0.22
    # brows 17..26 (left: outer -> inner; right: inner -> outer)
    raise_ = np.where(d.chance(0.3), u(0.0, 0.08), 0.0)
    by, arch = ey - u(0.17, 0.28) - raise_, u(0.02, 0.1)
    v = np.linspace(0, 1, 5)[None, :]
    lx = C(-ex - ew * 1.35) + v * C(ew * 2.45)
    curve = C(by) - C(arch) * np.sin(np.pi * v)
    p[:, 17:22, 0], p[:, 17:22, 1] = lx, curve + C(u(-0.04, 0.04)) * v
    p[:, 22:27, 0], p[:, 22:27, 1] = -lx[:, ::-1], curve[:, ::-1] + C(u(-0.04, 0.04)) * v
    p[:, 17:27, 2] = 0.3
    # nose 27..35: bridge down to the tip, then nostrils left to right
    ny, nw, nl = u(0.18, 0.34), u(0.14, 0.24), u(0.15, 0.35)
    w4 = np.linspace(0, 1, 4)[None, :]
    p[:, 27:31, 1] = C(ey + 0.02) + w4 * C(ny - ey - 0.02)
    p[:, 27:31, 2] = 0.3 + np.linspace(0.05, 1.0, 4)[None, :] * C(nl)
    p[:, 31:36, 0] = np.array([-1, -0.5, 0, 0.5, 1])[None, :] * C(nw)
    p[:, 31:36, 1] = C(ny + 0.08) + np.array([0, 0.02, 0.035, 0.02, 0])[None, :]
    p[:, 31:36, 2] = 0.35 + 0.1 * np.array([0, 0.5, 1, 0.5, 0])
    # mouth 48..67
    my, mw = ny + u(0.25, 0.38), u(0.28, 0.44)
    sm = u(-0.05, 0.1)
    ut, lt = u(0.04, 0.09), u(0.05, 0.11)
    o = np.where(d.chance(0.4), u(0.02, 0.22), 0.0)
    up, lo = my - o / 2, my + o / 2
    cy_ = my - sm
    p[:, 48:60, 0] = np.array([-1, -0.55, -0.2, 0, 0.2, 0.55, 1, 0.55, 0.25, 0, -0.25, -0.55])[None, :] * C(mw)
    p[:, 48:60, 1] = np.stack([cy_, up - ut * 0.8 - 0.3 * sm, up - ut * 1.2, up - ut * 0.9, up - ut * 1.2,
                               up - ut * 0.8 - 0.3 * sm, cy_, lo + lt * 0.9 - 0.3 * sm, lo + lt * 1.1,
                               lo + lt * 1.15, lo + lt * 1.1, lo + lt * 0.9 - 0.3 * sm], 1)
    p[:, 60:68, 0] = np.array([-0.85, -0.4, 0, 0.4, 0.85, 0.4, 0, -0.4])[None, :] * C(mw)
    p[:, 60:68, 1] = np.stack([my - 0.8 * sm, up - 0.25 * sm, up, up - 0.25 * sm, my - 0.8 * sm,
                               lo - 0.25 * sm, lo, lo - 0.25 * sm], 1)
    p[:, 48:68, 2] = 0.3
    p[:, :, :2] += d.normal(0.012, (NUM_POINTS, 2))  # nobody is symmetric
    # skull: from the right temple (where the jaw ends) over the forehead to the left one
    fh = u(0.95, 1.25)
    ts = np.pi * (1 + np.arange(1, 16) / 16)[None, :]
    skull = np.stack([-C(a) * np.cos(ts), y0 + C(fh * a) * np.sin(ts),
                      np.broadcast_to(0.5 * np.abs(np.sin(ts)) - 0.45, (B, 15))], 2)
    return p, skull, {"eye_h": eh, "open": o, "forehead": fh, "a": a}


def _project(pts: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, scale: np.ndarray,
             centre: np.ndarray) -> np.ndarray:
    """Rotate ``(B, N, 3)`` by ``Rz(roll) Rx(pitch) Ry(yaw)`` and project orthographically
    (written out elementwise: no batched matrix product whose rounding could depend on B)."""
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll),
                              np.sin(roll))
    r00, r01, r02 = cr * cy - sr * sp * sy, -sr * cp, cr * sy + sr * sp * cy
    r10, r11, r12 = sr * cy + cr * sp * sy, cr * cp, sr * sy - cr * sp * cy
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    C = lambda v: v[:, None]  # noqa: E731
    X = C(r00) * x + C(r01) * y + C(r02) * z
    Y = C(r10) * x + C(r11) * y + C(r12) * z
    return np.stack([X * C(scale) + C(centre[:, 0]), Y * C(scale) + C(centre[:, 1])], -1)


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(n: int) -> np.ndarray:
    """Fixed standard normals (float32), at least 2^20 and 4 images of ``n`` values (the length
    depends on ``n`` only); a face's sensor noise is a window of them at a random offset (one
    slice per face instead of a generator per face)."""
    length = max(1 << 20, 4 * n)
    if length not in _NOISE_BANKS:
        _NOISE_BANKS[length] = np.random.default_rng(20210601).standard_normal(length, dtype=np.float32)
    return _NOISE_BANKS[length]


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of bilinear resampling (pixel centres aligned, edges clamped)."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(w, (np.arange(n_out), i0), (1 - (x - i0)).astype(np.float32))
    np.add.at(w, (np.arange(n_out), i1), (x - i0).astype(np.float32))
    return w


def _ints(x: np.ndarray) -> list:
    return np.asarray(x).astype(np.int64).tolist()


def _render_block(seed: int, face_ids: np.ndarray, size: int, occlusion: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(B, 3, size, size)`` uint8 and landmarks ``(B, 68, 2)`` float32 of ``face_ids``."""
    from PIL import Image, ImageDraw

    B = len(face_ids)
    d = _Draws(face_uniforms(seed, face_ids))
    u = d.uniform
    ss = SUPERSAMPLE
    big = size * ss
    col = lambda lo, hi: (u(lo, hi, 3) * 255).astype(np.int64)  # noqa: E731  (B, 3) ints
    # ---- background: a gradient plus low-frequency noise at 8x8, upsampled (vectorised)
    g8 = np.linspace(-0.5, 0.5, 8)
    grad = d.normal(0.35, 2)
    bg = (u(0, 1, 3)[:, None, None, :] + (grad[:, 0, None, None] * g8[None, None, :]
                                          + grad[:, 1, None, None] * g8[None, :, None])[..., None]
          + 0.25 * u(-1, 1, (8, 8, 3)))
    bg = np.ascontiguousarray(np.clip(bg, 0, 1).astype(np.float32).transpose(0, 3, 1, 2))  # (B, 3, 8, 8)
    up = _bilinear_matrix(8, size)  # (size, 8): separable bilinear upsampling as two products
    bg = np.matmul(np.matmul(up, bg), up.T)  # (B, 3, size, size)
    n_shapes = np.minimum((d.take() * 5).astype(np.int64), 4)
    sh_xy = d.uniform(-0.2, 1.0, (4, 2)) * big
    sh_wh = d.uniform(0.1, 0.6, (4, 2)) * big
    sh_ell = d.take(4) < 0.5
    sh_col = (d.take((4, 3)) * 255).astype(np.int64)
    sh_box = np.concatenate([sh_xy, sh_xy + sh_wh], -1)  # (B, 4, 4)

    # ---- geometry
    pts3, skull3, facts = face_templates(d)
    rad = np.pi / 180
    yaw, pitch, roll = u(-40, 40) * rad, u(-20, 20) * rad, u(-25, 25) * rad
    scale = size * u(0.24, 0.34)
    centre = np.array([size / 2, size * 0.47])[None, :] + u(-0.08, 0.08, 2) * size
    lm = _project(pts3, yaw, pitch, roll, scale, centre)  # (B, 68, 2) edge coords at output size
    skull = _project(skull3, yaw, pitch, roll, scale, centre)
    P = lambda xy: xy * ss - 0.5  # noqa: E731  output edge coords -> PIL's pixel grid of the canvas

    skin_f = u(0.25, 0.95, 3) * 255
    skin, hair = skin_f.astype(np.int64), col(0.0, 0.6)
    outline = np.concatenate([lm[:, :17], skull], 1)  # (B, 32, 2)
    oc = outline.mean(1, keepdims=True)
    has_hair = d.chance(0.8)
    hair_poly = P(oc + (outline - oc) * u(1.05, 1.2)[:, None, None])
    has_fringe = d.chance(0.7)
    k_fringe = np.maximum(2, np.round(15 * u(0.25, 0.7) / 2).astype(np.int64))
    dark = (skin_f * u(0.2, 0.5)[:, None]).astype(np.int64)
    sclera, iris = col(0.8, 1.0), col(0.0, 0.5)
    gaze = u(-0.3, 0.3, 2)
    eyes = np.stack([lm[:, 36:42], lm[:, 42:48]], 1)  # (B, 2, 6, 2)
    cen = eyes.mean(2)
    half_w = np.linalg.norm(eyes[:, :, 3] - eyes[:, :, 0], axis=-1) / 2
    half_h = np.maximum(np.linalg.norm(eyes[:, :, 1] - eyes[:, :, 5], axis=-1),
                        np.linalg.norm(eyes[:, :, 2] - eyes[:, :, 4], axis=-1)) / 2
    r_iris = np.minimum(0.9 * half_h, 0.5 * half_w)
    cc = (cen + gaze[:, None, :] * half_w[..., None] * 0.4) * ss - 0.5
    iris_box = np.concatenate([cc - (r_iris * ss)[..., None], cc + (r_iris * ss)[..., None]], -1)
    brow_w = np.maximum(1, np.round(scale * u(0.05, 0.1) * ss)).astype(np.int64)
    shade = (skin_f * u(0.6, 0.85)[:, None]).astype(np.int64)
    lip = np.clip(skin_f * np.array([1.0, 0.55, 0.55])[None, :] * u(0.6, 1.0)[:, None], 0, 255).astype(np.int64)
    mouth_dark = d.chance(0.7)
    mouth_col = np.where(mouth_dark[:, None], col(0.0, 0.25), col(0.8, 1.0))
    has_glasses = d.chance(0.15)
    frame = col(0.0, 0.4)
    r_gl = np.linalg.norm(lm[:, [39, 45]] - lm[:, [36, 42]], axis=-1) * 0.8 * ss  # (B, 2)
    gc = cen * ss - 0.5
    glass_box = np.concatenate([gc - np.stack([r_gl, 0.8 * r_gl], -1), gc + np.stack([r_gl, 0.8 * r_gl], -1)], -1)
    occluded = d.take() < occlusion
    at = lm[np.arange(B), np.minimum((d.take() * NUM_POINTS).astype(np.int64), NUM_POINTS - 1)] * ss
    ow, oh = (u(0.3, 0.8, 2) * (scale * ss)[:, None]).T
    occ_box = np.stack([at[:, 0] - ow / 2, at[:, 1] - oh / 2, at[:, 0] + ow / 2, at[:, 1] + oh / 2], 1)
    occ_shape = np.minimum((d.take() * 3).astype(np.int64), 2)
    occ_col = col(0.0, 1.0)
    ang = np.sort(d.uniform(0, 2 * np.pi, 5), axis=1)
    occ_poly = np.stack([at[:, 0, None] + ow[:, None] / 2 * np.cos(ang),
                         at[:, 1, None] + oh[:, None] / 2 * np.sin(ang)], -1)
    # photometric
    g = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    light = d.normal(0.6, 2).astype(np.float32)
    contrast = u(0.6, 1.3).astype(np.float32)
    shift = u(-0.15, 0.15).astype(np.float32)
    noise_amp = u(0.0, 0.06).astype(np.float32)
    bank = _noise_bank(size * size * 3)
    noise_off = (d.take() * (len(bank) - size * size * 3)).astype(np.int64)

    # ---- everything PIL needs, as plain lists (one conversion per block)
    LM = P(lm).reshape(B, -1).tolist()
    HAIR = hair_poly.reshape(B, -1).tolist()
    FACE = P(outline).reshape(B, -1).tolist()
    SKULL = P(skull).reshape(B, -1).tolist()
    A = lambda x: [tuple(r) + (255,) for r in _ints(x)]  # noqa: E731  RGBA fills
    c_hair, c_skin, c_dark, c_scl, c_iris, c_shade, c_lip, c_mouth, c_frame, c_occ = (
        A(hair), A(skin), A(dark), A(sclera), A(iris), A(shade), A(lip), A(mouth_col), A(frame), A(occ_col))
    sh_cols = [[tuple(r) + (255,) for r in blk] for blk in _ints(sh_col)]
    flags = np.stack([has_hair, has_fringe, facts["open"] > 0, has_glasses, occluded], 1).tolist()
    n_sh, sh_e, sh_b = n_shapes.tolist(), sh_ell.tolist(), sh_box.tolist()
    kf, bw, irr, irb = k_fringe.tolist(), brow_w.tolist(), r_iris.tolist(), iris_box.tolist()
    glb, occb, occs, occp = glass_box.tolist(), occ_box.tolist(), occ_shape.tolist(), occ_poly.reshape(B, -1).tolist()
    w_eye, w_bridge, w_nostril, w_mouth, w_frame = (max(1, int(round(0.6 * ss))), max(1, int(round(0.5 * ss))),
                                                    max(1, int(round(0.8 * ss))), max(1, int(round(0.5 * ss))),
                                                    max(1, ss))
    mid = (skull.shape[1] - 1) // 2  # the top of the head: the fringe is a cap cut off by a chord

    layers = np.empty((B, 4, size, size), dtype=np.uint8)
    clear = (0, 0, 0, 0)
    for j in range(B):
        canvas = Image.new("RGBa", (big, big), clear)  # premultiplied: reduce averages it as is
        dr = ImageDraw.Draw(canvas)
        L = LM[j]
        for k in range(n_sh[j]):
            (dr.ellipse if sh_e[j][k] else dr.rectangle)(sh_b[j][k], fill=sh_cols[j][k])
        hh, fr, mo, gl, oc_ = flags[j]
        if hh:
            dr.polygon(HAIR[j], fill=c_hair[j])
        dr.polygon(FACE[j], fill=c_skin[j])
        if fr:
            dr.polygon(SKULL[j][2 * (mid - kf[j]): 2 * (mid + kf[j] + 1)], fill=c_hair[j])
        for e, base in enumerate((36, 42)):
            eye = L[2 * base: 2 * base + 12]
            dr.polygon(eye, fill=c_scl[j])
            if irr[j][e] > 0.2:
                dr.ellipse(irb[j][e], fill=c_iris[j])
            dr.line(eye + eye[:2], fill=c_dark[j], width=w_eye)
        dr.line(L[34:44], fill=c_hair[j], width=bw[j], joint="curve")
        dr.line(L[44:54], fill=c_hair[j], width=bw[j], joint="curve")
        dr.line(L[54:62], fill=c_shade[j], width=w_bridge)
        dr.line(L[62:72], fill=c_dark[j], width=w_nostril, joint="curve")
        dr.polygon(L[96:120], fill=c_lip[j])
        if mo:
            dr.polygon(L[120:136], fill=c_mouth[j])
        else:
            dr.line(L[120:130], fill=c_dark[j], width=w_mouth)
        if gl:
            dr.ellipse(glb[j][0], outline=c_frame[j], width=w_frame)
            dr.ellipse(glb[j][1], outline=c_frame[j], width=w_frame)
            dr.line(L[78:80] + L[84:86], fill=c_frame[j], width=w_frame)
        if oc_:
            s = occs[j]
            if s == 0:
                dr.rectangle(occb[j], fill=c_occ[j])
            elif s == 1:
                dr.ellipse(occb[j], fill=c_occ[j])
            else:
                dr.polygon(occp[j], fill=c_occ[j])
        layers[j] = np.asarray(canvas.reduce(ss)).transpose(2, 0, 1)

    # ---- composite onto the background, lighting, contrast and noise: planar (B, C, H, W), so
    # every operation runs on contiguous rows. Canvas pixels are transparent black or opaque, and
    # the canvas is premultiplied ("RGBa"), so the box average is premultiplied colour + coverage.
    lay = layers.astype(np.float32) * np.float32(1 / 255)
    arr = lay[:, :3] + bg * (1.0 - lay[:, 3:4])
    field = (1.0 + light[:, 0, None, None] * g[None, None, :] + light[:, 1, None, None] * g[None, :, None]) \
        * contrast[:, None, None]
    arr *= field[:, None]
    arr += (0.5 - 0.5 * contrast + shift)[:, None, None, None]
    n = size * size * 3
    noise = np.stack([bank[o:o + n] for o in noise_off.tolist()]).reshape(B, 3, size, size)
    noise *= noise_amp[:, None, None, None]
    arr += noise
    np.clip(arr, 0, 1, out=arr)
    arr *= 255
    arr += 0.5
    out = arr.astype(np.uint8)
    return out, lm.astype(np.float32)


def render_faces(seed: int, face_ids: Sequence[int] | np.ndarray, size: int = 64, occlusion: float = 0.25
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, size, size) uint8, landmarks (N, 68, 2) float32)`` of the given face ids
    (split offsets included, :data:`SPLIT_OFFSETS`); each rendered within its aligned block."""
    ids = np.asarray(face_ids, dtype=np.int64).reshape(-1)
    imgs = np.empty((len(ids), 3, size, size), dtype=np.uint8)
    kps = np.empty((len(ids), NUM_POINTS, 2), dtype=np.float32)
    blocks = ids // BLOCK
    for blk in np.unique(blocks):
        sel = np.nonzero(blocks == blk)[0]
        im, kp = _render_block(seed, np.arange(blk * BLOCK, (blk + 1) * BLOCK), size, occlusion)
        imgs[sel], kps[sel] = im[ids[sel] - blk * BLOCK], kp[ids[sel] - blk * BLOCK]
    return imgs, kps


def render_face(seed: int, face_id: int, size: int = 64, occlusion: float = 0.25
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(image (3, size, size) uint8, landmarks (68, 2) float32)`` of one face."""
    im, kp = render_faces(seed, [face_id], size, occlusion)
    return im[0], kp[0]


class ProceduralFaces(Dataset):
    """``n`` procedural faces of one split: sample ``i`` is ``{"image": float tensor (3, size,
    size) in [0, 1], "keypoints": (68, 2)}``, a pure function of ``(seed, split, i)``.

    Faces are rendered a block at a time (:data:`BLOCK` ids) and kept (uint8) up to
    ``cache_mb`` megabytes, least recently used dropped first; ``cache_mb=0`` keeps one block."""

    def __init__(self, n: int, seed: int = 0, size: int = 64, split: str = "train",
                 occlusion: float = 0.25, cache_mb: float = 512) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        self.n, self.seed, self.size, self.split = int(n), int(seed), int(size), split
        self.occlusion = float(occlusion)
        self.cache_mb = float(cache_mb)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def face_id(self, i: int) -> int:
        return SPLIT_OFFSETS[self.split] + int(i)

    def _block(self, blk: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(blk)
        if hit is not None:
            self._cache.move_to_end(blk)
            return hit
        ids = np.arange(blk * BLOCK, (blk + 1) * BLOCK)
        hit = _render_block(self.seed, ids, self.size, self.occlusion)
        self._cache[blk] = hit
        per_block = hit[0].nbytes + hit[1].nbytes
        keep = max(1, int(self.cache_mb * 2 ** 20 // per_block))
        while len(self._cache) > keep:
            self._cache.popitem(last=False)
        return hit

    def render(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Images (uint8, ``(N, 3, size, size)``) and keypoints of several samples at once."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices out of range 0..{self.n - 1}")
        return render_faces(self.seed, idx + SPLIT_OFFSETS[self.split], self.size, self.occlusion)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < self.n:
            raise IndexError(i)
        fid = self.face_id(i)
        imgs, kps = self._block(fid // BLOCK)
        j = fid % BLOCK
        return {"image": torch.from_numpy(imgs[j]).float().div_(255.0),
                "keypoints": torch.from_numpy(kps[j].copy())}
