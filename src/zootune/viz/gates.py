"""Gate heatmap: how much each source contributes to each aggregated layer (paper Fig. 5/6).

Rows are source models, columns the aggregated layers from the input (left) to the output
(right), as in the paper's figures; darker = higher gate value. Values come from
``ZooModel.gate_values()`` (the temporal ensemble ``abar`` in lite mode, the running mean of the
per-sample gates otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from zootune.viz.figure import save_figure


def gate_matrix(gates: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, list[str]]:
    """``(m, L)`` array of gate values and the ``L`` layer names, in model order."""
    names = list(gates)
    if not names:
        return np.zeros((0, 0)), []
    mat = np.stack([np.asarray(torch.as_tensor(gates[n]).float().cpu()) for n in names], axis=1)
    return mat, names


def plot_gate_heatmap(gates: Mapping[str, torch.Tensor], path: str | Path,
                      source_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Write the heatmap PNG to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    mat, layers = gate_matrix(gates)
    m, L = mat.shape
    names = list(source_names) if source_names is not None and len(source_names) == m else [
        f"source {i}" for i in range(m)]
    fig_w = min(max(4.0, 0.35 * L + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(fig_w, 0.45 * m + 1.8))
    im = ax.imshow(mat, aspect="auto", cmap="Blues", vmin=0.0, vmax=max(float(mat.max()), 1e-6))
    ax.set_yticks(range(m), names)
    step = max(1, L // 30)
    ax.set_xticks(range(0, L, step), [layers[i] for i in range(0, L, step)], rotation=60,
                  ha="right", fontsize=7)
    ax.set_xlabel("aggregated layer (input -> output)")
    if L <= 12 and m <= 8:
        for i in range(m):
            for j in range(L):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > 0.6 * mat.max() else "black")
    fig.colorbar(im, ax=ax, label="gate value")
    ax.set_title(title or "Zoo-Tuning gates per layer and source")
    return save_figure(fig, path, dpi=120)
