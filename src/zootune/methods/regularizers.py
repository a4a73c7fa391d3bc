"""Single-model fine-tuning regularisers any run switches on from its config: L2-SP, DELTA, BSS.

A config lists them at the top level; each entry names a registered regulariser and its options,
and the trainer adds every configured term to the method's training loss (the one generic hook,
in :func:`zootune.train.fit`), so they work with every method — ``finetune``, ``zoo_tuning``,
``co_tuning``...::

    regularizers:
      - {name: l2_sp, alpha: 0.1, beta: 0.01}
      - {name: bss, eta: 0.001, k: 1}

What each term is (``w`` the trainable weights of the model being trained, ``w0`` their values
when training starts, ``S`` the starting (pretrained) parameters, ``N`` the new task head):

* ``l2_sp`` — Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks", ICML 2018:
  ``Omega = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_N||^2`` (the starting point as the
  reference of weight decay; the new head gets plain weight decay). Defaults ``alpha=0.1``,
  ``beta=0.01``, the values that paper reports for most of its experiments.
* ``delta`` — Li, Xiong, Wang, Huan, Chen, Liu & Xu, "DELTA: DEep Learning Transfer using
  Feature Map with Attention for Convolutional Networks", ICLR 2019: behaviour regularisation
  ``Omega = alpha * sum_l sum_j a_lj * mean_b ||FM_lj(w, x_b) - FM_lj(w0, x_b)||^2
  + beta/2 * ||w_N||^2``, where ``FM_lj`` is channel ``j`` of feature map ``l`` (the frozen
  starting model gives ``FM(w0, .)``) and the supervised attention
  ``a_l = softmax_j(L(w0 without channel j) - L(w0))`` weighs each channel by how much the target
  loss grows when it is removed (measured once before training on up to ``attention_samples``
  training images, with a logistic-regression probe fitted on the starting model's features as
  the classifier: the new head is still random then). ``attention: uniform`` uses ``1/C``.
  ``layers``: module names whose outputs are the feature maps (default: the features entering
  the task head). Defaults ``alpha=0.01``, ``beta=0.01``.
* ``bss`` — Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer:
  Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019:
  ``L_bss = eta * sum_{i=1..k} sigma_{-i}^2``, the ``k`` smallest singular values of the batch
  feature matrix ``F`` (batch x features entering the task head). Defaults ``eta=0.001``,
  ``k=1`` (the paper's).

With Zoo-Tuning (a :class:`zootune.ZooModel`) the same definitions apply to its parameters: the
reference of L2-SP is the model's *starting* weights (every source's ``W_i``, the alignments
``D_i`` of ``T_i = I + D_i`` — so L2-SP pulls ``T_i`` to the identity — the gates and the
averaged norm layers), DELTA's frozen reference is the starting ZooModel (in eval mode: lite
mode's exported-equivalent model), and BSS reads the features entering the shared head.

Every term is computed from the model the loop trains, captured once when training starts
(before a resume restores later weights, so ``w0`` is always the start of the run).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zootune.config import PluginOptions
from zootune.errors import ZootuneError
from zootune.registry import Registry

__all__ = [
    "BSS",
    "L2SP",
    "Delta",
    "Regularizer",
    "RegularizerError",
    "RegularizerOptions",
    "RegularizerSet",
    "available",
    "build_regularizers",
    "get",
    "register",
    "smallest_singular_penalty",
]


class RegularizerError(ZootuneError, ValueError):
    """A regulariser cannot be set up for this model (e.g. a layer name it does not have)."""


class RegularizerOptions(PluginOptions):
    """Base of every regulariser's options (``name`` is the registered name)."""


def _inner(model: nn.Module) -> nn.Module:
    """The module whose names a task's head name refers to (``ZooModel.model`` or the model)."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "adaagg_layers") else model


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` (names of a ZooModel are relative to ``zm.model``)."""
    try:
        return _inner(model).get_submodule(name)
    except AttributeError:
        raise RegularizerError(f"the model has no module {name!r}") from None


