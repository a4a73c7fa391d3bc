"""Metric accumulation on the model's device, reduced (one host sync) only when read.

A task's ``batch_metrics`` returns tensors per batch; :class:`MetricAccumulator` adds the *sums*
(``loss_sum``, ``correct``, ``count``...) and concatenates the *vectors* (metrics the task names
with ``"cat"`` in ``metric_reductions``, e.g. per-sample errors), all without leaving the
device. :meth:`MetricAccumulator.reduce` all-reduces the sums and all-gathers the vectors across
DDP ranks and returns CPU values: floats for sums, 1-D tensors for vectors.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from zootune.train.distributed import DistInfo, all_gather_cat, all_reduce_sum


class MetricAccumulator:
    """Running totals of per-batch metrics (see the module docstring)."""

    def __init__(self, reductions: Mapping[str, str] | None = None) -> None:
        self.reductions = dict(reductions or {})
        bad = {k: v for k, v in self.reductions.items() if v not in ("sum", "cat")}
        if bad:
            raise ValueError(f"metric reductions must be 'sum' or 'cat', got {bad}")
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._cats: dict[str, list[torch.Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self._sums or self._cats)

    def add(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Accumulate one batch's metrics (detached; stays on their device)."""
        for k, v in metrics.items():
            v = torch.as_tensor(v).detach()
            if self.reductions.get(k) == "cat":
                self._cats.setdefault(k, []).append(v.double().reshape(-1))
            else:
                v = v.double()
                self._sums[k] = self._sums[k] + v if k in self._sums else v

    def reduce(self, dist_info: DistInfo | None = None) -> dict[str, Any]:
        """Totals across batches (and ranks): ``{sum_name: float, cat_name: tensor (N,)}``."""
        info = dist_info or DistInfo()
        out: dict[str, Any] = {}
        keys = sorted(self._sums)
        if keys:
            vec = torch.stack([self._sums[k].reshape(()) for k in keys])
            all_reduce_sum(vec, info)
            for k, v in zip(keys, vec.cpu().tolist()):
                out[k] = v
        for k, parts in sorted(self._cats.items()):
            out[k] = all_gather_cat(torch.cat(parts), info).cpu()
        return out
