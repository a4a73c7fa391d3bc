"""Rebuild a finished (or interrupted) run's model from its folder, for eval, export and load.

A run folder holds ``config.yaml`` (the resolved config) and weights: ``model.safetensors``
(final/selected), ``best.safetensors`` (with ``train.select: best``) and ``checkpoints/``. Every
weight file is in the one model format and carries the run's record (config, task description),
so the structure is rebuilt *without* reading the source checkpoints or the data
(:func:`zootune.train.build.build_structure`) and then filled with the run's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from zootune.config import ConfigError, load_config
from zootune.errors import CheckpointError
from zootune.train.build import build_structure, data_preprocessing
from zootune.train.checkpoint import WEIGHTS, read_latest


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


def load_run(path: str | Path, *, weights: str = "final", data_overrides: Sequence[str] = (),
             with_data: bool = False) -> tuple[Any, Path]:
    """``(Run, weights_path)`` with the run's trained weights loaded into ``run.model`` (eval).

    ``with_data`` (or any ``data_overrides``, ``key=value`` of ``data.*`` settings such as a new
    image folder) also builds the data to evaluate on and binds the task to it; the model is
    always the run's own.
    """
    from zootune.data import build_data
    from zootune.export import load_state_into, read_metadata, run_metadata

    run_dir, explicit = find_run_dir(path)
    bad = [o for o in data_overrides if not o.split("=", 1)[0].startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* settings can be overridden here, not {bad[0]!r}")
    cfg = load_config(run_dir / "config.yaml")
    wfile = explicit or weights_file(run_dir, weights)
    record = run_metadata(wfile) or {}
    run = build_structure(cfg, record.get("task"))
    load_state_into(run.model, wfile)
    plan = (read_metadata(wfile).get("settings") or {}).get("kernel_plan")
    if plan and hasattr(run.model, "set_kernels"):  # the kernels the run trained with
        run.model.set_kernels(plan)
    run.model.eval()
    if with_data or data_overrides:
        eval_cfg = load_config(run_dir / "config.yaml", data_overrides) if data_overrides else cfg
        run.data = build_data(eval_cfg.data, data_preprocessing(run.zoo))
        recorded = record.get("task") or run.task.describe()
        run.task.bind(run.data)
        run.task.check_compatible(recorded)
    return run, wfile
