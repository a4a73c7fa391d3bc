"""The train state: everything a loop needs to continue exactly where it stopped.

:class:`TrainState` holds the model, the method's extra trainable modules, the optimizer, the
schedule, the AMP scaler, the step, the RNG states and small ``extras`` (best validation step,
an RL agent's counters...). :meth:`TrainState.save` writes it as one atomic checkpoint folder
(:mod:`zootune.train.checkpoint`) and :meth:`TrainState.load` restores every part, so a resumed
run continues the same trajectory. The model file of a checkpoint is in the one model format
(:func:`zootune.save`), readable by :func:`zootune.load`.

Any loop can use it, e.g. an agent loop that is not over a Dataset::

    state = TrainState(model=agent_net, optimizer=opt, extras={"env_steps": 0})
    latest = TrainState.latest("run/checkpoints")
    if latest: state.load(latest)
    ...
    state.step += 1; state.extras["env_steps"] += 4
    state.save("run/checkpoints", keep=2)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zootune.train.checkpoint import (
    EXTRAS,
    STATE,
    WEIGHTS,
    load_module,
    read_latest,
    read_state,
    save_checkpoint,
    save_module,
)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The torch (CPU and ``device``'s CUDA), Python and NumPy global RNG states."""
    np_state = np.random.get_state()
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                          "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]),
                                    int(np_state[3]), float(np_state[4])]}
    if device is not None and device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned (after a checkpoint round trip)."""
    torch.set_rng_state(st["torch"])
    if "python" in st:
        v = st["python"]
        random.setstate((v[0], tuple(v[1]), v[2]))
    if "numpy" in st:
        v = st["numpy"]
        np.random.set_state((v[0], np.asarray(v[1], dtype=np.uint32), int(v[2]), int(v[3]), float(v[4])))
    if device is not None and device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class TrainState:
    """See the module docstring. ``extras`` must hold plain values (numbers, strings, lists,
    dicts, tensors): it is saved with ``torch.save`` and read back with ``weights_only=True``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    step: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights (those go to safetensors files)."""
        return {
            "step": int(self.step),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(self.device),
            "extras": self.extras,
        }

    def save(self, ckpt_root: str | Path, *, keep: int = 2,
             metadata: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` atomically (``ckpt_root/step_N``) and point
        ``latest.json`` at it; only the newest ``keep`` are kept. ``metadata`` goes into the
        model file's header (e.g. the run's config, so :func:`zootune.load` can rebuild it)."""
        model = _unwrap(self.model)
        extra = {k: _unwrap(m) for k, m in self.extra_modules.items()}
        state = self.state_dict()
        files = {WEIGHTS: lambda p: save_module(model, p, metadata={"step": self.step, **(metadata or {})}),
                 STATE: lambda p: torch.save(state, p)}
        if extra:
            files[EXTRAS] = lambda p: save_module(nn.ModuleDict(extra), p)
        return save_checkpoint(ckpt_root, self.step, files, keep=keep)

    def load(self, ckpt_dir: str | Path) -> None:
        """Restore weights, optimizer, schedule, scaler, RNG, step and extras from a folder."""
        ckpt_dir = Path(ckpt_dir)
        load_module(_unwrap(self.model), ckpt_dir / WEIGHTS)
        if self.extra_modules:
            load_module(nn.ModuleDict({k: _unwrap(m) for k, m in self.extra_modules.items()}),
                        ckpt_dir / EXTRAS)
        st = read_state(ckpt_dir)
        if self.optimizer is not None and st.get("optimizer") is not None:
            self.optimizer.load_state_dict(st["optimizer"])
        if self.scheduler is not None and st.get("scheduler") is not None:
            self.scheduler.load_state_dict(st["scheduler"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"], self.device)
        self.step = int(st["step"])
        self.extras = dict(st.get("extras") or {})

    @staticmethod
    def latest(ckpt_root: str | Path) -> Path | None:
        """The newest complete checkpoint folder under ``ckpt_root`` (None when there is none)."""
        return read_latest(ckpt_root)
