"""A paper-like zoo at CPU scale: ``python benchmarks/paper_zoo.py [--out DIR] [--smoke]``.

The paper's zoo (Zoo-Tuning §4.2) is five ResNet-50s: an ImageNet classifier, three models
fine-tuned from it for *other kinds* of task (Mask R-CNN detection, DeepLabV3 segmentation,
Keypoint R-CNN keypoints) and MoCo, trained from its own start by a self-supervised algorithm.
So four members are aligned (one shared start) and one is not. This script builds the same
shape of zoo with the demo's architecture (:class:`zootune.demo.model.MiniCNN`, 1x16x16 grey)
so the demo's target, configs and benchmarks apply to it:

==============  ==========  =========================================================  ==============
member          start       source task                                                its metric
==============  ==========  =========================================================  ==============
``base``        random      classify glyphs of every script (179 classes; the demo's)   accuracy
``script``      ``base``    classify Armenian letters (a script the base never saw)     accuracy
``dense``       ``base``    restore clean glyphs from noisy, partly masked ones          MSE / PSNR
                            (per-pixel regression, ``dense_regression`` task)
``keypoints``   ``base``    locate 5 keypoints (ink-box corners + centre) of a rotated,   NME (box)
                            scaled glyph in a cluttered scene with a distractor glyph
                            (heatmaps, the ``landmarks`` task)
``contrastive`` random      SimCLR (``contrastive`` method: two views, NT-Xent) on the   linear-probe
                            base's glyphs, labels used only by a detached linear probe   accuracy
==============  ==========  =========================================================  ==============

Every member is trained by the shared trainer (:func:`zootune.train.fit`), seeded (member ``k``:
``seed * 1000 + k``) and deterministic on CPU with one thread. Weights are float16 safetensors
of the MiniCNN state (``dense`` and ``keypoints`` keep the trunk only — their deconvolution
heads are not part of MiniCNN, as the paper's detection/segmentation trunks come without their
heads); every source metric is measured on weights rounded to float16, as stored. Fine-tuned
members start from the *stored* (float16) base, so a resumed build equals a one-shot build.

Resumable per member: a member whose file exists with the manifest's sha256 is skipped. The
manifest (``zoo.json``, written atomically after every member, the format of
``zootune.demo.zoo``) records the recipe, seeds, metrics (with a trivial reference for the dense
and keypoint tasks), the command, versions, machine and wall times. Load the result with
``zootune.demo.zoo.load_demo_zoo(None, DIR)`` or the ``paper-mini`` zoo preset (the shipped
build in ``src/zootune/demo/paper_zoo``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from zootune.data import DataSplits, TransformedDataset
from zootune.data.glyphs import base_bitmaps, distinct_chars, render_glyphs
from zootune.demo.data import ZOO_DOMAINS, TensorImages, domain_chars
from zootune.demo.model import RESOLUTION, MiniCNN

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "zootune" / "demo" / "paper_zoo"
MANIFEST = "zoo.json"
THREADS = 1
MEMBERS = ("base", "script", "dense", "keypoints", "contrastive")

#: Armenian capitals and small letters (look-alikes merged): a script no other member sees.
ARMENIAN = "".join(chr(c) for c in range(0x0531, 0x0557)) + "".join(chr(c) for c in range(0x0561, 0x0587))

#: Per member: budget (steps, batch, lr, warm-up) and data size (``n_train`` per class for the
#: classification members; scenes / images for the others).
RECIPE: dict[str, dict[str, Any]] = {
    "base": {"steps": 2000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "n_train": 150},
    "script": {"steps": 2000, "batch_size": 64, "lr": 3e-3, "warmup": 25, "n_train": 200},
    "dense": {"steps": 2000, "batch_size": 64, "lr": 3e-3, "warmup": 25, "n_train": 60,
              "noise": [0.1, 0.35], "mask": 6},
    "keypoints": {"steps": 2000, "batch_size": 64, "lr": 3e-3, "warmup": 25, "n_train": 40000,
                  "n_eval": 2000, "sigma": 1.0},
    "contrastive": {"steps": 3000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "n_train": 150,
                    "temperature": 0.2, "projection_dim": 64, "strength": 1.0},
}
#: A smoke test of the script (seconds), not a zoo.
SMOKE = {k: {**v, "steps": 3, "batch_size": 8, "warmup": 0,
             "n_train": {"keypoints": 32}.get(k, 1), "n_eval": {"keypoints": 16}.get(k, 1)}
         for k, v in RECIPE.items()}


# ---- data -------------------------------------------------------------------------------------


def char_splits(chars: str, n_train: int, n_eval: int = 20, *, seed: int = 0) -> DataSplits:
    """Glyph classification over ``chars`` (as :func:`zootune.demo.data.glyph_splits`)."""
    tr = render_glyphs(chars, n_train, resolution=RESOLUTION, seed=seed)
    va = render_glyphs(chars, n_eval, resolution=RESOLUTION, seed=seed + 7_000_001)
    te = render_glyphs(chars, n_eval, resolution=RESOLUTION, seed=seed + 7_000_002)
    mk = lambda g: TransformedDataset(TensorImages(g.x, g.y))  # noqa: E731
    return DataSplits(train=mk(tr), val=mk(va), test=mk(te), classes=list(chars),
                      info={"name": "glyphs", "classes": len(chars), "seed": seed})


def corrupt(clean: torch.Tensor, g: torch.Generator, noise: tuple[float, float], mask: int) -> torch.Tensor:
    """Noisy, partly masked copies of ``clean`` (N, 1, H, W): Gaussian noise of a std drawn in
    ``noise`` and a ``mask`` x ``mask`` square set to 0; clamped to [0, 1]."""
    n, _, h, w = clean.shape
    sd = noise[0] + (noise[1] - noise[0]) * torch.rand(n, 1, 1, 1, generator=g)
    x = clean + sd * torch.randn(clean.shape, generator=g)
    y0 = (torch.rand(n, generator=g) * (h - mask + 1)).long().view(n, 1, 1)
    x0 = (torch.rand(n, generator=g) * (w - mask + 1)).long().view(n, 1, 1)
    yy, xx = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = (yy >= y0) & (yy < y0 + mask) & (xx >= x0) & (xx < x0 + mask)
    return x.masked_fill(box.unsqueeze(1), 0.0).clamp(0.0, 1.0)


class DenoiseSet:
    """``{"image": corrupted, "target": clean}``; the corruption of a training key
    ``(index, sample_seed)`` is drawn from that seed (fresh every epoch, still a pure function of
    the key); a plain index gets a fixed corruption (validation / test)."""

    def __init__(self, clean: torch.Tensor, noise: tuple[float, float], mask: int, seed: int) -> None:
        self.clean, self.noise, self.mask, self.seed = clean, tuple(noise), int(mask), int(seed)
        self.targets = np.zeros(len(clean), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, s = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), self.seed * 1_000_003 + int(key))
        g = torch.Generator().manual_seed(s)
        c = self.clean[i: i + 1]
        return {"image": corrupt(c, g, self.noise, self.mask)[0], "target": c[0]}


def dense_splits(rec: dict[str, Any], seed: int) -> DataSplits:
    chars = domain_chars(ZOO_DOMAINS["base"])
    n_eval = int(rec.get("n_eval", 5))
    parts = {}
    for k, (split, n) in enumerate([("train", rec["n_train"]), ("val", n_eval), ("test", n_eval)]):
        g = render_glyphs(chars, int(n), resolution=RESOLUTION, seed=seed + 7_000_000 * k)
        parts[split] = DenoiseSet(g.x, rec["noise"], rec["mask"], seed + 11 * k)
    return DataSplits(train=parts["train"], val=parts["val"], test=parts["test"], classes=[],
                      info={"name": "glyph_denoise", "train": len(parts["train"]),
                            "val": len(parts["val"]), "test": len(parts["test"])})


class PointSet:
    """``{"image": (1, H, W), "keypoints": (K, 2)}`` from tensors."""

    def __init__(self, images: torch.Tensor, points: torch.Tensor) -> None:
        self.images, self.points = images, points
        self.targets = np.zeros(len(images), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i = int(key[0]) if isinstance(key, tuple) else int(key)
        return {"image": self.images[i], "keypoints": self.points[i]}


def _place(maps: torch.Tensor, boxes: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor,
           centre: torch.Tensor, res: int) -> torch.Tensor:
    """Render bitmaps ``maps`` (N, B, B) so that bitmap point ``c + p`` (``c``: the ink-box
    centre of ``boxes``) lands at ``centre + scale * R(angle) p`` in a ``res`` x ``res`` scene."""
    n, b = maps.shape[0], maps.shape[-1]
    c = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    q = torch.arange(res, dtype=torch.float32) + 0.5
    qy, qx = torch.meshgrid(q, q, indexing="ij")
    d = torch.stack([qx, qy], -1).view(1, res, res, 2) - centre.view(n, 1, 1, 2)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    px = (cos * d[..., 0] + sin * d[..., 1]) / scale.view(n, 1, 1) + c[:, 0].view(n, 1, 1)
    py = (-sin * d[..., 0] + cos * d[..., 1]) / scale.view(n, 1, 1) + c[:, 1].view(n, 1, 1)
    grid = torch.stack([px / b * 2 - 1, py / b * 2 - 1], -1)
    return F.grid_sample(maps.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def keypoint_scenes(n: int, seed: int, res: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes ``(n, 1, res, res)`` and their 5 keypoints ``(n, 5, 2)`` (pixel-edge
    coordinates): a glyph of any script, rotated +-30 degrees and scaled to 6-14 px, placed so
    all its points are inside, over a smooth random background, with a smaller, dimmer
    distractor glyph; contrast jitter and noise. Points: the corners (top-left, top-right,
    bottom-right, bottom-left, in the glyph's own frame) of its ink box and the box centre."""
    chars = domain_chars(ZOO_DOMAINS["base"])
    maps, _ = base_bitmaps(chars, 2 * res)
    b = maps.shape[-1]
    ink = maps > 0.3
    rows, cols = ink.any(2), ink.any(1)
    ar = torch.arange(b)
    big = torch.tensor(float(b))
    boxes = torch.stack([torch.where(cols, ar, big).amin(1), torch.where(rows, ar, big).amin(1),
                         torch.where(cols, ar + 1, torch.tensor(0)).amax(1).float(),
                         torch.where(rows, ar + 1, torch.tensor(0)).amax(1).float()], -1).float()
    ok = (boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4)
    pool = torch.nonzero(ok).flatten()
    g = torch.Generator().manual_seed(int(seed))
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*(s or (n,)), generator=g)  # noqa: E731
    pick = pool[torch.randint(len(pool), (n,), generator=g)]
    bx = boxes[pick]
    half = torch.stack([(bx[:, 2] - bx[:, 0]) / 2, (bx[:, 3] - bx[:, 1]) / 2], -1)
    size = u(6.0, 14.0)
    scale = size / (2 * half.max(1).values)
    angle = torch.deg2rad(u(-30.0, 30.0))
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    p = corners.view(1, 5, 2) * half.view(n, 1, 2)
    cos, sin = torch.cos(angle).view(n, 1), torch.sin(angle).view(n, 1)
    rot = torch.stack([cos * p[..., 0] - sin * p[..., 1], sin * p[..., 0] + cos * p[..., 1]], -1)
    rot = rot * scale.view(n, 1, 1)
    ext = rot.abs().amax(1)  # (n, 2) half extents of the rotated box
    shrink = (7.0 / ext.amax(1)).clamp(max=1.0)
    rot, scale, ext = rot * shrink.view(n, 1, 1), scale * shrink, ext * shrink.view(n, 1)
    lo, hi = ext + 0.5, res - 0.5 - ext
    centre = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    points = rot + centre.view(n, 1, 2)
    glyph = _place(maps[pick], bx, scale, angle, centre, res)
    # distractor: another glyph, 3-6 px, dimmer, anywhere
    dpick = pool[torch.randint(len(pool), (n,), generator=g)]
    dbx = boxes[dpick]
    dhalf = torch.stack([(dbx[:, 2] - dbx[:, 0]) / 2, (dbx[:, 3] - dbx[:, 1]) / 2], -1).amax(1)
    dist = _place(maps[dpick], dbx, u(3.0, 6.0) / (2 * dhalf), torch.deg2rad(u(-180.0, 180.0)),
                  torch.rand(n, 2, generator=g) * res, res)
    bg = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=res, mode="bilinear",
                       align_corners=False) * u(0.0, 0.35).view(n, 1, 1, 1)
    x = torch.maximum(bg, dist * u(0.3, 0.6).view(n, 1, 1, 1))
    x = torch.maximum(x, glyph * u(0.7, 1.0).view(n, 1, 1, 1))
    x = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    return x, points


