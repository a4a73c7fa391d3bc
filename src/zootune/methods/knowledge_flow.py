"""``knowledge_flow``: Knowledge Flow (Liu, Peng & Schwing, ICLR 2019), the multi-teacher
baseline of the paper's Tables 1 and 2 and Figure 4.

In Knowledge Flow a student reads its teachers' intermediate features through learned
transforms while it trains, and its dependence on them is driven to zero so that the final
student works alone. Our version, with every choice the two papers leave open:

* **Teachers**: the *pretrained* zoo members (no fine-tuning stage, as in Liu et al.), frozen,
  in eval mode.
* **Student**: zoo member ``student`` (default 0) with a fresh task head (pretrained, like every
  other method of Table 1); ``student: scratch`` re-initialises it (Liu et al.'s RL setting).
* **Layers** (``layers``): where teacher features enter. Default: the residual stages
  ``layer1..layer4`` when the model has them (a ResNet), else the output of every activation
  module (one per conv block: e.g. the five blocks of the demo's MiniCNN). At each layer ``l``
  the student's output ``h^l`` becomes
  ``(1 - beta(t)) h^l + beta(t) * sum_i pi_i^l Q_i^l(t_i^l)``,
  where ``t_i^l`` is teacher i's output at the same layer, ``Q_i^l`` a learned 1x1 convolution
  (a Linear layer for 2-D features) initialised to the identity (same architecture, so the
  channels match), and ``pi^l = softmax(w^l)`` learned teacher weights (uniform at the start).
  The transforms and weights are the method's :meth:`extra_modules`: trained with the student,
  checkpointed, never exported.
* **Schedule**: ``beta(t) = beta0 * max(0, 1 - t / (anneal * steps))`` — linear from ``beta0``
  (0.5) to exactly 0 at ``anneal`` (0.5) of the budget. Liu et al. anneal a dependency loss
  instead; an explicit schedule guarantees the dependence is exactly zero, and the last
  ``1 - anneal`` of training adapts the student to working alone, so the evaluated and exported
  model is the plain student (one source's parameters and FLOPs). While ``beta > 0`` each step
  also forwards the m teachers; after that the teachers are not run at all. Liu et al.'s extra
  KL term (keeping predictions stable while the teachers fade) is not used: the teacher-free
  phase plays that role.

The training step counter ``t`` is a buffer of the extra modules, so a resumed run continues
the schedule exactly.

The mixing itself (:class:`~zootune.layers.knowledge_flow.FlowModules`, the forward hook, the
schedule, the feature capture) lives in :mod:`zootune.layers.knowledge_flow`, shared with the RL
version (``zootune rl tune GAME --method knowledge_flow``, :mod:`zootune.rl.knowledge_flow`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from pydantic import Field
from torch import nn

from zootune.layers.knowledge_flow import (
    FeedHook,
    FlowModules,
    capture_features,
    flow_beta,
)
from zootune.methods._sources import (
    Frozen,
    SourcesOptions,
    member_models,
    resolve_member,
    selected_members,
)
from zootune.methods.base import BuildContext, Method, MethodError, register
from zootune.methods.single import reset_parameters

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Mish)


def default_layers(model: nn.Module, head: str | None = None) -> list[str]:
    """``layer1..layerN`` of a ResNet; else every activation module outside the head."""
    top = [n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)]
    if top:
        return top
    return [n for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)
            and not (head and (n == head or n.startswith(head + ".")))]


@register("knowledge_flow")
class KnowledgeFlow(Method):
    """Knowledge Flow from the pretrained zoo: see the module docstring."""

    class Options(SourcesOptions):
        #: the member the student starts from (index or name), or ``scratch``
        student: int | str = 0
        #: module names where teacher features enter (default: see the module docstring)
        layers: list[str] | None = None
        #: teachers' share of each chosen layer's output at the start
        beta: float = Field(default=0.5, ge=0.0, le=1.0)
        #: fraction of the budget over which beta falls linearly to 0
        anneal: float = Field(default=0.5, gt=0.0, le=1.0)

    def build(self, ctx: BuildContext) -> nn.Module:
        o = self.options
        members = selected_members(ctx.cfg, o.sources)
        names = list(ctx.zoo.names)
        if o.student == "scratch":
            student = reset_parameters(member_models(ctx, [names[0]])[0])
        else:
            student = member_models(ctx, [resolve_member(o.student, names)])[0]
        layers = list(o.layers) if o.layers else default_layers(student, ctx.task.head_name)
        if not layers:
            raise MethodError("knowledge_flow found no layer to feed teacher features into; "
                              "name them with method.layers")
        for n in layers:
            try:
                student.get_submodule(n)
            except AttributeError:
                raise MethodError(f"knowledge_flow: the model has no module {n!r} (method.layers)") from None
        self.layers = layers
        self.total_steps = max(int(ctx.cfg.train.steps), 1)
        self.teachers = Frozen(member_models(ctx, members))
        self._feed: dict[str, list[torch.Tensor]] | None = None
        self._beta = 0.0
        examples = self._example_features(student, ctx)
        try:
            self.flow = FlowModules(layers, examples, len(members))
        except ValueError as exc:
            raise MethodError(str(exc)) from None
        for n in layers:
            student.get_submodule(n).register_forward_hook(FeedHook(self, n))
        return student

    def _example_features(self, student: nn.Module, ctx: BuildContext) -> dict[str, torch.Tensor]:
        x = getattr(ctx.task, "example_input", None)
        if x is None:
            raise MethodError("knowledge_flow needs an example input to size its transforms "
                              "(a task bound to data, e.g. classification)")
        feats = self._capture(student, {ctx.task.input_field: x}, ctx.task, train=False)
        missing = [n for n in self.layers if n not in feats]
        if missing:
            raise MethodError(f"knowledge_flow: layer {missing[0]!r} is not used in the forward pass")
        return feats

    def _capture(self, model: nn.Module, batch: dict[str, Any], task: Any,
                 train: bool | None = None) -> dict[str, torch.Tensor]:
        return capture_features(model, self.layers, lambda: task.forward(model, batch), train=train)

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"knowledge_flow": self.flow}

    def beta(self, step: int) -> float:
        """``beta0 * max(0, 1 - step / (anneal * steps))``."""
        o = self.options
        return flow_beta(step, o.beta, o.anneal, self.total_steps)

    def loss(self, model: nn.Module, batch: dict[str, Any], task: Any) -> tuple[torch.Tensor, Any]:
        step = int(self.flow.step)
        beta = self.beta(step) if model.training else 0.0
        if model.training and torch.is_grad_enabled():
            self.flow.step += 1
        if beta <= 0.0:
            outputs = task.forward(model, batch)
            return task.loss(outputs, batch), outputs
        self.teachers.to(self.flow.step.device)
        per_teacher = [self._capture(t, batch, task) for t in self.teachers]
        self._feed = {n: [f[n] for f in per_teacher] for n in self.layers}
        self._beta = beta
        try:
            outputs = task.forward(model, batch)
        finally:
            self._feed = None
        return task.loss(outputs, batch), outputs
