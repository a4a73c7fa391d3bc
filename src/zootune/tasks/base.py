"""The task interface: what the shared trainer needs to know about a learning problem.

A task owns the *head* (how source models are adapted to the target outputs), the *loss*, and
the *metrics*. The trainer owns everything else (optimiser, schedule, AMP, DDP, checkpoints,
logging), so classification, facial landmarks and reinforcement learning share one loop.

Metrics are accumulated as **sums** per batch (``batch_metrics``) and turned into means by
``summarize``: sums add up exactly across batches and across DDP ranks (one all-reduce).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class Task:
    """Base class of tasks. Subclasses override ``loss``, ``batch_metrics`` and ``summarize``."""

    #: short name used in logs and reports
    name: str = "task"
    #: the metric used to select checkpoints on validation
    primary_metric: str = "loss"
    higher_is_better: bool = False
    #: module name (in the source architecture) of the task head; its parameters get
    #: ``optim.head_lr``. Set by :meth:`prepare_zoo`.
    head_name: str | None = None

    def prepare_zoo(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Adapt the source models to the target outputs (e.g. a fresh shared head)."""
        return list(models)

    def exclude_patterns(self) -> list[str]:
        """Module-name patterns that ``zoo_tune`` must not aggregate (the new head)."""
        return [self.head_name] if self.head_name else []

    def to_device(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b, device) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v, device) for k, v in batch.items()}
        return batch

    def batch_size(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Model outputs for a batch (default: ``model(batch[0])``)."""
        return model(batch[0])

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_metrics(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Per-batch **sums**, e.g. ``{"loss_sum": ..., "correct": ..., "count": ...}``."""
        n = self.batch_size(batch)
        return {"loss_sum": self.loss(outputs, batch).detach().float() * n,
                "count": torch.tensor(float(n))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Means from accumulated sums."""
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n}
