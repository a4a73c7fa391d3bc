"""Pictures of landmark predictions: faces with predicted and true points, and the cumulative
error distribution (CED) curve whose area is the AUC of :mod:`zootune.tasks.landmarks`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zootune.viz.figure import save_figure


def _display(image: torch.Tensor) -> np.ndarray:
    """A normalised ``(C, H, W)`` tensor as an ``(H, W[, 3])`` array in [0, 1] (min-max)."""
    x = image.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def plot_landmark_predictions(images: torch.Tensor, pred: torch.Tensor, true: torch.Tensor,
                              path: str | Path, errors: Sequence[float] | None = None,
                              cols: int = 6) -> Path:
    """A grid of faces with predicted (red) and true (green) landmarks; ``errors`` (per face
    NME) are written above each face. Coordinates are pixels of the images (edge convention)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        h, w = images[i].shape[-2:]
        ax.imshow(_display(images[i]), cmap="gray", extent=(0, w, h, 0), interpolation="nearest")
        t, p = true[i].cpu().numpy(), pred[i].cpu().numpy()
        ax.scatter(t[:, 0], t[:, 1], s=4, c="lime", linewidths=0)
        ax.scatter(p[:, 0], p[:, 1], s=4, c="red", linewidths=0)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        if errors is not None:
            ax.set_title(f"NME {100 * errors[i]:.1f}%", fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_ced(nme: torch.Tensor | Sequence[float], path: str | Path, threshold: float = 0.1,
             labels: Sequence[str] | None = None, curves: Sequence[Sequence[float]] | None = None) -> Path:
    """Cumulative error distribution: the share of faces with NME <= e, for e in [0, threshold]
    (one curve, or several ``curves`` with ``labels``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = [np.asarray(c, dtype=float) for c in curves] if curves is not None else [
        np.asarray(torch.as_tensor(nme, dtype=torch.float64).cpu())]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for j, e in enumerate(sets):
        e = np.sort(e)
        xs = np.concatenate([[0.0], e[e <= threshold], [threshold]])
        ys = np.concatenate([[0.0], np.arange(1, (e <= threshold).sum() + 1) / len(e),
                             [(e <= threshold).mean()]])
        ax.step(xs, ys, where="post", label=labels[j] if labels else None)
    ax.set_xlim(0, threshold)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME (inter-ocular)")
    ax.set_ylabel("share of faces")
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)
