"""Building blocks of Zoo-Tuning (torch only): AdaAgg layers, gates, alignment, ensembles.

* :mod:`.adaagg`  — ``AdaAggConv2d`` / ``AdaAggLinear`` (Eq. 2, lite Eq. 4-5)
* :mod:`.gate`    — gating network ``A_i`` (kinds and initialisations)
* :mod:`.align`   — channel alignment ``T_i`` (Eq. 1)
* :mod:`.temporal_ensemble` — ``abar`` of lite mode (Eq. 4)
* :mod:`.kernels` — exact per-sample convolution / linear kernels and their autograd function
* :mod:`.shared_input` — input-only work (im2col, gate pooling) done once when two networks read one batch

Needs only torch: must never import another zootune package (``convert`` builds models from
these layers; the trainer, the zoo loaders and the CLI are out of its sight).
"""

from .adaagg import AdaAggBase, AdaAggConv2d, AdaAggLinear
from .align import ChannelAlign
from .gate import GATE_INITS, GATE_KINDS, Gate
from .shared_input import input_reuse
from .kernels import CONV_KERNELS, kernel_choices
from .temporal_ensemble import TemporalEnsemble

__all__ = [
    "AdaAggBase",
    "AdaAggConv2d",
    "AdaAggLinear",
    "ChannelAlign",
    "Gate",
    "GATE_KINDS",
    "GATE_INITS",
    "CONV_KERNELS",
    "TemporalEnsemble",
    "input_reuse",
    "kernel_choices",
]
