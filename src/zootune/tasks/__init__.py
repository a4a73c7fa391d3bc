"""Tasks: head, loss and metrics of a learning problem, plugged into the shared trainer."""

from __future__ import annotations

from typing import Any

from zootune.tasks.base import Task
from zootune.tasks.classification import ClassificationTask, attach_head, find_classifier


def build_task(cfg_task: Any, num_classes: int | None = None) -> Task:
    """The task named by ``cfg.task.name`` (``num_classes`` from the data when not configured)."""
    if cfg_task.name == "classification":
        n = cfg_task.num_classes or num_classes
        if n is None:
            from zootune.config import ConfigError

            raise ConfigError("task.num_classes is not set and the data set does not tell it")
        return ClassificationTask(n, head=cfg_task.head, label_smoothing=cfg_task.label_smoothing)
    raise ValueError(f"unknown task {cfg_task.name!r}")  # schema already restricts names


__all__ = ["Task", "ClassificationTask", "attach_head", "find_classifier", "build_task"]
