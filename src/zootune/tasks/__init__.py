"""Tasks: head, sample fields, loss, metrics and summary line of a learning problem, as
registered plug-ins.

Owns the :class:`Task` interface, its registry (:func:`register`, :func:`available`,
:func:`get`, :func:`build_task`) and the built-in ``classification`` task. A task must never
import :mod:`zootune.train`, :mod:`zootune.methods` or :mod:`zootune.commands`.
"""

from zootune.tasks.base import Task, TaskError, TaskOptions, available, build_task, get, register
from zootune.tasks.classification import ClassificationTask, HeadError, attach_head, find_classifier
from zootune.tasks.landmarks import LandmarkTask  # registers "landmarks"

__all__ = ["ClassificationTask", "HeadError", "Task", "TaskError", "TaskOptions", "attach_head",
           "available", "build_task", "find_classifier", "get", "register"]
from zootune.tasks.dense import DenseRegressionTask  # noqa: E402,F401  (registers "dense_regression")
