"""Atomic, resumable checkpoint folders and the model weight files in them.

Layout of ``RUN/checkpoints/``::

    step_00000100/model.safetensors   the model, in the one model format (zootune.save)
    step_00000100/extras.safetensors  a method's extra trainable modules (when it has any)
    step_00000100/state.pt            optimizer, scheduler, AMP scaler, RNG states, step, extras
    latest.json                       {"step": 100, "dir": "step_00000100"}

A checkpoint is first written to a hidden temporary folder, flushed to disk, then renamed into
place with ``os.replace``; ``latest.json`` is replaced the same way only afterwards. A crash at
any moment therefore leaves ``latest.json`` pointing at a complete checkpoint (the previous one),
never at a half-written file. Only the newest ``keep`` checkpoints are kept.
:class:`zootune.train.TrainState` writes and reads these folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from zootune.atomic import atomic_write, atomic_write_text, fsync_dir
from zootune.errors import CheckpointError

LATEST = "latest.json"
WEIGHTS = "model.safetensors"
EXTRAS = "extras.safetensors"
STATE = "state.pt"


def save_module(module: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """``module`` in the one model format (:func:`zootune.save`), written atomically."""
    from zootune.export import save

    return save(module, path, metadata=dict(metadata or {}))


def load_module(module: nn.Module, path: str | Path) -> None:
    """Load a file written by :func:`save_module` into ``module`` (same structure, strict)."""
    from zootune.export import load_state_into

    load_state_into(module, path)


def save_checkpoint(ckpt_root: str | Path, step: int, files: Mapping[str, Callable[[str], Any]],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest.json`` at it.

    ``files``: ``{file name: writer(path)}``; every writer writes its file inside a temporary
    folder that is renamed into place only when all are complete.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        for fname, write in files.items():
            atomic_write(tmp / fname, write)
        final = root / name
        if final.exists():  # left by a run that died after writing it: replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=root))
            os.replace(final, trash / name)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_text(root / LATEST, json.dumps({"step": step, "dir": name}))
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    latest = read_latest(root)
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for p in ckpts[:-keep] if keep > 0 else []:
        if latest is not None and p == latest:
            continue
        shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():  # temporary folders of crashed writes
        if p.name.startswith(".step_") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def read_latest(ckpt_root: str | Path) -> Path | None:
    """The checkpoint folder ``latest.json`` points at, or None when there is none."""
    root = Path(ckpt_root)
    f = root / LATEST
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
        p = root / info["dir"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{str(f)!r} is corrupt") from None
    if not (p / WEIGHTS).is_file() or not (p / STATE).is_file():
        raise CheckpointError(f"{str(f)!r} points at an incomplete checkpoint {str(p)!r}")
    return p


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The non-weight state of a checkpoint (optimizer, scheduler, RNG, step...)."""
    p = Path(ckpt_dir) / STATE
    if not p.is_file():
        raise CheckpointError(f"checkpoint state {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint state {str(p)!r}: {exc}") from None
