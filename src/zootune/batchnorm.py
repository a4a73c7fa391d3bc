"""Re-estimate BatchNorm running statistics on target data.

After conversion a ZooModel's BatchNorm running statistics are the zoo average (convert.py),
which describes the sources' activations, not the aggregated model's. Training refreshes them;
``recalibrate_batchnorm`` refreshes them without training: it resets them and runs target batches
through the model with only the BatchNorm layers in training mode, using a cumulative average
(``momentum=None``) so every batch counts equally. Every other layer runs as at inference, so in
lite mode the statistics match the merged model that ``export()`` produces, and the temporal
ensemble is not touched.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable, max_batches: int | None = None
) -> nn.Module:
    """Reset and re-estimate every BatchNorm's running mean/var from ``batches``.

    ``batches`` yields inputs, or tuples/lists whose first element is the input. Returns
    ``model`` (modified in place), with its original train/eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
    finally:
        for bn, mom in zip(norms, momenta):
            bn.momentum = mom
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_batchnorm got no batches")
    return model


@contextlib.contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Run extra training-mode forwards that leave every running statistic as it was.

    BatchNorm layers keep their running mean/var (momentum 0 for the duration;
    ``num_batches_tracked`` restored) and a Zoo-Tuning model's gate statistics are not recorded
    (``track_gates(False)``). Used for FLOP counting and for probing which kernels to use,
    instead of backing up and restoring the whole state dict.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    tracker = getattr(model, "track_gates", None)
    gates = tracker(False) if callable(tracker) else contextlib.nullcontext()
    try:
        for m in norms:
            m.momentum = 0.0
        with gates:
            yield model
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
