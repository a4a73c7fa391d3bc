"""Pictures of a run (matplotlib, Agg backend: no display needed): gate heatmaps, curves.

Owns plotting only (arrays in, PNG files out, written atomically by :func:`save_figure`). Must
never import :mod:`zootune.train`, :mod:`zootune.methods` or :mod:`zootune.commands`.
"""

from zootune.viz.curves import plot_learning_curves
from zootune.viz.gates import gate_matrix, plot_gate_heatmap

__all__ = ["gate_matrix", "plot_gate_heatmap", "plot_learning_curves"]
