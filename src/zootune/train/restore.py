"""Rebuild a finished (or interrupted) run's model from its folder, for eval and export.

A run folder holds ``config.yaml`` (the resolved config) and weights: ``model.safetensors``
(final/selected), ``best.safetensors`` (with ``train.select: best``) and ``checkpoints/``. The
model structure is rebuilt from the config *without* reading the source checkpoints again
(sources are built with random weights and every tensor is then overwritten by the run's
weights), so eval and export do not need the zoo files or the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from zootune.config import Config, ConfigError, load_config
from zootune.errors import CheckpointError
from zootune.train.checkpoint import WEIGHTS, load_weights, read_latest


def find_run_dir(path: str | Path) -> tuple[Path, Path | None]:
    """``(run_dir, weights_file_or_None)`` for a run folder, checkpoint folder or weights file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{str(p)!r} does not exist (expected a run folder or checkpoint)")
    weights = None
    if p.is_file():
        weights, start = p, p.parent
    elif (p / WEIGHTS).is_file() and not (p / "config.yaml").is_file():
        weights, start = p / WEIGHTS, p  # a checkpoints/step_N folder
    else:
        start = p
    for cand in (start, *start.parents[:3]):
        if (cand / "config.yaml").is_file():
            return cand, weights
    raise CheckpointError(f"no config.yaml found in or above {str(p)!r}: is it a zootune run?")


def weights_file(run_dir: Path, which: str = "final") -> Path:
    """``final`` (model.safetensors), ``best`` (best.safetensors) or ``latest`` (checkpoint)."""
    if which == "final":
        f = run_dir / "model.safetensors"
        if f.is_file():
            return f
        which = "latest"  # an interrupted run has only checkpoints
    if which == "best":
        f = run_dir / "best.safetensors"
        if not f.is_file():
            raise CheckpointError(f"{str(run_dir)!r} has no best.safetensors "
                                  "(train with train.select=best to keep it)")
        return f
    if which == "latest":
        latest = read_latest(run_dir / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{str(run_dir)!r} has no weights yet (no model.safetensors, "
                                  "no checkpoint)")
        return latest / WEIGHTS
    raise ValueError(f"unknown weights {which!r}")


def structural_config(cfg: Config) -> Config:
    """The same model structure without loading source weights (they are overwritten anyway)."""
    zc = cfg.zoo
    if zc.spec is None and zc.checkpoints:
        zoo = zc.model_copy(update={"checkpoints": [], "random_sources": len(zc.checkpoints),
                                    "names": zc.names or [Path(c).stem for c in zc.checkpoints]})
        return cfg.model_copy(update={"zoo": zoo})
    return cfg


def load_run(path: str | Path, *, weights: str = "final",
             data_overrides: Sequence[str] = ()) -> tuple[Any, Path]:
    """``(Run, weights_path)`` with the run's trained weights loaded into ``run.model``.

    ``data_overrides`` (``key=value``) change only the data the returned run carries (e.g. a
    new image folder to evaluate on); the model is always the run's own (its number of classes
    comes from the recorded ``task.num_classes``).
    """
    import torch

    from zootune.data import DataError, build_data
    from zootune.tasks import build_task
    from zootune.train.build import Run, build_method_model, load_zoo_from_config

    run_dir, explicit = find_run_dir(path)
    cfg = load_config(run_dir / "config.yaml")
    eval_cfg = load_config(run_dir / "config.yaml", data_overrides) if data_overrides else cfg
    bad = [o for o in data_overrides if not o.split("=", 1)[0].startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* settings can be overridden here, not {bad[0]!r}")
    wfile = explicit or weights_file(run_dir, weights)
    scfg = structural_config(cfg)
    zoo = load_zoo_from_config(scfg.zoo, run_dir, pretrained=False)
    data = build_data(eval_cfg.data, zoo.preprocessing)
    num_classes = cfg.task.num_classes
    if num_classes is None:
        if data_overrides:
            raise DataError("this run did not record task.num_classes: evaluate it on its own data")
        num_classes = data.num_classes
    task = build_task(cfg.task, num_classes)
    if hasattr(task, "example_input") and len(data.train):
        x = torch.as_tensor(data.train[0][0])
        task.example_input = x.unsqueeze(0).repeat(2, *([1] * x.dim()))
    model = build_method_model(scfg, task, zoo)
    load_weights(model, wfile)
    model.eval()
    return Run(cfg, model, task, data, zoo), wfile