def keypoint_splits(rec: dict[str, Any], seed: int) -> DataSplits:
    n_eval = int(rec.get("n_eval", 2000))
    parts = {s: PointSet(*keypoint_scenes(int(n), seed + 7_000_000 * k))
             for k, (s, n) in enumerate([("train", rec["n_train"]), ("val", n_eval), ("test", n_eval)])}
    return DataSplits(train=parts["train"], val=parts["val"], test=parts["test"], classes=[],
                      info={"name": "glyph_keypoints", "train": len(parts["train"]),
                            "landmarks": {"num_points": 5, "scheme": "glyph_box5"}})


# ---- training ---------------------------------------------------------------------------------


def _config(rec: dict[str, Any], seed: int, method: dict[str, Any] | str = "finetune"):
    from zootune.config import build_config

    return build_config({
        "recipe": "adam", "method": method,
        "optim": {"name": "adam", "lr": rec["lr"], "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": rec["warmup"]},
        "train": {"steps": rec["steps"], "batch_size": rec["batch_size"], "eval_every": 0,
                  "log_every": 100, "checkpoint_every": 0, "seed": seed, "select": "last",
                  "tensorboard": False, "progress": sys.stderr.isatty(), "threads": THREADS},
    })


def _fit(model, task, data, cfg, method=None):
    from zootune.train import fit

    res = fit(model, task, data, cfg, out_dir=None, report=False, method=method)
    if res.interrupted:  # Ctrl-C / SIGTERM: stop, write nothing more
        raise KeyboardInterrupt
    return res.model


