"""BatchNorm repair of a merged (weight-averaged) model.

Averaging the weights of aligned networks shrinks the variance of hidden activations: channels
that agree only partly partially cancel, layer after layer ("variance collapse", Jordan et al.,
*REPAIR*, ICLR 2023, §3). For BatchNorm networks the paper gives two fixes, both implemented
here on a few batches of (target) data:

* ``"reset"`` (the paper's RESET): re-estimate every BatchNorm's running mean and variance on
  the data, so each BatchNorm again normalises what the *merged* network computes; this is
  :func:`zootune.recalibrate_batchnorm`, reused as is.
* ``"repair"`` (REPAIR proper, its BatchNorm form): measure, on the same data, the per-channel
  mean ``mu_i`` and standard deviation ``sigma_i`` of every BatchNorm's *output* in each source
  ``i`` (in eval mode, as that source computes it); set the merged BatchNorm's bias to
  ``sum_i w_i mu_i`` and the magnitude of its scale to ``sum_i w_i sigma_i`` (keeping the scale's
  sign), then RESET. After the RESET each BatchNorm's normalised input has mean 0 and variance 1
  on the data, so its output has exactly the interpolated mean and standard deviation of the
  sources' outputs - what REPAIR asks of every channel. (The paper's general form inserts an
  affine correction after each layer of a network without BatchNorm; that form is not
  implemented: networks without BatchNorm are left as they are, and a message says so.)

``w_i`` are the merge weights (uniform for a plain average, which is where Zoo-Tuning's and
average aggregation's models start).
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from zootune.batchnorm import recalibrate_batchnorm

from .graph import AlignError

RepairMode = Literal["repair", "reset"]


def _input(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        for k in ("image", "input", "x"):
            if k in batch:
                return batch[k]
        raise AlignError(f"a data batch is a dict without an 'image' field (keys: {sorted(batch)})")
    return batch


def _norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    root = getattr(model, "model", model) if hasattr(model, "adaagg_layers") else model
    return {n: m for n, m in root.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@torch.no_grad()
def batchnorm_output_stats(model: nn.Module, batches: Sequence[Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{bn name: (mean, std)}`` per channel of every BatchNorm's output, in eval mode."""
    norms = _norms(model)
    acc: dict[str, list] = {}

    def hook(name):
        def f(_m, _i, out):
            c = out.detach().movedim(1, 0).reshape(out.shape[1], -1).double()
            a = acc.setdefault(name, [0, torch.zeros(c.shape[0], dtype=torch.float64),
                                      torch.zeros(c.shape[0], dtype=torch.float64)])
            a[0] += c.shape[1]
            a[1] += c.sum(1)
            a[2] += (c * c).sum(1)
        return f

    hooks = [m.register_forward_hook(hook(n)) for n, m in norms.items()]
    was = model.training
    model.eval()
    try:
        for b in batches:
            model(_input(b))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for n, (cnt, s, ss) in acc.items():
        mean = s / cnt
        out[n] = (mean, (ss / cnt - mean**2).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair_batchnorm(
    merged: nn.Module,
    sources: Sequence[nn.Module],
    batches: Iterable[Any],
    *,
    mode: RepairMode = "repair",
    weights: Sequence[float] | None = None,
    max_batches: int | None = None,
) -> nn.Module:
    """Repair the BatchNorm layers of ``merged`` (in place; returned) on ``batches``.

    ``merged``: a weight average of the aligned ``sources`` (a plain module, or a
    :class:`zootune.ZooModel` whose BatchNorm layers have the sources' names). ``mode``:
    ``"repair"`` or ``"reset"`` (module docstring). ``batches``: a few batches of inputs (tensors,
    ``(input, ...)`` tuples or ``{"image": ...}`` dicts), read more than once.
    """
    if mode not in ("repair", "reset"):
        raise AlignError(f"repair mode must be 'repair' or 'reset', got {mode!r}")
    data = []
    for b in batches:
        data.append(_input(b))
        if max_batches is not None and len(data) >= max_batches:
            break
    if not data:
        raise AlignError("BatchNorm repair needs a few batches of data (got none)")
    norms = _norms(merged)
    if not norms:
        return merged
    if mode == "repair":
        if not sources:
            raise AlignError("mode='repair' needs the source models")
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(sources), dtype=torch.float64)
        if len(w) != len(sources):
            raise AlignError(f"got {len(w)} merge weights for {len(sources)} sources")
        w = w / w.sum()
        stats = [batchnorm_output_stats(s, data) for s in sources]
        for name, bn in norms.items():
            if not all(name in st for st in stats) or bn.weight is None:
                continue
            mean = sum(wi * st[name][0] for wi, st in zip(w, stats))
            std = sum(wi * st[name][1] for wi, st in zip(w, stats))
            sign = torch.where(bn.weight >= 0, 1.0, -1.0).to(torch.float64)
            bn.weight.copy_((sign * std).to(bn.weight.dtype))
            bn.bias.copy_(mean.to(bn.bias.dtype))
    recalibrate_batchnorm(merged, data)
    return merged


@torch.no_grad()
def average_models(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """A copy of ``models[0]`` holding the (weighted) average of every floating-point tensor of
    ``models`` - the merged model of model-merging papers; integer buffers come from models[0]."""
    import copy

    out = copy.deepcopy(models[0])
    w = list(weights) if weights is not None else [1.0 / len(models)] * len(models)
    states = [m.state_dict() for m in models]
    for k, t in out.state_dict().items():
        if t.is_floating_point():
            t.copy_(sum(wi * s[k].double() for wi, s in zip(w, states)).to(t.dtype))
    return out
