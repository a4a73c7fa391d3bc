"""From a config to the objects a training run needs: zoo -> task -> method -> model; data.

Data flows one way. The zoo is loaded by :func:`zootune.zoo.load_zoo` alone (``zoo.builder`` +
``zoo.checkpoints`` / ``zoo.random_sources`` are shorthands for ``file:`` / ``random:`` specs,
:func:`zoo_specs`); the data set is built with the zoo's preprocessing; the task (from the task
registry) binds to the data; the method (from the method registry) builds the model to train
from the zoo and the task. Nothing here knows a method or a task by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zootune.config import Config, ConfigError


def zoo_specs(zc: Any, base_dir: Path | None = None) -> Any:
    """What ``load_zoo`` gets for a :class:`zootune.config.ZooConfig`: ``zoo.spec`` itself, or
    the spec mappings its ``builder`` shorthand stands for."""
    if zc.spec is not None:
        if zc.builder or zc.checkpoints or zc.random_sources:
            raise ConfigError("give zoo.spec or zoo.builder (+ checkpoints / random_sources), not both")
        return zc.spec
    if zc.builder is None:
        raise ConfigError("the zoo is not configured: set zoo.spec (a spec list or a zoo preset), or "
                          "zoo.builder with zoo.checkpoints (or zoo.random_sources for a smoke test)")
    if zc.checkpoints:
        paths = []
        for ck in zc.checkpoints:
            p = Path(ck).expanduser()
            if not p.is_absolute() and base_dir is not None and not p.exists() and (base_dir / p).exists():
                p = base_dir / p
            paths.append(p)
        names = zc.names or [p.stem for p in paths]
        specs = [{"spec": f"file:{p}", "arch": zc.builder, "kwargs": dict(zc.builder_kwargs),
                  "name": n, "strict": zc.strict} for p, n in zip(paths, names)]
    elif zc.random_sources:
        names = zc.names or [f"random{i}" for i in range(zc.random_sources)]
        specs = [{"spec": f"random:{zc.builder} seed={zc.seed + i}", "kwargs": dict(zc.builder_kwargs),
                  "name": n} for i, n in zip(range(zc.random_sources), names)]
    else:
        raise ConfigError("zoo.builder is set but zoo.checkpoints is empty "
                          "(list one checkpoint per source, or set zoo.random_sources)")
    if len(names) != len(specs):
        raise ConfigError(f"zoo.names has {len(names)} names for {len(specs)} sources")
    return specs


def load_run_zoo(cfg: Config, *, task: Any, method: Any, base_dir: Path | None = None,
                 pretrained: bool = True):
    """The run's zoo (a :class:`zootune.zoo.Zoo`). Source heads that differ between members
    are stripped when the task replaces every head and the method does not need them."""
    from zootune.zoo import load_zoo

    zc = cfg.zoo
    strip = zc.strip_heads
    if strip is None:  # the run decides: drop heads that differ when every head is replaced;
        # keep them for a method that needs them; else the zoo preset's own default
        if method.needs_source_heads:
            strip = False
        elif task.replaces_heads:
            strip = "differing"
    kwargs: dict[str, Any] = {"pretrained": pretrained, "strip_heads": strip}
    if zc.offline is not None:
        kwargs["offline"] = zc.offline
    if zc.checkpoint_dir is not None:
        kwargs["checkpoint_dir"] = zc.checkpoint_dir
    if zc.spec is None and zc.random_sources:
        kwargs["check_related"] = False  # random weights are trivially unrelated
    return load_zoo(zoo_specs(zc, base_dir), **kwargs)


def data_preprocessing(zoo: Any) -> Any:
    """The zoo's preprocessing as the data set should use it: ``None`` when the architecture
    declares none (a model builder of one's own), so the data set's own defaults apply instead
    of an ImageNet guess (8x8 digits must not be resized to 224x224)."""
    pre = getattr(zoo, "preprocessing", None)
    if pre is not None and "declares none" in str(getattr(pre, "source", "")):
        return None
    return pre


@dataclass
class Run:
    """Everything a training run needs, built from one config."""

    cfg: Config
    model: nn.Module
    task: Any
    data: Any
    zoo: Any
    method: Any
    previous: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """Facts for the report and ``result.json`` (JSON-able)."""
        data = {k: v for k, v in (self.data.info.items() if self.data is not None else [])
                if k != "preprocessing"}
        return {"method": self.method.describe(), "zoo": list(self.zoo.names),
                "zoo_warnings": list(getattr(self.zoo, "warnings", []) or []),
                "zoo_info": dict(getattr(self.zoo, "info", {}) or {}),
                "data": data, "task": self.task.describe()}

    def record(self) -> dict[str, Any]:
        """What a model file of this run carries so that it can be rebuilt without the zoo's
        checkpoints or the data (:func:`zootune.load`)."""
        return {"config": self.cfg.to_dict(), "task": self.task.describe(),
                "method": self.method.describe(), "zoo": list(self.zoo.names),
                "eval_preprocessing": (self.data.info.get("eval_preprocessing")
                                       if self.data is not None else None)}


def build_run(cfg: Config, base_dir: Path | None = None, pretrained: bool = True, *,
              stage: str = "main", previous: dict[str, Any] | None = None,
              zoo: Any = None, data: Any = None) -> Run:
    """Zoo, data, task and method model of ``cfg`` (seeded: new modules are reproducible).

    ``zoo`` / ``data``: already loaded ones to reuse (e.g. by several methods on one zoo).
    """
    from zootune.data import build_data
    from zootune.methods import BuildContext, build_method
    from zootune.tasks import build_task

    method = build_method(cfg.method)
    task = build_task(cfg.task, seed=cfg.train.seed)
    if zoo is None:
        zoo = load_run_zoo(cfg, task=task, method=method, base_dir=base_dir, pretrained=pretrained)
    method.check_zoo(zoo)
    if data is None:
        data = build_data(cfg.data, data_preprocessing(zoo))
    task.bind(data)
    torch.manual_seed(cfg.train.seed)
    model = method.build(BuildContext(zoo, task, cfg, stage, dict(previous or {}), data=data))
    return Run(cfg, model, task, data, zoo, method, dict(previous or {}))


def build_structure(config: Config | dict[str, Any], task_record: dict[str, Any] | None = None) -> Run:
    """A run's model structure with random weights, built from its config alone (the source
    checkpoints and the data are not read): what :func:`zootune.load` fills with a run's
    weights. ``task_record``: the task's :meth:`~zootune.tasks.Task.describe` of the run."""
    from zootune.config import build_config
    from zootune.methods import BuildContext, build_method
    from zootune.tasks import build_task

    cfg = config if isinstance(config, Config) else build_config(dict(config))
    method = build_method(cfg.method)
    task = build_task(cfg.task, seed=cfg.train.seed)
    task.restore(dict(task_record or {}))
    zoo = load_run_zoo(cfg, task=task, method=method, pretrained=False)
    torch.manual_seed(cfg.train.seed)
    model = method.build(BuildContext(zoo, task, cfg, "main", {}, structure_only=True))
    return Run(cfg, model, task, None, zoo, method)