def _round_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """Round every floating tensor of ``model`` to float16 and back, in place (as stored)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def _metrics(model, task, data) -> dict[str, dict[str, float]]:
    from zootune.train import evaluate

    return {s: {k: float(v) for k, v in evaluate(model, task, getattr(data, s)).items()}
            for s in ("val", "test")}


def train_classifier(chars: str, rec: dict[str, Any], seed: int, start: MiniCNN | None):
    from zootune.tasks import build_task

    data = char_splits(chars, rec["n_train"], int(rec.get("n_eval", 20)), seed=seed)
    task = build_task({"name": "classification", "head": "head"}, data=data, seed=seed)
    if start is None:
        torch.manual_seed(seed)
        model = MiniCNN(len(chars))
        task.head_name = "head"
    else:
        model = task.prepare_zoo([copy.deepcopy(start)])[0]
    model = _round_fp16(_fit(model, task, data, _config(rec, seed)).cpu().eval())
    m = _metrics(model, task, data)
    return model, {"task": "classification", "classes": "".join(chars), "num_classes": len(chars),
                   "metric": "accuracy", "source_metric": m,
                   "source_accuracy": {s: m[s]["accuracy"] for s in m}}


def train_dense(rec: dict[str, Any], seed: int, start: MiniCNN):
    from zootune.tasks import build_task
    from zootune.train import evaluate

    data = dense_splits(rec, seed)
    task = build_task({"name": "dense_regression", "output_stride": 1, "deconv_channels": 64},
                      data=data, seed=seed)
    model = task.prepare_zoo([copy.deepcopy(start)])[0]
    model = _round_fp16(_fit(model, task, data, _config(rec, seed)).cpu().eval())

    class Identity(torch.nn.Module):  # reference: return the corrupted input itself
        def forward(self, x):
            return x

    ident = Identity()
    ident.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    ref = {s: {k: float(v) for k, v in evaluate(ident, task, getattr(data, s)).items()} for s in ("val", "test")}
    return model, {"task": "dense_regression (denoise + inpaint glyphs of every script)",
                   "metric": "mse", "source_metric": _metrics(model, task, data),
                   "reference": {"what": "the corrupted input itself", **ref},
                   "head": "none stored (trunk; task head heatmap_head not part of MiniCNN)"}


def train_keypoints(rec: dict[str, Any], seed: int, start: MiniCNN):
    from zootune.tasks import build_task
    from zootune.tasks.landmarks import normalized_mean_error

    data = keypoint_splits(rec, seed)
    task = build_task({"name": "landmarks", "norm": "box", "heatmap_stride": 1, "deconv_channels": 64,
                       "sigma": rec["sigma"], "report_images": 0}, data=data, seed=seed)
    model = task.prepare_zoo([copy.deepcopy(start)])[0]
    model = _round_fp16(_fit(model, task, data, _config(rec, seed)).cpu().eval())
    mean_pts = data.train.points.mean(0)
    ref = {s: float(normalized_mean_error(mean_pts.expand_as(getattr(data, s).points),
                                          getattr(data, s).points, "box").mean()) for s in ("val", "test")}
    return model, {"task": "landmarks (5 keypoints of a glyph in a cluttered scene, heatmaps)",
                   "metric": "nme", "source_metric": _metrics(model, task, data),
                   "reference": {"what": "the training mean of every keypoint", "nme": ref},
                   "head": "none stored (trunk; task head heatmap_head not part of MiniCNN)"}


def train_contrastive(rec: dict[str, Any], seed: int):
    from zootune.methods import build_method
    from zootune.tasks import build_task

    chars = domain_chars(ZOO_DOMAINS["base"])
    data = char_splits(chars, rec["n_train"], int(rec.get("n_eval", 20)), seed=seed)
    task = build_task({"name": "classification", "head": "head"}, data=data, seed=seed)
    task.head_name = "head"
    opts = {"name": "contrastive", "temperature": rec["temperature"],
            "projection_dim": rec["projection_dim"], "strength": rec["strength"]}
    cfg = _config(rec, seed, opts)
    method = build_method(cfg.method)
    torch.manual_seed(seed)
    model = MiniCNN(len(chars))
    method.attach_projection(model, task)
    model = _round_fp16(_fit(model, task, data, cfg, method=method).cpu().eval())
    m = _metrics(model, task, data)
    return model, {"task": "SimCLR (contrastive method) on every script; online linear probe",
                   "classes": "".join(chars), "num_classes": len(chars),
                   "metric": "accuracy (linear probe on detached features)", "source_metric": m,
                   "source_accuracy": {s: m[s]["accuracy"] for s in m}}


# ---- files ------------------------------------------------------------------------------------


def minicnn_state(model: torch.nn.Module, trunk_only: bool) -> dict[str, torch.Tensor]:
    """The MiniCNN tensors of ``model`` (a MiniCNN, or a trunk + task head built from one)."""
    ref = MiniCNN(1).state_dict()
    sd = model.state_dict()
    out = {}
    for k in ref:
        if k.startswith("head."):
            if not trunk_only:
                out[k] = sd[k]
            continue
        hits = [s for s in sd if s == k or s.endswith("." + k)]
        if len(hits) != 1:
            raise RuntimeError(f"cannot find MiniCNN tensor {k!r} in the trained model ({len(hits)} hits)")
        out[k] = sd[hits[0]]
    return out


def save(state: dict[str, torch.Tensor], path: Path) -> str:
    from safetensors.torch import save_file

    from zootune.atomic import atomic_write

    st = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(st, tmp, metadata={"format": "pt", "dtype": "float16"}))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_stored(entry: dict[str, Any], out: Path) -> MiniCNN:
    """A member as stored (float16 -> float32), through the zoo loader."""
    from zootune.demo.zoo import load_member

    return load_member(entry, out)


def _manifest_base(seed: int, recipe: dict[str, Any], command: str) -> dict[str, Any]:
    import safetensors

    return {
        "architecture": "zootune.demo.model:MiniCNN", "resolution": RESOLUTION, "dtype": "float16",
        "seed": seed, "members": [], "recipe": recipe, "command": command,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpus": os.cpu_count(), "threads": THREADS},
    }


def build(out: Path = DEFAULT_OUT, seed: int = 0, recipe: dict[str, Any] = RECIPE,
          only: list[str] | None = None, log: Callable[[str], None] = print,
          command: str = "python benchmarks/paper_zoo.py") -> dict[str, Any]:
    """Train the missing members into ``out`` (see the module doc); returns the manifest."""
    from zootune.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    mpath = out / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else _manifest_base(seed, recipe, command)
    if manifest.get("seed") != seed or manifest.get("recipe") != json.loads(json.dumps(recipe)):
        raise SystemExit(f"{mpath} was built with another seed or recipe; use another --out or "
                         "delete it")
    manifest.setdefault("runs", []).append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                            "machine": _manifest_base(seed, recipe, command)["machine"]})
    done = {e["name"]: e for e in manifest["members"]}

    def finished(name: str) -> bool:
        e = done.get(name)
        p = out / e["file"] if e else None
        return bool(e and p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == e["sha256"])

    base: MiniCNN | None = None
    wanted = [m for m in MEMBERS if only is None or m in only]
    for k, name in enumerate(MEMBERS):
        if name not in wanted:
            continue
        if finished(name):
            log(f"{name:12s} done before (skipped)")
            continue
        if name != "base" and name != "contrastive" and base is None:
            if not finished("base"):
                raise SystemExit(f"{name} is fine-tuned from base: build base first")
            base = load_stored(done["base"], out)
        t = time.time()
        s = seed * 1000 + k
        rec = recipe[name]
        torch.manual_seed(s)
        if name == "base":
            model, info = train_classifier(domain_chars(ZOO_DOMAINS["base"]), rec, s, None)
            init, domain = "random", ZOO_DOMAINS["base"]
        elif name == "script":
            model, info = train_classifier(distinct_chars(ARMENIAN), rec, s, base)
            init, domain = "base", "armenian"
        elif name == "dense":
            model, info = train_dense(rec, s, base)
            init, domain = "base", ZOO_DOMAINS["base"] + " (denoising)"
        elif name == "keypoints":
            model, info = train_keypoints(rec, s, base)
            init, domain = "base", "glyph scenes (keypoints)"
        else:
            model, info = train_contrastive(rec, s)
            init, domain = "random", ZOO_DOMAINS["base"] + " (no labels)"
        trunk_only = name in ("dense", "keypoints")
        entry = {"name": name, "file": f"{name}.safetensors", "domain": domain, "init": init,
                 "width": 32, "seed": s, **rec, **info}
        entry["sha256"] = save(minicnn_state(model, trunk_only), out / entry["file"])
        stored = load_stored(entry, out)  # the file must hold exactly the evaluated weights
        want = minicnn_state(model, trunk_only)
        got = stored.state_dict()
        bad = [k2 for k2, v in want.items() if not torch.equal(got[k2].float(), v.float())]
        if bad:
            raise RuntimeError(f"{name}: stored weights differ from the evaluated ones: {bad[:3]}")
        entry["wall_time_s"] = round(time.time() - t, 1)
        if name == "base":
            base = stored
        manifest["members"] = [e for e in manifest["members"] if e["name"] != name] + [entry]
        manifest["members"].sort(key=lambda e: MEMBERS.index(e["name"]))
        done[name] = entry
        manifest["wall_time_s"] = round(sum(e["wall_time_s"] for e in manifest["members"]), 1)
        atomic_write_text(mpath, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        sm = entry["source_metric"]["test"]
        key = entry["metric"].split()[0]
        log(f"{name:12s} {init:6s} test {key} {sm[key]:.4f}  ({entry['wall_time_s']:.0f}s)")
    atomic_write_text(mpath, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/paper_zoo.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=MEMBERS, default=None, help="build these members only")
    p.add_argument("--smoke", action="store_true", help="tiny budgets (a test, not a zoo)")
    args = p.parse_args(argv)
    recipe = SMOKE if args.smoke else RECIPE
    given = list(argv if argv is not None else sys.argv[1:])
    m = build(args.out, args.seed, recipe, only=args.only,
              command=" ".join(["python benchmarks/paper_zoo.py"] + given))
    print(f"{len(m['members'])} members in {args.out} ({m.get('wall_time_s', 0):.0f}s of training in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
