"""``zootune rl tune GAME --method knowledge_flow``: Knowledge Flow (Liu, Peng & Schwing,
ICLR 2019) for DER agents, the multi-source baseline of the paper's Figure 4.

The same method as the classification one (:mod:`zootune.methods.knowledge_flow`), with its
mixing code (:mod:`zootune.layers.knowledge_flow`: :class:`FlowModules`, :class:`FeedHook`,
:func:`flow_beta`, :func:`capture_features`); only the wiring into the agent loop is here.

* **Teachers**: every source agent's two convolutions and their ReLUs (:class:`DERTrunk`;
  the sources' heads differ in action count and are not used), frozen, in eval mode (a DER
  trunk has no noise), forwarded under ``torch.no_grad()``.
* **Student**: a fresh DER network (``method.student: scratch``, the default: Liu et al.'s RL
  setting trains the student from scratch); ``method.student=<source index or game>`` starts
  its convs from that source instead (its head is new either way).
* **Layers** (``method.layers``, default ``[conv1, conv2]``: the layers the sources share):
  each named conv's output *after its ReLU* (modules ``act1``, ``act2``) becomes
  ``(1 - beta(t)) h + beta(t) * sum_i pi_i Q_i(t_i)``, ``Q_i`` a 1x1 conv initialised to the
  identity, ``pi = softmax(w)`` (uniform at the start). ``Q_i`` and ``w`` are parameters of
  the online network, so Adam trains them and checkpoints hold them.
* **Schedule**: ``beta(t) = beta0 * max(0, 1 - t / (anneal * run.steps))`` over *agent steps*
  ``t`` (``method.beta`` 0.5, ``method.anneal`` 0.5): exactly 0 from ``anneal * run.steps``
  on, after which no teacher is run. The step is the ``flow.step`` buffer, set by the loop from
  its step counter before each act and each update (so it resumes with the checkpoint).
* **Where the mix applies**: in train mode only — acting, the double-Q choice, the target
  computation and the training forward all use it while ``beta > 0``; evaluation (eval mode)
  is the plain student, as in the classification method, and so is the saved model.
* **Target network**: a copy of :class:`KnowledgeFlowDER` with its own student, transforms
  and teacher weights and the *same* (shared, frozen) teachers, refreshed with the online
  network's state every ``agent.target_update`` updates like any DER target. At a given step
  both networks use the same ``beta`` (the loop sets both steps) and the same teachers; the
  target uses the *target copy* of ``Q_i`` and ``w`` — the usual DQN choice for every trainable
  part of the network, and the simplest faithful one. Sharing the teachers lets the target
  reuse the teacher features of ``next_obs`` that the double-Q choice just computed
  (:class:`TeacherTrunks`): 4 teacher-trunk forwards per update instead of 6.
* **Saved model**: :meth:`KnowledgeFlowDER.export` — the plain student DER network (one
  source's parameters and FLOPs), loadable by :func:`zootune.rl.load_agent`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from zootune.config import ConfigError
from zootune.layers.knowledge_flow import (
    FeedHook,
    FlowModules,
    capture_features,
    flow_beta,
)
from zootune.methods._sources import Frozen
from zootune.rl.network import DERNetwork

#: ``method.layers`` names knowledge_flow accepts -> the module whose output is fed
FED_MODULES = {"conv1": "act1", "conv2": "act2"}


class DERTrunk(nn.Module):
    """A DER network's convolutions and activations (``conv1``, ``act1``, ``conv2``,
    ``act2``; the same module names as the network's): ``forward(obs) -> features (B, C, h, w)``."""

    def __init__(self, net: DERNetwork) -> None:
        super().__init__()
        self.conv1, self.act1, self.conv2, self.act2 = net.conv1, net.act1, net.conv2, net.act2

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = DERNetwork.scale(obs)
        return self.act2(self.conv2(self.act1(self.conv1(x))))


class TeacherTrunks(Frozen):
    """The teachers' trunks (frozen, eval mode) and their features at the fed layers.

    The features of the last batch are kept: the double-Q choice (online network) and the
    target distribution (target network) both read the same ``next_obs``, and since the online
    and target networks share these frozen teachers the second call costs nothing. A cached
    result is used only for the very same tensor object and layers, with neither the tensor nor
    a teacher's weights modified since (their ``_version`` counters).
    """

    def __init__(self, teachers: list[DERNetwork]) -> None:
        super().__init__(DERTrunk(t) for t in teachers)
        self._last: tuple[torch.Tensor, tuple[Any, ...], list[dict[str, torch.Tensor]]] | None = None

    def features(self, obs: torch.Tensor, layers: list[str]) -> list[dict[str, torch.Tensor]]:
        """``[{layer: output}]`` per teacher, computed under ``torch.no_grad()``."""
        key = (obs._version, tuple(layers), tuple(p._version for p in self.parameters()))
        last = self._last
        if last is not None and last[0] is obs and last[1] == key:
            return last[2]
        feats = [capture_features(t, layers, lambda t=t: t(obs)) for t in self.members]
        self._last = (obs, key, feats)
        return feats

    def _apply(self, fn, recurse=True):  # a device or dtype move drops the cache
        self._last = None
        return super()._apply(fn, recurse)


