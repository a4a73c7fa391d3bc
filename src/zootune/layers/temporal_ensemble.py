"""Temporal ensemble of batch-average gates (lite Zoo-Tuning, paper §3.3, Eq. 4).

``abar <- lam * abar + (1 - lam) * mean_batch(a)``, updated after every training batch, outside
the autograd graph (the public reference code kept the graph, so it grew every step and the model
could not be deep-copied).

Initialisation: the accumulator starts at zero, and the value is *bias corrected* as in Adam,
``abar = acc / (1 - lam^t)`` after ``t`` updates. This makes ``abar`` a properly normalised
exponentially weighted average of the batch means seen so far from the first step on (plain zero
initialisation without correction would under-weight every gate for the first ~1/(1-lam) steps).
Before any update, ``abar`` is the gate network's output for an all-zero pooled input (with the
uniform gate initialisation that is exactly the uniform starting gate).

The same running average is kept in per-sample mode, where it only reports what the gates did
(``ZooModel.gate_values()``, heatmaps, export with averaged gates).

Under ``torch.distributed`` the batch mean is taken over the *global* batch (sum and count are
all-reduced), so every rank keeps identical state and a DDP run matches a single-process run with
the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_mean(a: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """Mean of ``a`` (B, m) over the batch, across all ranks when running distributed.

    With ``differentiable=True`` gradients flow back to every rank's samples (used by lite
    training, where the batch-mean gate is part of the forward pass).
    """
    if not _distributed():
        return a.mean(dim=0)
    stats = torch.cat([a.sum(dim=0), a.new_tensor([float(a.shape[0])])])
    if differentiable:
        # all-gather with autograd (its backward sums every rank's gradient for our slice),
        # then add up the ranks: a differentiable all-reduce.
        from torch.distributed._functional_collectives import all_gather_single_autograd

        world = dist.get_world_size()
        gathered = all_gather_single_autograd(stats, 0, dist.group.WORLD)
        stats = gathered.view(world, -1).sum(dim=0)
    else:
        stats = stats.detach().clone()
        dist.all_reduce(stats)
    return stats[:-1] / stats[-1]


class TemporalEnsemble(nn.Module):
    """Bias-corrected exponential moving average of batch-mean gates (Eq. 4)."""

    def __init__(self, num_sources: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"temporal-ensemble momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("accumulator", torch.zeros(num_sources))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, batch_mean: torch.Tensor) -> None:
        """One step of Eq. 4 with ``batch_mean`` (m,); never records autograd history."""
        lam = self.momentum
        self.accumulator.mul_(lam).add_(batch_mean.detach().to(self.accumulator.dtype), alpha=1 - lam)
        self.steps.add_(1)

    def value(self, prior: torch.Tensor | None = None) -> torch.Tensor:
        """``abar`` (m,), bias corrected; ``prior`` (or uniform) before the first update."""
        # tensor ops only (no int(self.steps)): no host sync on a GPU, no graph break in torch.compile
        before = (prior.detach().to(self.accumulator) if prior is not None
                  else torch.full_like(self.accumulator, 1.0 / self.accumulator.numel()))
        # 1 - momentum^t in float64, rounded once: the same number as the Python-float formula
        wide = torch.float64 if self.steps.device.type != "mps" else torch.float32  # MPS: no float64
        lam = torch.full((), self.momentum, dtype=wide, device=self.steps.device)
        correction = (1.0 - torch.pow(lam, self.steps)).to(self.accumulator.dtype)
        return torch.where(self.steps == 0, before, self.accumulator / correction)

    def reset(self) -> None:
        self.accumulator.zero_()
        self.steps.zero_()

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
