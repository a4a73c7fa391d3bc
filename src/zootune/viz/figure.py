"""Saving a finished matplotlib figure (shared by every plot of a run)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    from zootune.atomic import atomic_write

    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)
    return path