class KnowledgeFlowDER(nn.Module):
    """The online (and target) network of ``knowledge_flow``: see the module docstring.

    Args:
        student: the DER network that is trained and saved.
        teachers: the source agents (any action count; only their trunks are kept).
        layers: ``method.layers`` names (``conv1``, ``conv2``).
        beta, anneal: the schedule's ``beta0`` and the fraction of ``total_steps`` it lasts.
        total_steps: the run's budget in agent steps.
        screen_size: the frames' height and width (to size the transforms).
    """

    def __init__(self, student: DERNetwork, teachers: list[DERNetwork], layers: list[str],
                 beta: float, anneal: float, total_steps: int, screen_size: int = 84) -> None:
        super().__init__()
        bad = [n for n in layers if n not in FED_MODULES]
        if bad or not layers or len(set(layers)) != len(layers):
            raise ConfigError(f"knowledge_flow feeds teacher features after {', '.join(FED_MODULES)} "
                              f"(the layers the sources share); method.layers={list(layers)}")
        if not teachers:
            raise ConfigError("knowledge_flow needs at least one teacher")
        self.student = student
        self.teachers = TeacherTrunks(teachers)
        self.config_layers = list(layers)
        self.layers = [FED_MODULES[n] for n in layers]
        self.beta0, self.anneal, self.total_steps = float(beta), float(anneal), max(int(total_steps), 1)
        example = torch.zeros(1, student.conv1.in_channels, screen_size, screen_size)
        examples = capture_features(student, self.layers, lambda: student.trunk(example), train=False)
        for n in self.layers:
            for i, t in enumerate(self.teachers):
                shape = tuple(capture_features(t, [n], lambda t=t: t(example))[n].shape)
                if shape != tuple(examples[n].shape):
                    raise ConfigError(f"knowledge_flow: teacher {i}'s {n} output has shape {shape}, "
                                      f"the student's {tuple(examples[n].shape)}")
        self.flow = FlowModules(self.layers, examples, len(self.teachers))
        self._feed: dict[str, list[torch.Tensor]] | None = None
        self._beta = 0.0
        for n in self.layers:
            student.get_submodule(n).register_forward_hook(FeedHook(self, n))

    @property
    def num_actions(self) -> int:
        return self.student.num_actions

    def set_step(self, step: int) -> None:
        """The agent step the schedule is at (the loop sets it before each act and update)."""
        self.flow.step.fill_(int(step))

    def beta(self, step: int | None = None) -> float:
        """``beta0 * max(0, 1 - step / (anneal * total_steps))`` (default: the current step)."""
        step = int(self.flow.step) if step is None else step
        return flow_beta(step, self.beta0, self.anneal, self.total_steps)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        beta = self.beta() if self.training else 0.0
        if beta <= 0.0:
            return self.student(obs)
        per_teacher = self.teachers.features(obs, self.layers)
        self._feed = {n: [f[n] for f in per_teacher] for n in self.layers}
        self._beta = beta
        try:
            return self.student(obs)
        finally:
            self._feed = None

    def teacher_weights(self) -> dict[str, list[float]]:
        """``{conv name: pi}``: the learned teacher weights at each fed layer."""
        pi = self.flow.teacher_weights()
        return {c: pi[m] for c, m in zip(self.config_layers, self.layers)}

    def __deepcopy__(self, memo: dict) -> KnowledgeFlowDER:
        """A copy (the target network) with its own student and transforms and the *same*
        frozen teachers (not copied: they never change)."""
        memo.setdefault(id(self.teachers), self.teachers)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new

    def export(self) -> DERNetwork:
        """A copy of the student without the feed hooks: the plain DER network a run saves."""
        net = copy.deepcopy(self.student, {id(self): None})  # the hooks' owner is not copied
        for m in net.modules():
            for k, h in list(m._forward_hooks.items()):
                if isinstance(h, FeedHook):
                    del m._forward_hooks[k]
        return net

