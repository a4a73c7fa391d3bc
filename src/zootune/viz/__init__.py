"""Pictures of a run (matplotlib, Agg backend: no display needed)."""

from zootune.viz.curves import plot_learning_curves
from zootune.viz.gates import gate_matrix, plot_gate_heatmap

__all__ = ["gate_matrix", "plot_gate_heatmap", "plot_learning_curves"]
