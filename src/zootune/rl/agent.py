"""Building the online network for a method, and reading/writing agent model files.

Agent model files are in the library's one model format (:func:`zootune.save`): a plain DER
network (``train-source``, ``scratch``, ``finetune``, exported ``zoo_tuning_lite``, the
student of ``knowledge_flow``) or a ZooModel file (per-sample ``zoo_tuning``). Their metadata
carries ``{"rl": {game, num_actions, agent, env, method}}`` so :func:`load_agent` rebuilds them
without a template.

Transfer (paper §4.1, A.1): only ``conv1`` and ``conv2`` come from the sources; the noisy
dueling head is new. Every source is loaded into a DER network of its *own* action count (a
source's head may differ from the target's), its two convs are copied into a copy of one fresh
target network, and ``zoo_tuning`` aggregates those copies with
``zoo_tune(..., layers=["conv1", "conv2"])`` — whose ``rest="average"`` of identical fresh heads
is that fresh head. ``knowledge_flow`` (:mod:`zootune.rl.knowledge_flow`) keeps every source's
two convs as a frozen teacher of a fresh student.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zootune.config import ConfigError
from zootune.errors import CheckpointError, ZootuneError
from zootune.rl.config import AgentConfig, EnvConfig, MethodConfig
from zootune.rl.network import DERNetwork

TRANSFERRED = ("conv1", "conv2")


class SourceError(ZootuneError, ValueError):
    """The method's sources are missing, or the wrong number for the method."""


def agent_metadata(game: str, num_actions: int, agent: AgentConfig, env: EnvConfig,
                   method: str) -> dict[str, Any]:
    return {"rl": {"game": game, "num_actions": int(num_actions), "method": method,
                   "agent": agent.model_dump(mode="json"), "env": env.model_dump(mode="json")}}


def _rl_meta(path: Path) -> dict[str, Any]:
    from zootune.export import read_metadata

    rl = (read_metadata(path).get("extra") or {}).get("rl")
    if not isinstance(rl, dict) or "num_actions" not in rl:
        raise CheckpointError(f"{path} is not a zootune RL agent file (no 'rl' metadata): "
                              "write sources with `zootune rl train-source`")
    return rl


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """An agent model file (plain DER network or ZooModel), rebuilt from its metadata."""
    import zootune

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    rl = _rl_meta(path)
    agent = AgentConfig.model_validate(rl["agent"])
    env = EnvConfig.model_validate(rl.get("env") or {})
    template = DERNetwork(rl["num_actions"], agent, env.frame_stack, env.screen_size)
    return zootune.load(path, template=template, device=device)


def load_source(path: str | Path, agent: AgentConfig, env: EnvConfig) -> DERNetwork:
    """A source agent as a plain DER network of its own action count.

    Its file must hold a DER network of this run's shape (up to the action count); the first
    tensor that differs is named in one :class:`CheckpointError` line.
    """
    from zootune.export import load_state_into, read_metadata

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"source agent file {str(path)!r} does not exist")
    rl = _rl_meta(path)
    if read_metadata(path).get("kind") == "zoo_model":
        raise CheckpointError(f"{path} is a per-sample Zoo-Tuning agent (a ZooModel): a source "
                              "must be a plain DER network (train-source, finetune, scratch or lite)")
    net = DERNetwork(int(rl["num_actions"]), agent, env.frame_stack, env.screen_size)
    load_state_into(net, path)
    return net


def _source_index(source: int | str, games: list[str]) -> int:
    if isinstance(source, str) and not source.lstrip("-").isdigit():
        low = [g.lower() for g in games]
        if source.lower() not in low:
            raise SourceError(f"method.source {source!r} is not a source game; sources: {', '.join(games)}")
        return low.index(source.lower())
    i = int(source)
    if not 0 <= i < len(games):
        raise SourceError(f"method.source={i} but there are {len(games)} source(s): {', '.join(games)}")
    return i


