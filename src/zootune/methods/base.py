"""The method interface and its registry.

A *method* decides what is trained from a zoo for a task: it builds the model(s), may supply the
training loss (default: the task's), may add trainable modules of its own (trained by the same
optimizer and saved in the same checkpoints, but not part of the deployed model), and may run in
*stages* whose results later stages reuse (e.g. fine-tune every source, then distil them).
The shared trainer (:mod:`zootune.train`) knows no method by name: it asks the registry.

A method is a subclass of :class:`Method` with a nested ``Options`` model (pydantic, unknown keys
are errors) and a registration::

    from zootune.methods import Method, MethodOptions, register

    @register("my_method")
    class MyMethod(Method):
        class Options(MethodOptions):
            source: int = 0

        def build(self, ctx):                       # -> the nn.Module to train
            return ctx.target_models()[self.options.source]

Then ``method: {name: my_method, source: 1}`` in a config runs it with ``zootune tune``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from zootune.config import PluginOptions
from zootune.errors import ZootuneError
from zootune.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from zootune.config import Config
    from zootune.tasks.base import Task
    from zootune.zoo import Zoo


class MethodError(ZootuneError, ValueError):
    """A method cannot be built as configured (e.g. a zoo too small for it)."""


class MethodOptions(PluginOptions):
    """Base of every method's options (``name`` is the registered name)."""


@dataclass
class StageResult:
    """What a finished stage left for later stages: its trained model and metrics."""

    name: str
    model: nn.Module
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    out_dir: Any = None


@dataclass
class Stage:
    """One training stage of a method: a name and the config it trains with."""

    name: str
    cfg: "Config"


@dataclass
class BuildContext:
    """What a method builds from: the zoo, the task (bound to its data), the config, the stage
    being built and the results of the stages before it."""

    zoo: "Zoo"
    task: "Task"
    cfg: "Config"
    stage: str = "main"
    previous: dict[str, StageResult] = field(default_factory=dict)
    #: only the structure is wanted (weights are loaded afterwards): skip expensive set-up
    structure_only: bool = False
    #: the run's data splits (``train``, ``val``, ``test``; what the task is bound to), for a
    #: method that computes something from the target data before training (Co-Tuning's
    #: category relationship). ``None`` when only the structure is built.
    data: Any = None

    def target_models(self, keep_source_heads: bool = False) -> list[nn.Module]:
        """Deep copies of the zoo's models, adapted to the task (e.g. a fresh shared head).

        Copies, so the caller's zoo stays pristine for the next method or stage.
        """
        models = [copy.deepcopy(m) for m in self.zoo]
        return self.task.prepare_zoo(models, keep_source_heads=keep_source_heads)


class Method:
    """Base class of methods: see the module docstring."""

    #: the registered name (set by :func:`register`)
    name: ClassVar[str] = ""
    #: the options model (fields with defaults; ``name`` is added by :class:`MethodOptions`)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: the zoo's source heads are kept for this method (differing heads are then an error)
    needs_source_heads: ClassVar[bool] = False
    #: the fewest sources the method works with
    min_sources: ClassVar[int] = 1

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = options if options is not None else self.Options(name=self.name)

    # ---- stages -----------------------------------------------------------------------------

    def stages(self, cfg: "Config") -> list[Stage]:
        """The stages of a run, in order (default: one stage, ``main``, with ``cfg`` itself).

        A stage's config may differ from ``cfg`` (another method, budget or seed); the runner
        trains each in its own folder and skips a stage that already finished.
        """
        return [Stage("main", cfg)]

    # ---- building ---------------------------------------------------------------------------

    def check_zoo(self, zoo: "Zoo") -> None:
        if len(zoo) < self.min_sources:
            raise MethodError(f"method {self.name!r} needs at least {self.min_sources} source "
                              f"model(s), the zoo has {len(zoo)}")

    def build(self, ctx: BuildContext) -> nn.Module:  # pragma: no cover - abstract
        """The model to train (carrying the task head), built from ``ctx``."""
        raise NotImplementedError

    def prepare_training(self, model: nn.Module, first_batch: Callable[[], dict[str, Any]],
                         task: "Task", extras: dict[str, Any]) -> None:
        """Called once by a training loop before its first step, after a resume restored
        ``extras`` (the train state's; what is put there is checkpointed with the run).
        ``first_batch()`` gives the first training batch on the model's device. Default:
        nothing. Runs on every DDP rank (collectives are allowed)."""

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Trainable modules besides ``model`` (optimised and checkpointed with it, not
        exported). Default: none."""
        return {}

    # ---- training ---------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, Any], task: "Task") -> tuple[torch.Tensor, Any]:
        """``(loss, outputs)`` of one training batch; ``outputs`` feed the task's metrics.

        Default: the task's forward and loss. A method that adds a term (distillation,
        Co-Tuning...) overrides this and calls ``super().loss`` or ``task.forward``.
        """
        outputs = task.forward(model, batch)
        return task.loss(outputs, batch), outputs

    # ---- reporting --------------------------------------------------------------------------

    def report_section(self, model: nn.Module, data: Any, out_dir: Any) -> list[str]:
        """Markdown lines the run report adds for this method (e.g. a plot of something it
        learned, written into ``out_dir``), like :meth:`zootune.tasks.Task.report_section`.
        Default: none."""
        return []

    def describe(self) -> str:
        """One line for reports, e.g. ``zoo_tuning (lite, align=default)``."""
        opts = self.options.model_dump(exclude={"name"})
        shown = ", ".join(f"{k}={v}" for k, v in opts.items() if v not in (None, [], {}))
        return f"{self.name} ({shown})" if shown else self.name


# ---- registry -------------------------------------------------------------------------------

_REGISTRY: Registry[type[Method]] = Registry("method", Method, MethodOptions, MethodError)

#: Class decorator: make ``method: NAME`` in a config build this method.
register = _REGISTRY.register
#: Names of the registered methods (what ``method:`` in a config may say).
available = _REGISTRY.available
#: The method class registered as a name.
get = _REGISTRY.get


def build_method(options: MethodOptions) -> Method:
    """The method object for validated ``options`` (``cfg.method``)."""
    return get(options.name)(options)
