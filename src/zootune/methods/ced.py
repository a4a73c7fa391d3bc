"""``ced``: Concat-Ensemble-Distill (paper appendix B.1, Table 6).

The paper: "a shared backbone with multi-heads to distill the high-level features from each
source model in the zoo. Then it uses the concatenation of all these features from multi-heads
for the target task." Ours, with the details the paper leaves open:

* **Backbone**: zoo member ``student`` (default 0) up to its penultimate layer (pretrained).
* **Multi-heads**: one ``nn.Linear(d, d)`` per source, ``P_i``, mapping the backbone's
  penultimate features ``f`` (width ``d``) to a guess of source i's penultimate features.
* **Classifier**: ``nn.Linear(m * d, classes)`` on ``concat_i P_i(f)``. Heads and classifier
  together (:class:`ConcatHeads`) take the place of the task head (``optim.head_lr`` applies).
* **Loss**: ``task_loss + weight * mean_i MSE(P_i(f), t_i(x))`` with ``t_i`` source i's
  penultimate features (frozen, eval mode) and ``weight = 1`` (not tuned).
* ``finetuned: true`` (**CED+Finetuned**): the distilled features come from the sources after
  fine-tuning on the target (stages ``finetune_<member>``, shared with the other baselines);
  otherwise from the pretrained sources.

Classification only (the heads read the input of a linear task head). Inference: the backbone
plus the small heads (about one source's FLOPs); training also forwards the m sources.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zootune.methods._sources import (
    Frozen,
    SourcesOptions,
    best_on_validation,
    finetune_stages,
    finetuned_models,
    head_input_extractor,
    member_models,
    resolve_member,
    selected_members,
)
from zootune.methods.base import BuildContext, Method, Stage, register


class ConcatHeads(nn.Module):
    """``f -> classifier(concat_i P_i(f))``; keeps ``P_i(f)`` of the last call when asked."""

    def __init__(self, in_features: int, num_sources: int, num_outputs: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(in_features, in_features)
                                         for _ in range(num_sources))
        self.classifier = nn.Linear(num_sources * in_features, num_outputs)
        self.keep = False
        self.last: list[torch.Tensor] | None = None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        hs = [p(f) for p in self.projections]
        if self.keep:
            self.last = hs
        return self.classifier(torch.cat(hs, dim=-1))


@register("ced")
class ConcatEnsembleDistill(Method):
    """Concat-Ensemble-Distill (appendix B.1): see the module docstring."""

    class Options(SourcesOptions):
        #: distill features of the fine-tuned sources (CED+Finetuned) instead of the pretrained
        finetuned: bool = False
        #: the member the backbone starts from (index or name); ``best`` needs ``finetuned``
        student: int | str = 0
        #: weight of the feature-distillation term
        weight: float = Field(default=1.0, ge=0.0)

    def stages(self, cfg) -> list[Stage]:
        if not self.options.finetuned:
            return [Stage("main", cfg)]
        return finetune_stages(cfg, selected_members(cfg, self.options.sources)) + [Stage("main", cfg)]

    def build(self, ctx: BuildContext) -> nn.Module:
        o = self.options
        members = selected_members(ctx.cfg, o.sources)
        names = list(ctx.zoo.names)
        s = o.student
        if s == "best" and not ctx.structure_only:
            s = best_on_validation(ctx, members, ctx.task.primary_metric, ctx.task.higher_is_better)
        student = member_models(ctx, [names[0] if ctx.structure_only else resolve_member(s, names)])[0]
        head = ctx.task.head_name
        _, d = head_input_extractor(student, head)
        old = student.get_submodule(head)
        heads = ConcatHeads(d, len(members), old.out_features).to(old.weight.device, old.weight.dtype)
        student.set_submodule(head, heads)
        self.head = head
        self.teachers = None
        if not ctx.structure_only:
            sources = finetuned_models(ctx, members) if o.finetuned else member_models(ctx, members)
            self.teachers = Frozen(head_input_extractor(m, head)[0] for m in sources)
        return student

    def loss(self, model: nn.Module, batch: dict[str, Any], task: Any) -> tuple[torch.Tensor, Any]:
        heads: ConcatHeads = getattr(model, "module", model).get_submodule(self.head)
        if self.teachers is None or self.options.weight == 0.0:
            outputs = task.forward(model, batch)
            return task.loss(outputs, batch), outputs
        heads.keep = True
        try:
            outputs = task.forward(model, batch)
            guesses = heads.last
        finally:
            heads.keep, heads.last = False, None
        self.teachers.to(outputs.device)
        with torch.no_grad():
            targets = [task.forward(t, batch) for t in self.teachers]
        distill = torch.stack([F.mse_loss(g.float(), t.float()) for g, t in zip(guesses, targets)]).mean()
        return task.loss(outputs, batch) + self.options.weight * distill, outputs
