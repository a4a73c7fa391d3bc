"""Co-Tuning's category relationship ``p(y_s | y_t)``: the top source classes of each target class.

As the Co-Tuning slides show it (COCO "elephant" = 30% *indian elephant* + 26% *african
elephant* + 25% *tusker* + 19% others): one horizontal stacked bar per target class, its ``k``
most probable source classes named on their segments and the rest of the mass as "others".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zootune.viz.figure import save_figure

__all__ = ["plot_relationship", "top_sources"]


def top_sources(relationship: Any, target_classes: Sequence[str], source_classes: Sequence[str],
                k: int = 3) -> dict[str, list[tuple[str, float]]]:
    """``{target class: [(source class, p), ...]}``: the ``k`` largest entries of each row."""
    r = np.asarray(torch.as_tensor(relationship, dtype=torch.float64))
    k = min(k, r.shape[1])
    out = {}
    for i, name in enumerate(target_classes):
        order = np.argsort(-r[i], kind="stable")[:k]
        out[str(name)] = [(str(source_classes[j]), float(r[i, j])) for j in order]
    return out


def plot_relationship(relationship: Any, path: str | Path, target_classes: Sequence[str],
                      source_classes: Sequence[str], k: int = 3, max_rows: int = 30,
                      title: str | None = None) -> Path:
    """Write the stacked-bar picture of ``relationship`` (C x Z) to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    top = top_sources(relationship, target_classes, source_classes, k)
    rows = list(top.items())[:max_rows]
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    colors = plt.get_cmap("tab10").colors
    for i, (name, items) in enumerate(rows):
        left = 0.0
        for j, (src, p) in enumerate(items):
            ax.barh(i, p, left=left, color=colors[j % len(colors)], edgecolor="white")
            if p > 0.06:
                ax.text(left + p / 2, i, f"{src} {100 * p:.0f}%", ha="center", va="center",
                        fontsize=7, color="white")
            left += p
        ax.barh(i, max(1.0 - left, 0.0), left=left, color="0.85", edgecolor="white")
    ax.set_yticks(range(len(rows)), [str(r[0]) for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"p(y_s | y_t): top {k} source classes, grey = others")
    ax.set_ylabel("target class")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
