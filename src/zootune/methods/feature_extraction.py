"""``fe``: Feature Extraction from the whole zoo (paper appendix B.1, Table 6).

The paper: FE "extracts the features (specifically, features of the penultimate layers) from
all the source models in the model zoo and concatenates them to serve as the new features for
the target data. It then trains a target classifier with the concatenated features."

* The m sources, up to their penultimate layer, are frozen (no gradients, eval mode: BatchNorm
  uses the sources' own statistics); only ``nn.Linear(m * d, classes)`` is trained, at the
  task head's place (so ``optim.head_lr`` applies to it).
* Features are computed on the fly from the (augmented) training inputs of every step, like
  every other method, rather than cached once.
* ``finetuned: true`` (**FE+Finetuned**): the extractors are the sources fine-tuned on the target
  first (stages ``finetune_<member>``, shared with the other baselines).

Classification only. Training and inference both forward all m sources (m x one source's FLOPs
and parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from zootune.methods._sources import (
    Frozen,
    SourcesOptions,
    finetune_stages,
    finetuned_models,
    head_input_extractor,
    member_models,
    selected_members,
    set_module,
    task_head,
)
from zootune.methods.base import BuildContext, Method, Stage, register


class FeatureConcatModel(nn.Module):
    """``x -> classifier(concat_i extractor_i(x))`` with frozen extractors.

    The classifier sits at ``head_name`` (the task head's name in the source architecture).
    """

    def __init__(self, extractors: list[nn.Module], classifier: nn.Linear, head_name: str) -> None:
        super().__init__()
        self.extractors = Frozen(extractors)
        self.head_name = head_name
        set_module(self, head_name, classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.cat([torch.flatten(e(x), 1) for e in self.extractors], dim=1)
        return self.get_submodule(self.head_name)(f)


@register("fe")
class FeatureExtraction(Method):
    """Linear classifier on the concatenated penultimate features of the zoo (appendix B.1)."""

    class Options(SourcesOptions):
        #: extract features from the fine-tuned sources (FE+Finetuned)
        finetuned: bool = False

    def stages(self, cfg) -> list[Stage]:
        if not self.options.finetuned:
            return [Stage("main", cfg)]
        return finetune_stages(cfg, selected_members(cfg, self.options.sources)) + [Stage("main", cfg)]

    def build(self, ctx: BuildContext) -> nn.Module:
        members = selected_members(ctx.cfg, self.options.sources)
        if self.options.finetuned and not ctx.structure_only:
            sources = finetuned_models(ctx, members)
        else:
            sources = member_models(ctx, members)
        head = task_head(ctx)
        extractors, dims = zip(*(head_input_extractor(m, head) for m in sources))
        old = sources[0].get_submodule(head)
        classifier = nn.Linear(sum(dims), old.out_features).to(old.weight.device, old.weight.dtype)
        return FeatureConcatModel(list(extractors), classifier, head)
