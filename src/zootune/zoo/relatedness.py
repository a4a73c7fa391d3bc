"""How related are the zoo's weights? Per-layer cosine similarity between members.

Zoo-Tuning sums ``T_i W_i`` over sources (Eq. 2). That is only meaningful when the channels of
the sources correspond, which in practice means the sources were fine-tuned from one shared
initialisation (four of the paper's five ResNet-50s start from the same ImageNet weights).
Networks trained from independent random starts learn the same kinds of features in permuted
channel orders; their weight tensors are then nearly orthogonal, and aggregating them hurts
(measured here: about 4.5 points below the best single source, see DESIGN.md).

For every aggregatable layer (a weight with two or more dimensions, outside the head) and
every pair of members ``i, j`` we compute ``cos(W_i, W_j)`` of the flattened weights. A member's
*relatedness* is its median-over-layers similarity to its closest other member. Independently
initialised networks sit near 0 (random high-dimensional vectors: ~1/sqrt(#weights)); a model
and a fine-tuned copy stay far above. :data:`RELATED_THRESHOLD` separates the two; it was
calibrated on real cases built offline (``benchmarks/zoo_relatedness.py``; results in
``benchmarks/results/zoo_relatedness.md``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

RELATED_THRESHOLD = 0.2


class UnrelatedZooWarning(UserWarning):
    """Some zoo members look independently trained: their channels need not correspond."""


@dataclass
class Relatedness:
    """Per-layer pairwise cosine similarities of a zoo's weights.

    ``sims[l, i, j]`` is the cosine similarity of layer ``layers[l]`` between members ``i`` and
    ``j`` (1 on the diagonal).
    """

    names: list[str]
    layers: list[str]
    sims: np.ndarray
    threshold: float = RELATED_THRESHOLD

    def pairwise(self) -> np.ndarray:
        """``(m, m)`` median-over-layers similarity of every pair."""
        if not self.layers:
            return np.eye(len(self.names))
        return np.median(self.sims, axis=0)

    def member_scores(self) -> np.ndarray:
        """Each member's median similarity to its closest other member."""
        p = self.pairwise().copy()
        np.fill_diagonal(p, -np.inf)
        return p.max(axis=1)

    def per_layer_to_others(self) -> np.ndarray:
        """``(L, m)``: each member's mean similarity to the other members, per layer."""
        m = len(self.names)
        if m < 2:
            return np.ones((len(self.layers), m))
        total = self.sims.sum(axis=2) - 1.0  # drop the diagonal's 1
        return total / (m - 1)

    def unrelated(self) -> list[str]:
        """Members whose relatedness is below the threshold."""
        scores = self.member_scores()
        return [n for n, s in zip(self.names, scores) if s < self.threshold]

    def warning_text(self) -> str | None:
        bad = self.unrelated()
        if not bad or len(self.names) < 2:
            return None
        scores = dict(zip(self.names, self.member_scores()))
        detail = ", ".join(f"{n} ({scores[n]:.2f})" for n in bad)
        if len(bad) == len(self.names):
            lead = "all zoo members look independently trained"
        else:
            lead = "some zoo members look independently trained from the others"
        return (
            f"{lead}: median layer cosine similarity to the closest member {detail} < "
            f"{self.threshold}. Aggregating weights assumes their channels correspond (sources "
            f"fine-tuned from one shared initialisation); with unrelated sources Zoo-Tuning "
            f"and averaging can fall below the best single source. Aligning the members first "
            f"may recover part of that: `zootune zoo align SPEC... -o DIR`, or "
            f"zoo_tune(..., align_zoo=True) / method option align_zoo: true"
        )

    def table(self, max_rows: int | None = None) -> str:
        """Text table: per layer, each member's mean cosine similarity to the others."""
        per = self.per_layer_to_others()
        width = max([5] + [len(n) for n in self.names])
        lw = max([5] + [len(layer) for layer in self.layers])
        head = "layer".ljust(lw) + "  " + "  ".join(n.rjust(width) for n in self.names)
        rows = [head, "-" * len(head)]
        idx = range(len(self.layers))
        if max_rows is not None and len(self.layers) > max_rows:
            step = max(1, len(self.layers) // max_rows)
            idx = sorted(set(range(0, len(self.layers), step)) | {len(self.layers) - 1})
        for i in idx:
            rows.append(self.layers[i].ljust(lw) + "  "
                        + "  ".join(f"{v:{width}.3f}" for v in per[i]))
        med = self.member_scores()
        rows.append("-" * len(head))
        rows.append("closest (median)".ljust(lw) + "  "
                    + "  ".join(f"{v:{width}.3f}" for v in med))
        return "\n".join(rows)

    def to_dict(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "layers": list(self.layers),
            "pairwise_median": self.pairwise().round(4).tolist(),
            "member_scores": self.member_scores().round(4).tolist(),
            "per_layer_to_others": self.per_layer_to_others().round(4).tolist(),
            "threshold": self.threshold,
            "unrelated": self.unrelated(),
        }


def comparable_layers(models: Sequence[nn.Module], exclude_prefixes: Sequence[str] = ()) -> list[str]:
    """Parameter names with >= 2 dims, shared by all members with one shape, outside heads."""
    states = [dict(m.named_parameters()) for m in models]
    names = []
    for k, v in states[0].items():
        if v.dim() < 2 or any(k == p or k.startswith(p + ".") for p in exclude_prefixes if p):
            continue
        if all(k in s and s[k].shape == v.shape for s in states[1:]):
            names.append(k)
    return names


@torch.no_grad()
def relatedness(
    models: Sequence[nn.Module],
    names: Sequence[str] | None = None,
    *,
    exclude_prefixes: Sequence[str] = (),
    threshold: float = RELATED_THRESHOLD,
) -> Relatedness:
    """Pairwise per-layer cosine similarities of ``models`` (same architecture)."""
    names = list(names) if names is not None else [f"m{i}" for i in range(len(models))]
    layers = comparable_layers(models, exclude_prefixes)
    m = len(models)
    sims = np.ones((len(layers), m, m), dtype=np.float64)
    params = [dict(mod.named_parameters()) for mod in models]
    for li, layer in enumerate(layers):
        flat = torch.stack([p[layer].detach().reshape(-1).double().cpu() for p in params])
        norms = flat.norm(dim=1).clamp_min(1e-12)
        unit = flat / norms[:, None]
        sims[li] = (unit @ unit.T).numpy()
    return Relatedness(names, layers, sims, threshold)


def warn_if_unrelated(rel: Relatedness, stacklevel: int = 2) -> str | None:
    text = rel.warning_text()
    if text:
        warnings.warn(text, UnrelatedZooWarning, stacklevel=stacklevel + 1)
    return text
