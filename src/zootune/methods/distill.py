"""``distill``: one student distilled from the ensemble of fine-tuned sources (paper §4.2, Table 1).

Stages: ``finetune_<member>`` for every selected source (shared with ``ensemble`` and the
``finetune`` baseline), then ``main``, which trains the student.

Choices the paper leaves open (documented here, options in brackets):

* **Student**: the pretrained zoo member ``student`` (default 0, the first member: the paper's
  zoo lists the ImageNet-supervised model first) with a fresh task head, so it starts from
  pretrained weights like every other method; ``student: best`` takes the member whose
  fine-tuned model scored best on *validation*.
* **Teacher**: the ensemble of the fine-tuned sources, frozen, in eval mode — the mean of their
  softmax probabilities at temperature ``T`` (the ``ensemble`` baseline's prediction).
* **Loss** (Hinton et al., 2015): ``(1 - alpha) * task_loss + alpha * T^2 *
  KL(p_teacher^T || p_student^T)`` with ``T = 4``, ``alpha = 0.5`` (``temperature``,
  ``alpha``; not tuned). For tasks that are not classification (``kd: mse``, chosen
  automatically) the distillation term is the mean squared error to the mean teacher output.

Cost: training forwards the student and the m teachers every step (after m fine-tunings);
**inference is the student alone**: one source's FLOPs and parameters.
"""

from __future__ import annotations

from typing import Any, Literal

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
    member_models,
    resolve_member,
    selected_members,
)
from zootune.methods.base import BuildContext, Method, Stage, register


def kd_mode(kd: str, task: Any) -> str:
    """``kl`` for classification tasks, ``mse`` otherwise (when ``kd`` is ``auto``)."""
    if kd != "auto":
        return kd
    from zootune.tasks.classification import ClassificationTask

    return "kl" if isinstance(task, ClassificationTask) else "mse"


def distillation_loss(student: torch.Tensor, teachers: list[torch.Tensor], mode: str,
                      temperature: float) -> torch.Tensor:
    """KD term: ``T^2 KL(mean_i softmax(t_i / T) || softmax(s / T))`` (``kl``, batch mean) or
    the mean squared error to ``mean_i t_i`` (``mse``)."""
    if mode == "kl":
        T = temperature
        p_t = torch.stack([t.float().div(T).softmax(-1) for t in teachers]).mean(0)
        log_s = student.float().div(T).log_softmax(-1)
        return F.kl_div(log_s, p_t, reduction="batchmean") * T * T
    target = torch.stack([t.float() for t in teachers]).mean(0)
    return F.mse_loss(student.float(), target)


@register("distill")
class Distill(Method):
    """Distillation from the ensemble of fine-tuned sources: see the module docstring."""

    class Options(SourcesOptions):
        #: the member the student starts from (index or name), or ``best`` (on validation)
        student: int | str = 0
        temperature: float = Field(default=4.0, gt=0.0)
        #: weight of the distillation term (1 - alpha on the task loss)
        alpha: float = Field(default=0.5, ge=0.0, le=1.0)
        kd: Literal["auto", "kl", "mse"] = "auto"

    def stages(self, cfg) -> list[Stage]:
        return finetune_stages(cfg, selected_members(cfg, self.options.sources)) + [Stage("main", cfg)]

    def build(self, ctx: BuildContext) -> nn.Module:
        members = selected_members(ctx.cfg, self.options.sources)
        names = list(ctx.zoo.names)
        s = self.options.student
        if ctx.structure_only:
            self.teachers = None
            return member_models(ctx, [names[0]])[0]
        if s == "best":
            s = best_on_validation(ctx, members, ctx.task.primary_metric, ctx.task.higher_is_better)
        student = member_models(ctx, [resolve_member(s, names)])[0]
        self.teachers = Frozen(finetuned_models(ctx, members))
        self.mode = kd_mode(self.options.kd, ctx.task)
        return student

    def loss(self, model: nn.Module, batch: dict[str, Any], task: Any) -> tuple[torch.Tensor, Any]:
        outputs = task.forward(model, batch)
        base = task.loss(outputs, batch)
        a = self.options.alpha
        if a == 0.0 or not getattr(self, "teachers", None):
            return base, outputs
        dev = outputs.device
        self.teachers.to(dev)
        with torch.no_grad():
            t_out = [task.forward(t, batch) for t in self.teachers]
        kd = distillation_loss(outputs, t_out, self.mode, self.options.temperature)
        return (1.0 - a) * base + a * kd, outputs