def _is_head(name: str, head: str | None) -> bool:
    return bool(head) and (name == head or name.startswith(head + ".") or fnmatch.fnmatch(name, head))


class FeatureTap:
    """Keeps the input (or output) of one module from the latest grad-enabled training forward."""

    def __init__(self, module: nn.Module, *, use_input: bool) -> None:
        self.value: torch.Tensor | None = None
        self.use_input = use_input
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod: nn.Module, inp: tuple, out: Any) -> None:
        if mod.training and torch.is_grad_enabled():
            self.value = inp[0] if self.use_input else out

    def take(self) -> torch.Tensor:
        v, self.value = self.value, None
        if v is None:
            raise RegularizerError("no features were captured in this training step (is the "
                                   "tapped module used by the model's forward?)")
        return v

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class RegularizerContext:
    """What a regulariser sets up from: the model to train (starting weights), the bound task
    (``head_name``, ``input_field``, ``forward``) and the data (DELTA's attention)."""

    model: nn.Module
    task: Any
    data: Any = None


class Regularizer(nn.Module):
    """Base class: ``setup(ctx)`` once before training, ``forward(batch)`` -> the weighted term."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[RegularizerOptions]] = RegularizerOptions

    def __init__(self, options: RegularizerOptions | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options(name=self.name)

    def setup(self, ctx: RegularizerContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: Registry[type[Regularizer]] = Registry("regularizer", Regularizer, RegularizerOptions,
                                                  RegularizerError)
#: Class decorator: make ``regularizers: [{name: NAME}]`` in a config build this regulariser.
register = _REGISTRY.register
#: Names of the registered regularisers.
available = _REGISTRY.available
#: The regulariser class registered as a name.
get = _REGISTRY.get


def _new_head_penalty(model: nn.Module, head: str | None) -> list[nn.Parameter]:
    return [p for n, p in _inner(model).named_parameters() if p.requires_grad and _is_head(n, head)]


@register("l2_sp")
class L2SP(Regularizer):
    """L2-SP: ``alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_N||^2`` (see the module docstring)."""

    class Options(RegularizerOptions):
        alpha: float = Field(default=0.1, ge=0.0)
        beta: float = Field(default=0.01, ge=0.0)

    def setup(self, ctx: RegularizerContext) -> None:
        head = getattr(ctx.task, "head_name", None)
        named = [(n, p) for n, p in _inner(ctx.model).named_parameters() if p.requires_grad]
        self._start = [p for n, p in named if not _is_head(n, head)]
        self._new = [p for n, p in named if _is_head(n, head)]
        self._ref = [p.detach().clone() for p in self._start]

    def forward(self, batch: Any = None) -> torch.Tensor:
        o = self.options
        dev = self._start[0].device if self._start else self._new[0].device
        total = torch.zeros((), device=dev)
        if o.alpha:
            total = total + 0.5 * o.alpha * sum(((p - r.to(p.device)) ** 2).sum()
                                                for p, r in zip(self._start, self._ref))
        if o.beta and self._new:
            total = total + 0.5 * o.beta * sum((p ** 2).sum() for p in self._new)
        return total


def smallest_singular_penalty(features: torch.Tensor, k: int) -> torch.Tensor:
    """``sum_{i=1..k} sigma_{-i}^2``: the squares of the ``k`` smallest singular values of the
    ``(B, D)`` feature matrix (flattened after the batch axis), as BSS defines it."""
    f = features.reshape(features.shape[0], -1).float()
    s = torch.linalg.svdvals(f)  # descending, min(B, D) values
    k = min(int(k), s.shape[0])
    return (s[s.shape[0] - k:] ** 2).sum()


@register("bss")
class BSS(Regularizer):
    """Batch Spectral Shrinkage: ``eta * sum of the k smallest squared singular values`` of the
    batch's features entering the task head (see the module docstring)."""

    class Options(RegularizerOptions):
        eta: float = Field(default=0.001, ge=0.0)
        k: int = Field(default=1, ge=1)
        #: module whose *input* is the feature matrix (default: the task head)
        layer: str | None = None

    def setup(self, ctx: RegularizerContext) -> None:
        name = self.options.layer or getattr(ctx.task, "head_name", None)
        if not name:
            raise RegularizerError("bss: the task has no head to read features from; set layer")
        self._tap = FeatureTap(submodule(ctx.model, name), use_input=True)

    def forward(self, batch: Any = None) -> torch.Tensor:
        return self.options.eta * smallest_singular_penalty(self._tap.take(), self.options.k)


