"""Knowledge Flow's feature mixing (Liu, Peng & Schwing, ICLR 2019), shared by the
classification method (:mod:`zootune.methods.knowledge_flow`) and the RL agent
(:mod:`zootune.rl.knowledge_flow`): one method in two settings.

At each chosen layer ``l`` a student's output ``h^l`` becomes
``(1 - beta(t)) h^l + beta(t) * sum_i pi_i^l Q_i^l(t_i^l)`` where ``t_i^l`` is teacher i's
output at the same layer, ``Q_i^l`` a learned 1x1 convolution (a Linear layer for 2-D
features) initialised to the identity and ``pi^l = softmax(w^l)`` (uniform at the start).

* :class:`FlowModules`: the ``Q_i^l``, the ``w^l`` and the step counter ``t`` (a buffer, so
  a checkpoint holds it);
* :class:`FeedHook`: the forward hook on a student layer that applies the mix while its owner
  holds teacher features (``owner._feed``, ``owner._beta``, ``owner.flow``);
* :func:`flow_beta`: the schedule, linear from ``beta0`` to exactly 0 at ``anneal`` of the budget;
* :func:`capture_features`: teacher (or student) outputs at the chosen layers, without gradients.

Needs only torch, like the rest of :mod:`zootune.layers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def identity_transform(x: torch.Tensor) -> nn.Module:
    """``Q``: a 1x1 conv (4-D features) or a Linear layer (2-D) equal to the identity.

    Raises ``ValueError`` for other shapes."""
    c = x.shape[1]
    if x.dim() == 4:
        q: nn.Module = nn.Conv2d(c, c, 1, bias=True)
        nn.init.zeros_(q.bias)
        with torch.no_grad():
            q.weight.copy_(torch.eye(c).view(c, c, 1, 1))
    elif x.dim() == 2:
        q = nn.Linear(c, c)
        nn.init.zeros_(q.bias)
        with torch.no_grad():
            q.weight.copy_(torch.eye(c))
    else:
        raise ValueError(f"knowledge_flow: features of shape {tuple(x.shape)} are not supported "
                         "(4-D conv maps or 2-D vectors)")
    return q


class FlowModules(nn.Module):
    """The learned transforms ``Q_i^l``, teacher weights ``w^l`` and the step counter."""

    def __init__(self, layers: list[str], examples: dict[str, torch.Tensor], num_teachers: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.transforms = nn.ModuleDict()
        self.weights = nn.ParameterDict()
        for name in layers:
            key = name.replace(".", "__")
            self.transforms[key] = nn.ModuleList(identity_transform(examples[name])
                                                 for _ in range(num_teachers))
            self.weights[key] = nn.Parameter(torch.zeros(num_teachers))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def mix(self, name: str, feats: list[torch.Tensor]) -> torch.Tensor:
        """``sum_i pi_i Q_i(feats[i])`` at layer ``name``."""
        key = name.replace(".", "__")
        pi = self.weights[key].softmax(0)
        return sum(pi[i] * q(f) for i, (q, f) in enumerate(zip(self.transforms[key], feats)))

    def teacher_weights(self) -> dict[str, list[float]]:
        """``{layer: pi^l}`` (the softmax of ``w^l``), for logs."""
        return {name: self.weights[name.replace(".", "__")].detach().softmax(0).tolist()
                for name in self.layers}


def flow_beta(step: int, beta0: float, anneal: float, total_steps: int) -> float:
    """``beta0 * max(0, 1 - step / (anneal * total_steps))``: exactly 0 from
    ``anneal * total_steps`` on."""
    return beta0 * max(0.0, 1.0 - step / (anneal * total_steps))


class FeedHook:
    """Forward hook of student layer ``name``: while ``owner._feed`` holds teacher features for
    it, its output ``h`` becomes ``(1 - owner._beta) h + owner._beta * owner.flow.mix(name, ...)``;
    otherwise the output is left alone.

    A plain object (not a closure), so ``copy.deepcopy`` of a module that owns both the hooked
    student and the state (an RL target network) gives hooks bound to the copy's state.
    """

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, mod: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor | None:
        owner = self.owner
        feed = owner._feed
        if feed is None or self.name not in feed:
            return None
        return (1.0 - owner._beta) * out + owner._beta * owner.flow.mix(self.name, feed[self.name])


def capture_features(model: nn.Module, layers: Iterable[str], run: Callable[[], Any],
                     train: bool | None = None) -> dict[str, torch.Tensor]:
    """The outputs of ``model``'s modules ``layers`` (detached copies, first call of each) while
    ``run()`` runs it under ``torch.no_grad()``; ``train`` sets the mode for the call (restored
    after)."""
    feats: dict[str, torch.Tensor] = {}
    hooks = []
    for n in layers:
        def grab(mod, inp, out, n=n):
            feats.setdefault(n, out.detach().clone())
        hooks.append(model.get_submodule(n).register_forward_hook(grab))
    was = model.training
    try:
        if train is not None:
            model.train(train)
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return feats


__all__ = ["FeedHook", "FlowModules", "capture_features", "flow_beta", "identity_transform"]
