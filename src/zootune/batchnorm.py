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

from typing import Iterable

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
