"""Optimiser, parameter groups and learning-rate schedule from the config.

Parameter groups: a :class:`zootune.ZooModel` splits its parameters by role (source weights,
alignment ``T_i``, gates ``A_i``, new head) through ``ZooModel.param_groups`` so that the head and
the gates can have their own learning rates; a plain model gets a body group and a head group.
Frozen parameters (e.g. the gates of the average-aggregation baseline) are left out.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn


def param_groups(model: nn.Module, optim_cfg: Any, head: str | None) -> list[dict[str, Any]]:
    """Optimizer groups ``{"name", "params", "lr", "weight_decay"}`` of ``model``."""
    lr = optim_cfg.lr
    head_lr = optim_cfg.head_lr
    wd = optim_cfg.weight_decay
    heads: Sequence[str] = [head, f"{head}.*"] if head else ()
    if hasattr(model, "param_groups") and hasattr(model, "parameter_roles"):
        groups = model.param_groups(lr, gate_lr=optim_cfg.gate_lr, align_lr=optim_cfg.align_lr,
                                    head=heads, head_lr=head_lr, weight_decay=wd)
    else:
        head_ids: set[int] = set()
        if head:  # a model without that module (an ensemble of members with their own heads)
            try:  # has no head group: everything trains at the body's rate
                head_ids = {id(p) for p in model.get_submodule(head).parameters()}
            except AttributeError:
                head_ids = set()
        body = [p for p in model.parameters() if id(p) not in head_ids]
        hp = [p for p in model.parameters() if id(p) in head_ids]
        groups = [{"name": "source", "params": body, "lr": lr, "weight_decay": wd},
                  {"name": "head", "params": hp, "lr": head_lr if head_lr is not None else lr,
                   "weight_decay": wd}]
    out = []
    for g in groups:
        ps = [p for p in g["params"] if p.requires_grad]
        if ps:
            out.append({**g, "params": ps})
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def build_optimizer(groups: list[dict[str, Any]], optim_cfg: Any) -> torch.optim.Optimizer:
    name = optim_cfg.name
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               nesterov=optim_cfg.nesterov and optim_cfg.momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas))
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(step: int, sched_cfg: Any, total_steps: int, base_lr: float = 1.0) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    warm = sched_cfg.warmup_steps
    f = 1.0
    if warm and step < warm:
        f = (step + 1) / warm
    name = sched_cfg.name
    if name == "step":
        f *= sched_cfg.gamma ** (step // sched_cfg.step_size)
    elif name == "multistep":
        f *= sched_cfg.gamma ** sum(step >= m for m in sched_cfg.milestones)
    elif name == "cosine":
        t = min(max(step - warm, 0) / max(total_steps - warm, 1), 1.0)
        floor = sched_cfg.min_lr / base_lr if base_lr > 0 else 0.0
        f *= floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Any, total_steps: int,
                    base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration (the paper's recipe decays per iteration)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, sched_cfg, total_steps, base_lr))
