"""Shared pieces of the multi-model baselines (ensemble, distill, CED, FE, Knowledge Flow).

* :func:`zoo_member_names`: the zoo's member names from a config alone (no weights are read),
  so that :meth:`Method.stages` can name one stage per source before the zoo is loaded.
* :class:`SourcesOptions` / :func:`finetune_stages` / :func:`finetuned_models`: methods that
  need *fine-tuned* sources (paper §4.2: "the ensemble of fine-tuned source models"; appendix
  B.1: "+Finetuned") run one stage ``finetune_<member>`` per source, with the method's own
  config but ``method: {name: finetune, source: <member>}`` — exactly the config of the
  ``finetune`` baseline for that member, so that :mod:`zootune.compare` (which stores runs by the
  hash of their config) trains each fine-tuned source once and reuses it everywhere.
* :class:`Frozen`: teachers and feature extractors, used but never trained (no gradients,
  always in eval mode, whatever ``.train()`` the trainer calls).
* :func:`head_input_extractor`, :func:`set_module`: the penultimate features of a model (its task
  head replaced by ``nn.Identity``) and placing a module at a dotted name.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from torch import nn

from zootune.methods.base import BuildContext, MethodError, MethodOptions, Stage

if TYPE_CHECKING:  # pragma: no cover
    from zootune.config import Config

__all__ = ["Frozen", "SourcesOptions", "finetune_stages", "finetuned_models", "head_input_extractor",
           "resolve_member", "selected_members", "set_module", "stage_name", "zoo_member_names"]


def zoo_member_names(cfg: Config) -> list[str]:
    """Names the loaded zoo of ``cfg`` will have (``Zoo.names``), from the config alone.

    Mirrors :func:`zootune.train.build.zoo_specs` (which ``methods`` may not import): a spec
    or preset is expanded by :func:`zootune.zoo.load.expand_specs`; the ``builder`` shorthand
    names members by ``zoo.names``, the checkpoint file stems or ``random<i>``.
    """
    from zootune.zoo.load import expand_specs, unique_names

    zc = cfg.zoo
    if zc.spec is not None:
        try:
            specs, _ = expand_specs(zc.spec)
        except Exception as exc:  # noqa: BLE001 - a bad spec is reported when the zoo loads
            raise MethodError(f"cannot read the zoo's member names from zoo.spec: {exc}") from None
        return unique_names([s.label for s in specs])
    if zc.checkpoints:
        return list(zc.names or [Path(c).stem for c in zc.checkpoints])
    if zc.random_sources:
        return list(zc.names or [f"random{i}" for i in range(zc.random_sources)])
    raise MethodError("the zoo is not configured (zoo.spec, or zoo.builder with checkpoints)")


def resolve_member(source: int | str, names: Sequence[str]) -> str:
    """The member name that ``source`` (an index or a name) designates."""
    if isinstance(source, str):
        if source not in names:
            raise MethodError(f"source {source!r} is not a zoo member; members: {', '.join(names)}")
        return source
    if not 0 <= source < len(names):
        raise MethodError(f"source index {source} is out of range: the zoo has {len(names)} "
                          f"members ({', '.join(names)})")
    return names[source]


def selected_members(cfg: Config, sources: Iterable[int | str] | None) -> list[str]:
    """The members a method uses: ``sources`` (indices or names), or every member."""
    names = zoo_member_names(cfg)
    if sources is None:
        return names
    chosen = [resolve_member(s, names) for s in sources]
    if len(set(chosen)) != len(chosen):
        raise MethodError(f"method.sources names a member twice: {chosen}")
    if not chosen:
        raise MethodError("method.sources is empty")
    return chosen


def stage_name(member: str) -> str:
    """``finetune_<member>``, made safe as a folder name."""
    return "finetune_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", member)


class SourcesOptions(MethodOptions):
    """Options of methods built from several zoo members."""

    #: which zoo members (indices or names); default: all of them
    sources: list[int | str] | None = Field(default=None)


def finetune_stages(cfg: Config, members: Sequence[str]) -> list[Stage]:
    """One stage per member: ``cfg`` with ``method: {name: finetune, source: member}``.

    Same recipe, budget, data and seed as the method's own run (the paper's fine-tuned sources
    are trained like the ``finetune`` baseline).
    """
    from zootune.methods.single import FineTune

    return [Stage(stage_name(m), cfg.model_copy(update={
        "method": FineTune.Options(name="finetune", source=m)})) for m in members]


def finetuned_models(ctx: BuildContext, members: Sequence[str]) -> list[nn.Module]:
    """Deep copies of the fine-tuned members (results of :func:`finetune_stages`)."""
    out = []
    for m in members:
        res = ctx.previous.get(stage_name(m))
        if res is None:
            raise MethodError(f"the fine-tuned source {m!r} (stage {stage_name(m)!r}) is missing: "
                              "run the method through zootune tune / run_config, which trains it")
        out.append(copy.deepcopy(res.model))
    return out


def member_models(ctx: BuildContext, members: Sequence[str]) -> list[nn.Module]:
    """Copies of the *pretrained* members, adapted to the task (``task.prepare_zoo``: e.g. the
    same fresh head on each); only the members asked for are copied."""
    names = list(getattr(ctx.zoo, "names", []) or [])
    idx = [names.index(m) if m in names else i for i, m in enumerate(members)]
    return ctx.task.prepare_zoo([copy.deepcopy(ctx.zoo[i]) for i in idx])


def task_head(ctx: BuildContext) -> str | None:
    """The task head's module name (binding the task's head to one copied member if needed)."""
    if ctx.task.head_name is None:
        ctx.task.prepare_zoo([copy.deepcopy(ctx.zoo[0])])
    return ctx.task.head_name


def best_on_validation(ctx: BuildContext, members: Sequence[str], metric: str,
                       higher_is_better: bool) -> str:
    """The member whose fine-tuned model scored best on *validation* (its stage's metrics)."""
    scored = []
    for m in members:
        res = ctx.previous.get(stage_name(m))
        val = (res.metrics.get("val") or {}) if res is not None else {}
        if metric in val:
            scored.append((float(val[metric]), m))
    if not scored:
        raise MethodError("student: best needs the fine-tuned sources' validation metrics "
                          "(a validation split and fine-tuned stages)")
    return (max if higher_is_better else min)(scored)[1]


class Frozen(nn.Module):
    """Modules that are used but never trained: no gradients, always in eval mode.

    Teachers and frozen feature extractors live here; ``.train(True)`` from the trainer (or from
    a FLOP counter) leaves them in eval mode, so their BatchNorm statistics never change.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(modules)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` under ``root``, creating empty parents as needed."""
    parts = name.split(".")
    node = root
    for p in parts[:-1]:
        if not hasattr(node, p):
            node.add_module(p, nn.Module())
        node = getattr(node, p)
    node.add_module(parts[-1], module)


def head_input_extractor(model: nn.Module, head_name: str | None) -> tuple[nn.Module, int]:
    """``(copy of model with its task head replaced by nn.Identity, head input width)``.

    The result outputs the penultimate features (the paper's "features of the penultimate
    layers", appendix B.1). The head must be an ``nn.Linear`` (classification).
    """
    if not head_name:
        raise MethodError("this method needs the task's head (a classification task)")
    head = model.get_submodule(head_name)
    if not isinstance(head, nn.Linear):
        raise MethodError(f"this method needs a linear task head, but {head_name!r} is a "
                          f"{type(head).__name__}")
    out = copy.deepcopy(model)
    out.set_submodule(head_name, nn.Identity())
    return out, int(head.in_features)