def build_online(method: MethodConfig, num_actions: int, agent: AgentConfig, env: EnvConfig,
                 seed: int, steps: int | None = None) -> nn.Module:
    """The network a method trains on ``num_actions`` (see the module docstring); ``steps``
    (the run's budget, default ``run.steps``'s default) times ``knowledge_flow``'s schedule."""
    torch.manual_seed(seed)
    fresh = DERNetwork(num_actions, agent, env.frame_stack, env.screen_size)
    if method.name == "scratch":
        return fresh
    if not method.sources:
        raise SourceError(f"method {method.name!r} needs source agents: method.sources=[A.safetensors, ...]"
                          " (from `zootune rl train-source`)")
    games = [str(_rl_meta(Path(p) / "model.safetensors" if Path(p).is_dir() else Path(p)).get("game", p))
             if Path(p).exists() else str(p) for p in method.sources]
    if method.name == "finetune":
        i = _source_index(method.source, games)
        return _with_convs(fresh, load_source(method.sources[i], agent, env))
    if len(method.sources) < 2:
        what = "learns from a zoo of teachers" if method.name == "knowledge_flow" else "aggregates a zoo"
        raise SourceError(f"method {method.name!r} {what}: give at least 2 sources, got 1")
    if method.name == "knowledge_flow":
        return _knowledge_flow(fresh, method, agent, env, games, steps)
    import zootune

    zoo = [_with_convs(fresh, load_source(p, agent, env)) for p in method.sources]
    torch.manual_seed(seed + 1)
    plan = method.kernel if isinstance(method.kernel, dict) else None
    if plan is not None:
        convs = {n for n, mod in fresh.named_modules() if isinstance(mod, nn.Conv2d)}
        if set(plan) - convs:
            raise ConfigError(f"method.kernel: {sorted(set(plan) - convs)} are not convolutions of the "
                              f"DER network ({', '.join(sorted(convs))})")
    zm = zootune.zoo_tune(zoo, layers=list(method.layers), align=method.align,
                          lite=method.name == "zoo_tuning_lite", gate=method.gate,
                          gate_init=method.gate_init, kernel="stacked" if plan else method.kernel,
                          recompute=method.recompute)
    if plan:  # entries for convs that method.layers leaves out have nothing to set
        zm.set_kernels({n: k for n, k in plan.items() if n in zm.adaagg_layers()})
    return zm


def _knowledge_flow(fresh: DERNetwork, method: MethodConfig, agent: AgentConfig, env: EnvConfig,
                    games: list[str], steps: int | None) -> nn.Module:
    from zootune.rl.config import RunConfig
    from zootune.rl.knowledge_flow import KnowledgeFlowDER

    teachers = [load_source(p, agent, env) for p in method.sources]
    student = fresh
    if method.student != "scratch":
        student = _with_convs(fresh, teachers[_source_index(method.student, games)])
    return KnowledgeFlowDER(student, teachers, list(method.layers), method.beta, method.anneal,
                            steps if steps is not None else RunConfig().steps, env.screen_size)


def _with_convs(fresh: DERNetwork, source: DERNetwork) -> DERNetwork:
    net = copy.deepcopy(fresh)
    src = source.state_dict()
    own = net.state_dict()
    for layer in TRANSFERRED:
        for kind in ("weight", "bias"):
            key = f"{layer}.{kind}"
            if src[key].shape != own[key].shape:
                raise CheckpointError(f"source tensor '{key}' has shape {tuple(src[key].shape)}, "
                                      f"this run's network {tuple(own[key].shape)}")
            own[key] = src[key].clone()
    net.load_state_dict(own)
    return net


def final_network(online: nn.Module) -> nn.Module:
    """What a run saves as its model: lite Zoo-Tuning exported to a plain DER network (Eq. 5),
    knowledge_flow's plain student; anything else as it is."""
    from zootune.convert import ZooModel
    from zootune.rl.knowledge_flow import KnowledgeFlowDER

    if isinstance(online, ZooModel) and online.lite:
        return online.export()
    if isinstance(online, KnowledgeFlowDER):
        return online.export()
    return online
