"""Learning curves from a run's logged events (``metrics.jsonl``): loss and accuracy vs step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from zootune.viz.figure import save_figure


def plot_learning_curves(events: Sequence[dict[str, Any]], path: str | Path,
                         title: str | None = None) -> Path:
    """Two panels: loss (train, val) and the other metrics (accuracy...) vs step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for e in events:
        for k, v in e.items():
            if k in ("step", "split") or not isinstance(v, (int, float)) or k in ("lr", "samples_per_s"):
                continue
            xs, ys = series.setdefault((e.get("split", "?"), k), ([], []))
            xs.append(int(e["step"]))
            ys.append(float(v))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (split, k), (xs, ys) in sorted(series.items()):
        ax = axes[0] if k == "loss" else axes[1]
        style = "-" if split == "train" else "o-"
        ax.plot(xs, ys, style, label=f"{split} {k}", markersize=3)
    axes[0].set_title("loss")
    axes[1].set_title("metrics")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)
