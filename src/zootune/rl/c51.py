"""The C51 distributional loss (Bellemare et al. 2017) with n-step, double-Q targets.

Written here rather than taken from TorchRL's ``DistributionalDQNLoss``: that loss reads
TensorDict keys of a collector pipeline (stacked ``("next", "pixels")`` per transition) and its
own one-step target, whereas DER needs the n-step return and bootstrap discount that the compact
replay computes (episode ends inside the window), double-Q action selection by the online
network, and the per-sample loss as the new replay priority.
"""

from __future__ import annotations

import torch


def support(atoms: int, v_min: float, v_max: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed atoms ``z_j = v_min + j (v_max - v_min) / (atoms - 1)``."""
    return torch.linspace(v_min, v_max, atoms, device=device)


def project(next_probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
            z: torch.Tensor) -> torch.Tensor:
    """Project ``returns + discounts * z`` (distributed as ``next_probs``) onto ``z``.

    ``next_probs``: (B, atoms) probabilities of the bootstrap distribution; ``returns``: (B,)
    n-step discounted rewards; ``discounts``: (B,) ``gamma^k`` of the bootstrap state, 0 when
    the window ended in a terminal. Each shifted atom ``Tz`` is clipped to ``[v_min, v_max]``
    and its mass split between the two neighbouring atoms in proportion to the distance
    (all of it to one atom when ``Tz`` falls on it). Returns (B, atoms), rows summing to 1.
    """
    atoms = z.numel()
    v_min, v_max = float(z[0]), float(z[-1])
    dz = (v_max - v_min) / (atoms - 1)
    tz = (returns.unsqueeze(1) + discounts.unsqueeze(1) * z.unsqueeze(0)).clamp(v_min, v_max)
    b = (tz - v_min) / dz
    lower = b.floor().long()
    upper = b.ceil().long()
    # an atom that lands exactly on z_l has lower == upper: give its mass to one neighbour
    # pair so that (upper - b) + (b - lower) == 1 still holds
    same = lower == upper
    lower = torch.where(same & (upper > 0), lower - 1, lower)
    upper = torch.where(same & (lower == upper), upper + 1, upper)
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower, next_probs * (upper.to(b.dtype) - b))
    m.scatter_add_(1, upper, next_probs * (b - lower.to(b.dtype)))
    return m


def c51_loss(log_probs: torch.Tensor, actions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_j m_j log p_j(s, a)`` (B,): the loss and the priority."""
    chosen = log_probs[torch.arange(len(actions), device=log_probs.device), actions]
    return -(target * chosen).sum(-1)
