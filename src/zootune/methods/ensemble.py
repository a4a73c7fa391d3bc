"""``ensemble``: the mean of the fine-tuned sources' predictions (paper §4.2, Table 1).

Every selected zoo member is first fine-tuned on the target with the run's own recipe, budget
and seed (one stage ``finetune_<member>`` each, the very config of the ``finetune`` baseline, so
:mod:`zootune.compare` reuses them); the final stage trains nothing (``train.steps: 0``): it
builds :class:`EnsembleModel` from the fine-tuned members, evaluates and saves it. The saved
model is an ordinary ``nn.Module`` file, so ``zootune eval`` and ``zootune.load(run)`` work on it.

Cost: training is m fine-tunings; **inference runs all m members** (m times one model's FLOPs
and parameters), the cost the paper holds against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from zootune.methods._sources import (
    SourcesOptions,
    finetune_stages,
    finetuned_models,
    member_models,
    selected_members,
)
from zootune.methods.base import BuildContext, Method, MethodError, Stage, register


class EnsembleModel(nn.Module):
    """Averages its members' outputs; inference costs m models.

    ``average="outputs"`` (default, any task): the arithmetic mean of the members' outputs
    (logits for a classifier, coordinates for a regressor). ``"probabilities"`` (classifiers):
    the log of the mean of the members' softmax probabilities, so the output still works as
    logits (cross-entropy and argmax read it as the mean predicted distribution).
    """

    def __init__(self, members: Sequence[nn.Module], average: str = "outputs") -> None:
        super().__init__()
        if not members:
            raise MethodError("an ensemble needs at least one member")
        if average not in ("outputs", "probabilities"):
            raise MethodError(f"ensemble average must be 'outputs' or 'probabilities', got {average!r}")
        self.members = nn.ModuleList(members)
        self.average = average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])
        if self.average == "probabilities":
            return outs.float().softmax(dim=-1).mean(dim=0).clamp_min(1e-30).log()
        return outs.mean(dim=0)


@register("ensemble")
class Ensemble(Method):
    """Ensemble of the fine-tuned sources (paper Table 1): see the module docstring."""

    class Options(SourcesOptions):
        #: ``outputs``: mean of the outputs (logits); ``probabilities``: mean of the softmax
        average: Literal["outputs", "probabilities"] = "outputs"

    def stages(self, cfg) -> list[Stage]:
        members = selected_members(cfg, self.options.sources)
        main = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 0})})
        return finetune_stages(cfg, members) + [Stage("main", main)]

    def build(self, ctx: BuildContext) -> nn.Module:
        members = selected_members(ctx.cfg, self.options.sources)
        if ctx.structure_only:  # weights are loaded afterwards
            models = member_models(ctx, members)
        else:
            models = finetuned_models(ctx, members)
        # nothing is trained in this stage; the ensemble has no single task head (each member's
        # head was trained in its own stage), which train.optim.param_groups tolerates
        return EnsembleModel(models, self.options.average)
