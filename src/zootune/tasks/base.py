"""The task interface and its registry: what the shared trainer needs to know about a problem.

A task owns the *head* (how source models are adapted to the target outputs), the sample
*fields* it reads, the *loss*, the *metrics* and how they read in one line. The trainer owns
everything else (optimiser, schedule, AMP, DDP, checkpoints, logging), so classification, facial
landmarks and the rest share one loop.

Metrics are accumulated on the model's device, per batch, and reduced once per log interval or
evaluation: each metric of :meth:`Task.batch_metrics` is either a **sum** (added across batches
and DDP ranks: ``loss_sum``, ``correct``, ``count``) or, when named in ``metric_reductions`` with
``"cat"``, a **vector** of per-sample values concatenated across batches and ranks (what a
failure rate or an AUC needs). :meth:`Task.summarize` turns the totals into the reported numbers.

Register a task with :func:`register`; ``task: {name: NAME, ...options}`` in a config selects it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from zootune.config import PluginOptions
from zootune.errors import ZootuneError
from zootune.registry import Registry


class TaskError(ZootuneError, ValueError):
    """A task cannot be set up as configured (e.g. it cannot tell its number of outputs)."""


class TaskOptions(PluginOptions):
    """Base of every task's options (``name`` is the registered name)."""


class Task:
    """Base class of tasks. Subclasses set ``Options`` and override ``loss`` and the metrics."""

    #: the registered name (set by :func:`register`)
    name: ClassVar[str] = "task"
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    #: the metric used to select checkpoints on validation
    primary_metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    #: the sample field the model reads
    input_field: ClassVar[str] = "image"
    #: ``{metric: "cat"}`` for per-sample vectors; every other metric is a sum
    metric_reductions: ClassVar[dict[str, str]] = {}
    #: metrics shown as percentages
    percent_metrics: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options if options is not None else self.Options(name=self.name)
        #: module name (in the source architecture) of the task head; its parameters get
        #: ``optim.head_lr``. Set by :meth:`prepare_zoo`.
        self.head_name: str | None = None
        #: seed of new head weights (the trainer sets ``train.seed``)
        self.seed: int | None = 0

    # ---- set-up -----------------------------------------------------------------------------

    def bind(self, data: Any) -> None:
        """Learn what the task needs from the data set (e.g. the classes). Default: nothing."""

    def prepare_zoo(self, models: Sequence[nn.Module], keep_source_heads: bool = False) -> list[nn.Module]:
        """Adapt the source models to the target outputs (e.g. a fresh shared head)."""
        return list(models)

    @property
    def replaces_heads(self) -> bool:
        """Whether :meth:`prepare_zoo` puts a new head on every model (so the zoo's own heads
        may be stripped when they differ)."""
        return False

    def exclude_patterns(self) -> list[str]:
        """Module-name patterns that ``zoo_tune`` must not aggregate (the new head)."""
        return [self.head_name] if self.head_name else []

    # ---- batches ----------------------------------------------------------------------------

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return int(batch[self.input_field].shape[0])

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        """Model outputs for a batch (default: ``model(batch[input_field])``)."""
        return model(batch[self.input_field])

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # ---- metrics ----------------------------------------------------------------------------

    def batch_metrics(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per-batch totals on the outputs' device, e.g. ``{"loss_sum", "count"}``."""
        n = self.batch_size(batch)
        loss = self.loss(outputs, batch).detach().float()
        return {"loss_sum": loss * n, "count": torch.full((), float(n), device=loss.device)}

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """Reported metrics from accumulated totals (floats for sums, tensors for vectors)."""
        n = max(float(totals.get("count", 0.0)), 1.0)
        return {"loss": float(totals.get("loss_sum", 0.0)) / n}

    def format_metric(self, key: str, value: float) -> str:
        return f"{100 * value:.2f}%" if key in self.percent_metrics else f"{value:.4g}"

    def summary_line(self, metrics: Mapping[str, float]) -> str:
        """The metrics in one line, primary metric first (progress bar, report, eval, export)."""
        keys = [k for k in (self.primary_metric, "loss") if k in metrics]
        keys += [k for k in metrics if k not in keys]
        return ", ".join(f"{k} {self.format_metric(k, float(metrics[k]))}" for k in keys
                         if isinstance(metrics[k], (int, float)))

    def describe(self) -> dict[str, Any]:
        """Facts about the target for reports and model cards (JSON-able)."""
        return {"task": self.name}

    def report_section(self, model: nn.Module, data: Any, out_dir: Any) -> list[str]:
        """Markdown lines the run report adds for this task (e.g. prediction plots written into
        ``out_dir``). Default: none."""
        return []

    def restore(self, record: Mapping[str, Any]) -> None:
        """Bind from a :meth:`describe` record instead of data (rebuilding a trained model)."""

    def check_compatible(self, recorded: Mapping[str, Any]) -> None:
        """Raise if data described by :meth:`describe` (``recorded``, e.g. of a trained run)
        cannot be evaluated by this task as bound. Default: anything goes."""


def record_forward(model: nn.Module, example: torch.Tensor,
                   names: Sequence[str] | None = None) -> dict[str, list[tuple[Any, Any]]]:
    """``{module name: [(inputs, output), ...]}`` seen in one eval-mode, no-grad forward pass of
    ``example`` (``names=None``: every module, in call order); the model's mode is restored.

    How tasks measure a model they adapt (the width entering a stripped head, where a
    convolutional trunk ends) without knowing its architecture."""
    modules = dict(model.named_modules())
    chosen = list(modules) if names is None else list(names)
    seen: dict[str, list[tuple[Any, Any]]] = {}
    hooks = []
    for name in chosen:
        def hook(mod, inputs, output, name=name):
            seen.setdefault(name, []).append((inputs, output))
        hooks.append(modules[name].register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return seen


# ---- registry -------------------------------------------------------------------------------

_REGISTRY: Registry[type[Task]] = Registry("task", Task, TaskOptions, TaskError)

#: Class decorator: make ``task: NAME`` in a config build this task.
register = _REGISTRY.register
#: Names of the registered tasks (what ``task:`` in a config may say).
available = _REGISTRY.available
#: The task class registered as a name.
get = _REGISTRY.get


def build_task(options: TaskOptions | Mapping[str, Any] | str, data: Any = None,
               seed: int | None = 0) -> Task:
    """The task for ``options`` (``cfg.task``, or a name / mapping validated like a config's
    ``task`` section), bound to ``data`` when given; ``seed`` seeds new head weights."""
    if not isinstance(options, TaskOptions):
        from zootune.config import _plugin

        options = _plugin("task", options)  # type: ignore[assignment]
    task = get(options.name)(options)
    task.seed = seed
    if data is not None:
        task.bind(data)
    return task
