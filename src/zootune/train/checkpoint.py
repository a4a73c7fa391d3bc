"""Atomic, resumable checkpoints.

Layout of ``RUN/checkpoints/``::

    step_00000100/model.safetensors   model weights (and buffers: BN stats, temporal ensemble)
    step_00000100/state.pt            optimizer, scheduler, AMP scaler, RNG states, step, extras
    latest.json                       {"step": 100, "dir": "step_00000100"}

A checkpoint is first written to a hidden temporary folder, flushed to disk, then renamed into
place with ``os.replace``; ``latest.json`` is replaced the same way only afterwards. A crash at
any moment therefore leaves ``latest.json`` pointing at a complete checkpoint (the previous one),
never at a half-written file. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zootune.atomic import atomic_write, atomic_write_text, fsync_dir
from zootune.errors import CheckpointError

LATEST = "latest.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Model state (parameters and buffers) as safetensors, written atomically."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata, force_contiguous=True))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load :func:`save_weights` output into ``model``; one :class:`CheckpointError` on mismatch."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupt file, wrong shapes...
        raise CheckpointError(f"cannot load weights from {str(path)!r}: {exc}") from None
    # safetensors drops duplicates of shared tensors on save; those come back as "missing"
    if strict and (unexpected or missing):
        raise CheckpointError(
            f"weights {str(path)!r} do not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}")


def save_checkpoint(ckpt_root: str | Path, step: int, model: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest.json`` at it."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        save_weights(model, tmp / WEIGHTS, metadata={"step": str(step)})
        atomic_write(tmp / STATE, lambda path: torch.save(state, path))
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


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The non-weight state of a checkpoint (optimizer, scheduler, RNG, step...)."""
    p = Path(ckpt_dir) / STATE
    if not p.is_file():
        raise CheckpointError(f"checkpoint state {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint state {str(p)!r}: {exc}") from None
