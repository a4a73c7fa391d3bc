"""From a config to the objects ``fit`` needs: zoo -> task head -> method -> model; data.

Data flows one way: the zoo is loaded (``zootune.zoo.load_zoo`` for zoo specs, or a builder +
local checkpoint files), the task adapts every source (a fresh shared head), and the method
decides what is trained:

* ``zoo_tuning`` / ``zoo_tuning_lite``: :func:`zootune.zoo_tune` (per-sample / lite gates);
* ``average_aggregation``: ``zoo_tune`` with no alignment and frozen uniform normalised gates,
  i.e. fixed equal gates: the plain weight average of the zoo, trained;
* ``finetune``: source ``cfg.source`` alone, an ordinary fine-tuning baseline.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zootune.config import Config, ConfigError
from zootune.errors import CheckpointError


@dataclass
class Zoo:
    """Loaded source models with their names and (optional) input preprocessing."""

    models: list[nn.Module]
    names: list[str]
    preprocessing: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def resolve_builder(spec: str) -> Callable[..., nn.Module]:
    """``"torchvision:resnet18"``, ``"timm:resnet18"`` or ``"pkg.module:function"``."""
    kind, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"zoo.builder {spec!r} must look like 'torchvision:NAME', 'timm:NAME' "
                          "or 'package.module:function'")
    if kind == "torchvision":
        import torchvision

        try:
            fn = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ConfigError(f"zoo.builder: torchvision has no model {name!r}") from None
        return lambda **kw: fn(weights=None, **kw)
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"zoo.builder: timm has no model {name!r}")
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    try:
        fn = getattr(importlib.import_module(kind), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"zoo.builder: cannot import {name!r} from {kind!r}") from None
    if not callable(fn):
        raise ConfigError(f"zoo.builder {spec!r} is not callable")
    return fn


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"zoo checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read zoo checkpoint {str(path)!r}: {exc.__class__.__name__}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"zoo checkpoint {str(path)!r} does not hold a state dict")
    return sd


def load_zoo_from_config(zc: Any, base_dir: Path | None = None, pretrained: bool = True) -> Zoo:
    """Build the zoo described by a :class:`zootune.config.ZooConfig`.

    ``pretrained=False`` builds the same structure without loading source weights (used when a
    run's own weights are loaded on top, e.g. by ``zootune eval`` / ``export``).
    """
    if zc.spec is not None:
        try:
            from zootune.zoo import load_zoo  # the zoo module (specs, presets, hub, timm...)
        except ImportError:
            raise ConfigError("zoo.spec needs zootune.zoo.load_zoo, which is not available; "
                              "use zoo.builder + zoo.checkpoints instead") from None
        kwargs: dict[str, Any] = {"pretrained": pretrained}
        for key in ("strip_heads", "offline", "checkpoint_dir"):
            if getattr(zc, key) is not None:
                kwargs[key] = getattr(zc, key)
        loaded = load_zoo(zc.spec, **kwargs)
        models = list(getattr(loaded, "models", loaded))
        names = list(getattr(loaded, "names", None) or zc.names or
                     [f"source{i}" for i in range(len(models))])
        pre = getattr(loaded, "preprocessing", None)
        warns = [str(w) for w in (getattr(loaded, "warnings", None) or [])]
        return Zoo(models, names, pre, {"spec": zc.spec, "warnings": warns})
    if zc.builder is None:
        raise ConfigError("the zoo is not configured: set zoo.spec, or zoo.builder with "
                          "zoo.checkpoints (or zoo.random_sources for a smoke test)")
    build = resolve_builder(zc.builder)
    models: list[nn.Module] = []
    if zc.checkpoints:
        for i, ck in enumerate(zc.checkpoints):
            path = Path(ck).expanduser()
            if not path.is_absolute() and base_dir is not None and not path.exists():
                path = base_dir / path
            sd = _read_state_dict(path)
            m = build(**zc.builder_kwargs)
            try:
                missing, unexpected = m.load_state_dict(sd, strict=zc.strict)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()
                detail = " ".join(x.strip() for x in first[1:3]) if len(first) > 1 else first[0]
                raise CheckpointError(
                    f"zoo checkpoint {str(path)!r} does not fit {zc.builder}: {detail[:300]}") from None
            models.append(m)
        names = zc.names or [Path(c).stem for c in zc.checkpoints]
    elif zc.random_sources:
        for i in range(zc.random_sources):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zc.seed + i)
                models.append(build(**zc.builder_kwargs))
        names = zc.names or [f"random{i}" for i in range(zc.random_sources)]
    else:
        raise ConfigError("zoo.builder is set but zoo.checkpoints is empty "
                          "(list one checkpoint per source, or set zoo.random_sources)")
    if len(names) != len(models):
        raise ConfigError(f"zoo.names has {len(names)} names for {len(models)} sources")
    pre = None
    try:
        from zootune.zoo.preprocess import preprocessing_of

        pre = preprocessing_of(models[0])
    except Exception:  # noqa: BLE001 - preprocessing is a hint only
        pre = None
    return Zoo(models, list(names), pre, {"builder": zc.builder, "checkpoints": list(zc.checkpoints)})


def build_method_model(cfg: Config, task: Any, zoo: Zoo) -> nn.Module:
    """Attach the task head to every source and apply the method (see module docstring).

    The global RNG is seeded with ``cfg.train.seed`` first, so new modules (gates, alignment)
    start the same in every process: a DDP rank, a resumed run and a rerun agree.
    """
    torch.manual_seed(cfg.train.seed)
    # copies: the head is attached in place and fine-tuning trains the module itself, so the
    # caller's zoo stays pristine for the next method
    models = task.prepare_zoo([copy.deepcopy(m) for m in zoo.models])
    method = cfg.method
    if method == "finetune":
        if cfg.source >= len(models):
            raise ConfigError(f"source={cfg.source} but the zoo has {len(models)} models "
                              f"({', '.join(zoo.names)})")
        return models[cfg.source]
    import zootune

    zt = cfg.zoo_tune
    if len(models) < 2:
        raise ConfigError(f"method {method!r} needs at least 2 source models, the zoo has {len(models)}")
    exclude = list(zt.exclude) + [p for p in task.exclude_patterns() if p not in zt.exclude]
    kwargs = dict(layers=zt.layers, exclude=exclude, align=zt.align, lite=zt.lite, rest=zt.rest,
                  gate=zt.gate, gate_init=zt.gate_init, gate_hidden=zt.gate_hidden,
                  te_momentum=zt.te_momentum, kernel=zt.kernel, recompute=zt.recompute)
    if zt.kernel == "auto" and cfg.train.deterministic:
        # "auto" times the candidate kernels and keeps the fastest, which may differ between
        # processes (and their rounding with it): a deterministic run uses one fixed kernel.
        kwargs["kernel"] = "grouped"
    if method == "zoo_tuning_lite":
        kwargs["lite"] = True
    elif method == "average_aggregation":
        # equal frozen gates: per-sample and lite compute the same averaged weights, lite with
        # one ordinary convolution per layer (and it exports to a plain model)
        kwargs.update(align=False, gate="normalized", gate_init="uniform", lite=True)
    zm = zootune.zoo_tune(models, **kwargs)
    if method == "average_aggregation":
        zm.freeze_gates()
    return zm


@dataclass
class Run:
    """Everything a training run needs, built from one config."""

    cfg: Config
    model: nn.Module
    task: Any
    data: Any
    zoo: Zoo

    def info(self) -> dict[str, Any]:
        return {"method": self.cfg.method, "zoo": self.zoo.names, "zoo_info": self.zoo.info,
                "data": {k: v for k, v in self.data.info.items() if k != "preprocessing"},
                "classes": list(self.data.classes)}


def build_run(cfg: Config, base_dir: Path | None = None, pretrained: bool = True) -> Run:
    """Zoo, data, task and method model of ``cfg`` (seeded: the head is reproducible)."""
    from zootune.data import build_data
    from zootune.tasks import build_task

    zoo = load_zoo_from_config(cfg.zoo, base_dir, pretrained=pretrained)
    data = build_data(cfg.data, zoo.preprocessing)
    task = build_task(cfg.task, data.num_classes)
    if cfg.task.name == "classification" and cfg.task.num_classes is None:
        cfg.task.num_classes = data.num_classes  # recorded in the run's config.yaml
    if hasattr(task, "head_seed"):
        task.head_seed = cfg.train.seed
    if hasattr(task, "example_input") and len(data.train):
        x = data.train[0][0]
        task.example_input = torch.as_tensor(x).unsqueeze(0).repeat(2, *([1] * x.dim()))
    model = build_method_model(cfg, task, zoo)
    return Run(cfg, model, task, data, zoo)