def _channel_view(fm: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B, C, rest)`` (a ``(B, D)`` vector has ``D`` channels of size 1)."""
    return fm.reshape(fm.shape[0], fm.shape[1], -1)


class _ZeroChannel:
    """Forward hook zeroing one output channel of a module (DELTA's channel ablation)."""

    def __init__(self) -> None:
        self.channel: int | None = None

    def __call__(self, mod: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        if self.channel is None:
            return out
        out = out.clone()
        out[:, self.channel] = 0
        return out


@register("delta")
class Delta(Regularizer):
    """DELTA: attention-weighted distance of feature maps to the frozen starting model's, plus
    ``beta/2 ||w_N||^2`` on the new head (see the module docstring)."""

    class Options(RegularizerOptions):
        alpha: float = Field(default=0.01, ge=0.0)
        beta: float = Field(default=0.01, ge=0.0)
        #: module names whose outputs are the regularised feature maps (None: the head's input)
        layers: list[str] | None = None
        attention: str = Field(default="supervised", pattern="^(supervised|uniform)$")
        attention_samples: int = Field(default=512, ge=2)

    def setup(self, ctx: RegularizerContext) -> None:
        head = getattr(ctx.task, "head_name", None)
        self._task = ctx.task
        self._new = _new_head_penalty(ctx.model, head)
        self._layers: list[tuple[str, bool]] = (  # (module name, use its input)
            [(n, False) for n in self.options.layers] if self.options.layers
            else [(head, True)] if head else [])
        if not self._layers:
            raise RegularizerError("delta: the task has no head; set layers to module names")
        ref = copy.deepcopy(ctx.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        self._ref = [ref]  # a list: not a submodule (not saved, not moved by .to())
        self._taps = [FeatureTap(submodule(ctx.model, n), use_input=u) for n, u in self._layers]
        self._ref_taps = [_EvalTap(submodule(ref, n), u) for n, u in self._layers]
        self._att = self._attention(ctx, ref) if self.options.attention == "supervised" else None

    @torch.no_grad()
    def _attention(self, ctx: RegularizerContext, ref: nn.Module) -> list[torch.Tensor]:
        """``a_l = softmax_j(L(without channel j) - L)`` per layer, with a logistic-regression
        probe on the starting model's head features as the classifier."""
        from sklearn.linear_model import LogisticRegression

        from zootune.data.sample import as_sample, collate_samples

        data = getattr(ctx.data, "train", None)
        if data is None or len(data) < 2:
            raise RegularizerError("delta: supervised attention needs training data "
                                   "(or set attention: uniform)")
        head = getattr(ctx.task, "head_name", None)
        if not head:
            raise RegularizerError("delta: supervised attention needs a task head; "
                                   "set attention: uniform")
        n = min(len(data), self.options.attention_samples)
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(data), generator=g)[:n].tolist()
        batch = collate_samples([as_sample(data[i]) for i in idx])
        dev = next(ref.parameters()).device
        x = batch[ctx.task.input_field].to(dev)
        y = torch.as_tensor(batch[getattr(ctx.task, "label_field", "label")]).long()
        feat_tap = _EvalTap(submodule(ref, head), True)

        def head_features() -> torch.Tensor:
            ref(x)
            return feat_tap.value.reshape(n, -1).float().cpu()

        base = head_features()
        probe = LogisticRegression(max_iter=500).fit(base.numpy(), y.numpy())
        w = torch.as_tensor(probe.coef_, dtype=torch.float32)
        b = torch.as_tensor(probe.intercept_, dtype=torch.float32)
        cls = torch.as_tensor(probe.classes_)
        y_idx = torch.searchsorted(cls, y)

        def probe_loss(f: torch.Tensor) -> float:
            logits = f @ w.T + b
            if logits.shape[1] == 1:  # binary probe: one logit
                logits = torch.cat([torch.zeros_like(logits), logits], 1)
            return float(F.cross_entropy(logits, y_idx))

        l0 = probe_loss(base)
        out = []
        for (name, use_input), tap in zip(self._layers, self._ref_taps):
            if use_input:  # the head's input: ablate columns of the features directly
                gains = []
                for j in range(base.shape[1]):
                    f = base.clone()
                    f[:, j] = 0
                    gains.append(probe_loss(f) - l0)
            else:
                zero = _ZeroChannel()
                h = submodule(ref, name).register_forward_hook(zero)
                try:
                    ref(x)
                    gains = []
                    for j in range(tap.value.shape[1]):
                        zero.channel = j
                        gains.append(probe_loss(head_features()) - l0)
                finally:
                    h.remove()
            out.append(torch.softmax(torch.tensor(gains, dtype=torch.float32), 0).to(dev))
        feat_tap.remove()
        return out

    def forward(self, batch: Any) -> torch.Tensor:
        o = self.options
        ref = self._ref[0]
        with torch.no_grad():
            self._task.forward(ref, batch)
        total = None
        for i, (tap, rtap) in enumerate(zip(self._taps, self._ref_taps)):
            d = (_channel_view(tap.take()).float() - _channel_view(rtap.value).float()) ** 2
            per_channel = d.sum(2).mean(0)  # (C,): mean over the batch of ||FM_j - FM0_j||^2
            att = self._att[i] if self._att is not None else torch.full_like(per_channel,
                                                                              1.0 / per_channel.numel())
            term = (att.to(per_channel.device) * per_channel).sum()
            total = term if total is None else total + term
        total = o.alpha * total
        if o.beta and self._new:
            total = total + 0.5 * o.beta * sum((p ** 2).sum() for p in self._new)
        return total


class _EvalTap:
    """Keeps the input or output of a module of the frozen reference from its latest forward."""

    def __init__(self, module: nn.Module, use_input: bool) -> None:
        self.value: torch.Tensor | None = None
        self.use_input = use_input
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod: nn.Module, inp: tuple, out: Any) -> None:
        self.value = inp[0] if self.use_input else out

    def remove(self) -> None:
        self.handle.remove()


class RegularizerSet:
    """The configured regularisers of a run; calling it with a training batch (after the
    training forward of that batch) returns the sum of their terms. ``last`` holds each term's
    value of the latest call (floats are read only when asked)."""

    def __init__(self, regs: Sequence[Regularizer]) -> None:
        self.regs = list(regs)
        self.last: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.regs)

    def __call__(self, batch: Any) -> torch.Tensor:
        total = None
        for r in self.regs:
            t = r(batch)
            self.last[r.name] = t.detach()
            total = t if total is None else total + t
        assert total is not None
        return total


def build_regularizers(options: Sequence[RegularizerOptions], model: nn.Module, task: Any,
                       data: Any = None) -> RegularizerSet | None:
    """The regularisers ``options`` name (``cfg.regularizers``), set up on ``model`` as it is
    now (its starting weights); ``None`` when none are configured."""
    if not options:
        return None
    ctx = RegularizerContext(model, task, data)
    regs = []
    for o in options:
        r = get(o.name)(o)
        r.setup(ctx)
        regs.append(r)
    return RegularizerSet(regs)
