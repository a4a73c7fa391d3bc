"""Weight-aggregation methods on top of :func:`zootune.zoo_tune`.

* ``zoo_tuning``: Zoo-Tuning (paper §3): AdaAgg layers with per-sample gates (Eq. 2) and channel
  alignment (Eq. 1); ``lite: true`` gives lite Zoo-Tuning (§3.3: batch-mean gates, temporal
  ensemble Eq. 4, exact export Eq. 5).
* ``zoo_tuning_lite``: the same with ``lite: true`` as the default (a name the paper's tables use).
* ``average_aggregation``: the plain weight average of the zoo, trained (paper Table 3's
  baseline): no alignment, frozen equal gates; it runs as one ordinary convolution per layer
  (lite) and exports to a plain model.

Kernel choice: ``kernel: auto`` times the candidate per-sample kernels and keeps the fastest,
which may differ between processes (and their rounding with it); a deterministic run
(``train.deterministic``, the default) therefore uses the fixed ``grouped`` kernel.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from zootune.methods.base import BuildContext, Method, MethodOptions, register


class AggregationOptions(MethodOptions):
    """Which layers are aggregated and how the rest is filled (see :func:`zootune.zoo_tune`)."""

    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    rest: Literal["average"] | int = "average"
    kernel: str = "auto"
    recompute: bool = True


class ZooTuningOptions(AggregationOptions):
    align: bool | Literal["default", "paper"] | list[str] = "default"
    lite: bool = False
    gate: Literal["sigmoid", "normalized", "softmax"] = "normalized"
    gate_init: Literal["uniform", "kaiming", "default"] = "uniform"
    gate_hidden: int | None = Field(default=None, ge=1)
    te_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)


def _zoo_tune_kwargs(opts: AggregationOptions, ctx: BuildContext) -> dict:
    exclude = list(opts.exclude) + [p for p in ctx.task.exclude_patterns() if p not in opts.exclude]
    kernel = opts.kernel
    if kernel == "auto" and ctx.cfg.train.deterministic:
        kernel = "grouped"
    return dict(layers=opts.layers, exclude=exclude, rest=opts.rest, kernel=kernel,
                recompute=opts.recompute)


@register("zoo_tuning")
class ZooTuning(Method):
    """Zoo-Tuning: adaptive aggregation of the whole zoo, trained end to end (Eq. 3)."""

    Options = ZooTuningOptions
    min_sources = 2

    def build(self, ctx: BuildContext) -> nn.Module:
        import zootune

        o = self.options
        torch.manual_seed(ctx.cfg.train.seed)  # gates and alignment start the same everywhere
        return zootune.zoo_tune(
            ctx.target_models(), **_zoo_tune_kwargs(o, ctx), align=o.align, lite=o.lite,
            gate=o.gate, gate_init=o.gate_init, gate_hidden=o.gate_hidden,
            te_momentum=o.te_momentum)

    def describe(self) -> str:
        o = self.options
        return f"{self.name} ({'lite' if o.lite else 'per-sample'}, align={o.align}, gate={o.gate})"


@register("zoo_tuning_lite")
class ZooTuningLite(ZooTuning):
    """Lite Zoo-Tuning (§3.3) under its own name: ``zoo_tuning`` with ``lite: true``."""

    class Options(ZooTuningOptions):
        lite: bool = True


@register("average_aggregation")
class AverageAggregation(Method):
    """The zoo's weight average (equal frozen gates, no alignment), then trained."""

    class Options(AggregationOptions):
        pass

    min_sources = 2

    def build(self, ctx: BuildContext) -> nn.Module:
        import zootune

        torch.manual_seed(ctx.cfg.train.seed)
        zm = zootune.zoo_tune(ctx.target_models(), **_zoo_tune_kwargs(self.options, ctx),
                              align=False, lite=True, gate="normalized", gate_init="uniform")
        return zm.freeze_gates()
