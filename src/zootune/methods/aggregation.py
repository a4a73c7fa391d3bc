"""Weight-aggregation methods on top of :func:`zootune.zoo_tune`.

* ``zoo_tuning``: Zoo-Tuning (paper §3): AdaAgg layers with per-sample gates (Eq. 2) and channel
  alignment (Eq. 1); ``lite: true`` gives lite Zoo-Tuning (§3.3: batch-mean gates, temporal
  ensemble Eq. 4, exact export Eq. 5).
* ``zoo_tuning_lite``: the same with ``lite: true`` as the default (a name the paper's tables use).
* ``average_aggregation``: the plain weight average of the zoo, trained (paper Table 3's
  baseline): no alignment, frozen equal gates; it runs as one ordinary convolution per layer
  (lite) and exports to a plain model.

Gate remedies (``zoo_tuning`` / ``zoo_tuning_lite`` options, all off by default; for gates that
learn per-layer weights but no per-input routing; ``docs/baselines.md``, "Gate remedies"):

* ``gate_noise: s`` — noisy gating (Shazeer et al., ICLR 2017, Eq. 4 without top-k): in
  training mode every gate computes ``act(z + s * eps)``, ``eps ~ N(0, I)`` per sample and
  source, ``z`` its logits (before the sigmoid / normalisation / softmax). Fixed ``s`` (not the
  paper's learned softplus std: see :mod:`zootune.layers.gate`). Eval is noiseless. Lite mode
  uses and records (temporal ensemble, Eq. 4) the batch mean of the *noisy* gates, i.e. the
  gates as computed in training.
* ``gate_balance: w`` — the importance loss (Shazeer et al. 2017, Eqs. 6-7) added to the task
  loss by :meth:`ZooTuning.loss`: ``w * mean_l CV(Imp^l)^2``, ``Imp^l_i = sum_b a^l_bi`` the
  importance of source ``i`` at aggregated layer ``l`` in the batch (gates as computed in the
  forward: noisy when ``gate_noise > 0``). The per-sample gates are read by temporary forward
  hooks on the gate networks during that forward only (the kernels are unchanged, nothing is
  kept between steps); at ``w == 0`` the method's loss is the task loss, untouched.
* ``gate_hidden: h`` — a wider gate network (hidden width ``h`` in every aggregated layer instead
  of ``C_in // 4 + 1``, which is one unit, easily dead, for a thin first conv).

``align_zoo: true`` (both methods): permute every member into the first member's channel order
first (:func:`zootune.align_zoo`, weight matching, no data), for zoos whose members were trained
from independent random starts. ``align_zoo: {method: activations, repair: true}``
(:class:`AlignZooOptions`) matches activations on a few target training batches instead and
repairs the aggregated model's BatchNorm statistics on them.

Kernel choice: ``kernel: auto`` times the candidate per-sample kernels once per layer shape and
keeps the fastest. Which one wins may differ between processes (and their rounding with it), so
a training run decides once, before its first step, records the plan (``{layer: kernel}``) in its
checkpoints (``extras["kernels"]``) and ``result.json``, and reuses it on resume; under DDP rank
0 decides and the other ranks receive its plan. Deterministic runs are therefore fast too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from zootune.config import Section
from zootune.layers.gate import capture_gates, importance_loss, set_gate_noise
from zootune.methods.base import BuildContext, Method, MethodError, MethodOptions, register


class AlignZooOptions(Section):
    """``align_zoo: {method, repair, batches, batch_size}`` (:func:`zootune.align_zoo`).

    ``method``: ``weights`` (weight matching, no data) or ``activations`` (correlation of the
    members' activations on target images). ``repair``: after aggregation, set the BatchNorm
    statistics of the aggregated model (which starts as the zoo's average) from the aligned
    members' (``repair``: REPAIR, Jordan et al., ICLR 2023; ``reset``: RESET, recomputed on the
    data) — :func:`zootune.align.repair_batchnorm`. Both read the first ``batches`` batches of
    ``batch_size`` training samples of the target (sample keys seeded by ``train.seed``, so the
    same batches on every run of that seed), never validation or test data.
    """

    method: Literal["weights", "activations"] = "weights"
    repair: bool | Literal["repair", "reset"] = False
    batches: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=2)


class AggregationOptions(MethodOptions):
    """Which layers are aggregated and how the rest is filled (see :func:`zootune.zoo_tune`)."""

    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    rest: Literal["average"] | int = "average"
    kernel: str = "auto"
    recompute: bool = True
    #: permute every member into the first member's channel order before aggregating
    #: (:func:`zootune.align_zoo`: for zoos trained from independent starts). ``true``: weight
    #: matching, no data; a mapping (:class:`AlignZooOptions`): the matching method and
    #: BatchNorm repair, on a few batches of the target's training split
    align_zoo: bool | AlignZooOptions = False


class ZooTuningOptions(AggregationOptions):
    align: bool | Literal["default", "paper"] | list[str] = "default"
    lite: bool = False
    gate: Literal["sigmoid", "normalized", "softmax"] = "normalized"
    gate_init: Literal["uniform", "kaiming", "default"] = "uniform"
    #: hidden width of every gate network (default ``C_in // 4 + 1``); the "wider gate" remedy
    gate_hidden: int | None = Field(default=None, ge=1)
    te_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    #: std of the Gaussian noise on the gate logits in training (noisy gating; 0: off)
    gate_noise: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    #: weight of the importance (CV^2) balance term added to the training loss (0: off)
    gate_balance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)


def _align_options(opts: AggregationOptions) -> AlignZooOptions | None:
    a = opts.align_zoo
    if a is False:
        return None
    return AlignZooOptions() if a is True else a


def _target_batches(ctx: BuildContext, o: AlignZooOptions) -> list[dict]:
    """The first ``o.batches`` batches of the target's training split, drawn with ``train.seed``."""
    from zootune.data.sample import collate_samples

    ds = ctx.data.train if ctx.data is not None else None
    if ds is None or len(ds) == 0:
        raise MethodError("align_zoo with method 'activations' or repair needs the target's "
                          "training data, and the run has none")
    g = torch.Generator().manual_seed(int(ctx.cfg.train.seed))
    order = torch.randperm(len(ds), generator=g).tolist()
    n = min(len(order), o.batches * o.batch_size)
    seed = int(ctx.cfg.train.seed) * 1_000_003  # (index, seed) keys: augmentation is seeded too
    return [collate_samples([ds[(i, seed + i)] for i in order[k:k + o.batch_size]])
            for k in range(0, n, o.batch_size)]


def _source_models(opts: AggregationOptions, ctx: BuildContext) -> tuple[list[nn.Module], Any]:
    """The zoo's models for the target task and what the BatchNorm repair needs afterwards
    (``(mode, batches)`` or ``None``); with ``align_zoo`` the members are first aligned to
    member 0.

    Alignment runs on the zoo as loaded, before the task puts its new head on: when the task
    replaces the heads, the trunk's output features may be permuted too (the new head is
    learned on top of them). Weight matching needs no data; a structure-only build (weights
    loaded afterwards) skips alignment and repair.
    """
    o = _align_options(opts)
    if o is None or ctx.structure_only:
        return ctx.target_models(), None
    from zootune.align import align_zoo

    batches = _target_batches(ctx, o) if (o.method == "activations" or o.repair) else None
    size = getattr(getattr(ctx.zoo, "preprocessing", None), "input_size", None)
    if batches:
        example = batches[0][ctx.task.input_field][:2]
    else:
        example = torch.rand(2, *size, generator=torch.Generator().manual_seed(0)) if size else None
    data = [b[ctx.task.input_field] for b in batches] if batches else None
    aligned = align_zoo(list(ctx.zoo), method=o.method, data=data, example_input=example,
                        permute_outputs=bool(ctx.task.replaces_heads), seed=ctx.cfg.train.seed,
                        max_batches=o.batches)
    members = ctx.task.prepare_zoo(list(aligned), keep_source_heads=False)
    repair = ("reset" if o.repair == "reset" else "repair", data) if o.repair else None
    return members, (members, repair) if repair else None


def _finish_alignment(zm: nn.Module, opts: AggregationOptions, pending: Any) -> nn.Module:
    """Record ``align_zoo`` in the model's settings and apply the pending BatchNorm repair."""
    o = _align_options(opts)
    if o is None:
        return zm
    zm.settings["align_zoo"] = {"method": o.method, "reference": 0, "repair": o.repair}
    if pending is not None:
        from zootune.align import repair_batchnorm

        members, (mode, data) = pending
        repair_batchnorm(zm, members, data, mode=mode)
    return zm


def _zoo_tune_kwargs(opts: AggregationOptions, ctx: BuildContext) -> dict:
    exclude = list(opts.exclude) + [p for p in ctx.task.exclude_patterns() if p not in opts.exclude]
    return dict(layers=opts.layers, exclude=exclude, rest=opts.rest, kernel=opts.kernel,
                recompute=opts.recompute)


def plan_kernels(model: nn.Module, first_batch, task, extras: dict) -> None:
    """Fix the per-sample kernels of a per-sample ZooModel for a training run (module docstring):
    reuse ``extras["kernels"]`` (a resumed run), or probe one training forward + backward of the
    first batch (running statistics untouched, gradients dropped) and keep what ``auto`` chose;
    rank 0's choice wins under DDP."""
    import torch.distributed as dist

    from zootune.batchnorm import frozen_statistics
    from zootune.convert import ZooModel

    if not isinstance(model, ZooModel) or model.lite:
        return
    if "kernels" in extras:
        model.set_kernels(extras["kernels"])
        return
    if not any(getattr(layer, "kernel", None) == "auto" for layer in model.adaagg_layers().values()):
        return
    batch = first_batch()
    was = model.training
    devices = [batch[task.input_field].device] if batch[task.input_field].is_cuda else []
    with frozen_statistics(model), torch.random.fork_rng(devices=devices):  # no RNG drawn either
        model.train()
        task.loss(task.forward(model, batch), batch).backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    plan = model.kernel_plan()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    model.set_kernels(plan)
    extras["kernels"] = dict(plan)


@register("zoo_tuning")
class ZooTuning(Method):
    """Zoo-Tuning: adaptive aggregation of the whole zoo, trained end to end (Eq. 3)."""

    Options = ZooTuningOptions
    min_sources = 2

    def build(self, ctx: BuildContext) -> nn.Module:
        import zootune

        o = self.options
        torch.manual_seed(ctx.cfg.train.seed)  # gates and alignment start the same everywhere
        members, pending = _source_models(o, ctx)
        zm = _finish_alignment(zootune.zoo_tune(
            members, **_zoo_tune_kwargs(o, ctx), align=o.align, lite=o.lite,
            gate=o.gate, gate_init=o.gate_init, gate_hidden=o.gate_hidden,
            te_momentum=o.te_momentum), o, pending)
        if o.gate_noise > 0:
            set_gate_noise(zm, o.gate_noise)
            zm.settings["gate_noise"] = float(o.gate_noise)  # a record (training only)
        return zm

    def prepare_training(self, model, first_batch, task, extras) -> None:
        plan_kernels(model, first_batch, task, extras)

    def loss(self, model: nn.Module, batch, task):
        """The task loss, plus ``gate_balance`` x the importance loss of this forward's gates
        (module docstring) when ``gate_balance > 0``."""
        w = self.options.gate_balance
        if w <= 0:
            return super().loss(model, batch, task)
        with capture_gates(_gates_of(model)) as gates:
            outputs = task.forward(model, batch)
        loss = task.loss(outputs, batch)
        if gates:
            balance = importance_loss(gates)
            self.last_balance = balance.detach()  # unweighted, for inspection
            loss = loss + w * balance.to(loss.dtype)
        return loss, outputs

    def describe(self) -> str:
        o = self.options
        remedies = "".join(f", {k}={getattr(o, k)}"
                           for k in ("gate_hidden", "gate_noise", "gate_balance") if getattr(o, k))
        return (f"{self.name} ({'lite' if o.lite else 'per-sample'}, align={o.align}, gate={o.gate}"
                f"{remedies}{_align_text(o)})")


def _align_text(o: AggregationOptions) -> str:
    a = _align_options(o)
    if a is None:
        return ""
    return ", align_zoo" + (f"={a.method}" if a.method != "weights" else "") + (
        f"+{a.repair if isinstance(a.repair, str) else 'repair'}" if a.repair else "")


def _gates_of(model: nn.Module) -> list[nn.Module]:
    """The gate networks of every AdaAgg layer of ``model`` (a ZooModel, possibly DDP-wrapped)."""
    from zootune.layers import AdaAggBase

    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return [m.gate for m in inner.modules() if isinstance(m, AdaAggBase)]


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
        members, pending = _source_models(self.options, ctx)
        zm = zootune.zoo_tune(members, **_zoo_tune_kwargs(self.options, ctx),
                              align=False, lite=True, gate="normalized", gate_init="uniform")
        return _finish_alignment(zm.freeze_gates(), self.options, pending)
