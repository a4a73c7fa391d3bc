"""One optimizer step with AMP, gradient clipping and a divergence check, for any loop.

:class:`OptimizerStep` does what every training step does after the loss: zero the gradients,
backward (scaled by the AMP ``GradScaler`` for fp16), unscale, clip, step, update the scaler,
step the schedule. Non-finite losses are recorded in a device-side flag — reading it would force
a host sync, so :meth:`OptimizerStep.check` does it only when the loop asks (at log intervals and
before every checkpoint, so a diverged run never saves NaN weights).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
from torch import nn

from zootune.errors import ZootuneError


class TrainingError(ZootuneError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged to NaN/inf)."""


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device if there is one, else CPU; ``cuda`` -> ``cuda:<rank>``."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def amp_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = full precision).

    ``auto``: bf16 (or fp16 where bf16 is unsupported) on CUDA, full precision elsewhere.
    ``bf16`` also runs on CPU (CPU autocast); ``fp16`` needs CUDA.
    """
    if spec == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if spec == "bf16" else None
    if spec == "fp16":
        return torch.float16
    if spec == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 on CUDA (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


class OptimizerStep:
    """Backward + clip + optimizer/scaler/scheduler step; see the module docstring.

    Args:
        optimizer: the optimizer.
        scheduler: stepped once per call (after the optimizer), if given.
        scaler: an AMP ``GradScaler`` (fp16), if any.
        grad_clip: max global gradient norm over ``parameters`` (None: no clipping).
        parameters: what to clip (default: every parameter the optimizer holds).
        after_backward: called between backward and clipping (e.g. to average the gradients
            of modules that DDP does not wrap).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, scheduler: Any = None,
                 scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
                 parameters: Iterable[nn.Parameter] | None = None,
                 after_backward: Any = None) -> None:
        self.optimizer = optimizer
        self.after_backward = after_backward
        self.scheduler = scheduler
        self.scaler = scaler
        self.grad_clip = grad_clip
        if parameters is None:
            parameters = [p for g in optimizer.param_groups for p in g["params"]]
        self.parameters = list(parameters)
        self._nonfinite: torch.Tensor | None = None
        self._first_bad_call: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, loss: torch.Tensor) -> None:
        """One step on ``loss`` (a scalar with a graph)."""
        bad = ~torch.isfinite(loss.detach())
        if self._nonfinite is None:
            self._nonfinite = bad
            self._first_bad_call = torch.where(bad, self.calls, -1)
        else:  # device ops only: no sync
            self._first_bad_call = torch.where(bad & ~self._nonfinite, self.calls, self._first_bad_call)
            self._nonfinite = self._nonfinite | bad
        self.calls += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.after_backward is not None:
            self.after_backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def check(self, offset: int = 0) -> None:
        """Raise :class:`TrainingError` if any loss so far was NaN/inf (one host sync).

        ``offset``: the step count before the first call (a resumed run), for the message.
        """
        if self._nonfinite is not None and bool(self._nonfinite):
            at = int(self._first_bad_call) + 1 + offset
            raise TrainingError(f"the loss became NaN or inf at step {at} (diverged): lower "
                                "optim.lr, set optim.grad_clip, or train.amp=off")
