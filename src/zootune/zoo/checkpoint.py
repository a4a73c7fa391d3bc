"""Read checkpoint files safely and find the state dict inside them.

* ``.safetensors`` files are read with :mod:`safetensors` (no code can run); their string
  metadata is returned too.
* Everything else (``.pt``, ``.pth``, ``.bin``, ``.tar``, ``.ckpt``) goes through
  ``torch.load(..., weights_only=True)``: a pickle that would import and call arbitrary objects
  is refused with :class:`UnsafeCheckpointError` rather than executed.
* Truncated or corrupt files give :class:`CheckpointError` naming the file, not a library
  stack trace.

A checkpoint is often a wrapper around the state dict: ``{"state_dict": ...}`` (MoCo,
Lightning), ``{"model": ...}`` (DeiT, detectron-style), ``{"module": ...}``... :func:`unwrap`
descends into the first such entry that holds tensors and says which path it took.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from zootune.zoo.errors import CheckpointError, NonFiniteWeightsError, UnsafeCheckpointError

# Keys under which training scripts commonly nest the weights, most specific first.
WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "params",
    "weights",
    "model_ema",
    "state_dict_ema",
)


@dataclass
class RawCheckpoint:
    """Tensors read from a file, the wrapper path that led to them, and file metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    wrapper: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # non-tensor entries next to the weights


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 10**9


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read ``path`` and return its state dict (unwrapped) as a :class:`RawCheckpoint`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if _is_safetensors(path):
        tensors, meta = _read_safetensors(path)
        return RawCheckpoint(path, tensors, [], meta)
    obj = _read_pickle(path)
    tensors, wrapper, skipped = unwrap(obj, str(path))
    return RawCheckpoint(path, tensors, wrapper, {}, skipped)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read {path}: corrupt or truncated safetensors file ({_short(exc)})"
        ) from None
    return tensors, meta


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "GLOBAL" in msg:  # the pickle imports a callable: refusing is the point
            culprit = _unsafe_global(msg)
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a pickle that would import and call "
                f"{culprit} on loading, which can run arbitrary code. zootune reads pickles "
                f"with torch.load(weights_only=True); re-save the weights as a plain state dict "
                f"or .safetensors with code you trust"
            ) from None
        raise CheckpointError(f"cannot read {path}: corrupt pickle ({_short(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            AttributeError, IndexError, TypeError) as exc:
        raise CheckpointError(
            f"cannot read {path}: corrupt or truncated checkpoint ({_short(exc)})"
        ) from None


def _unsafe_global(msg: str) -> str:
    m = re.search(r"GLOBAL\s+([\w.]+)", msg)
    return repr(m.group(1)) if m else "an object that is not a tensor or plain container"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:200]


def _tensor_fraction(d: Mapping[Any, Any]) -> float:
    if not d:
        return 0.0
    return sum(isinstance(v, torch.Tensor) for v in d.values()) / len(d)


def unwrap(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Find the state dict inside a loaded checkpoint object.

    Returns ``(tensors, wrapper_path, skipped_keys)``: ``wrapper_path`` lists the keys descended
    through (``["state_dict"]`` for a MoCo checkpoint); ``skipped_keys`` non-tensor entries that
    sat next to the tensors (``epoch``, ``arch``...).
    """
    path: list[str] = []
    cur = obj
    for _ in range(4):
        if not isinstance(cur, Mapping):
            break
        if _tensor_fraction(cur) >= 0.5:
            break
        nxt = None
        for key in WRAPPER_KEYS:
            if isinstance(cur.get(key), Mapping) and _contains_tensors(cur[key]):
                nxt = key
                break
        if nxt is None:
            # a single nested mapping that holds tensors (e.g. {"teacher": {...}})
            nested = [k for k, v in cur.items() if isinstance(v, Mapping) and _contains_tensors(v)]
            if len(nested) == 1:
                nxt = nested[0]
        if nxt is None:
            break
        path.append(str(nxt))
        cur = cur[nxt]
    if isinstance(cur, torch.nn.Module):
        cur = cur.state_dict()
    if not isinstance(cur, Mapping) or not any(isinstance(v, torch.Tensor) for v in cur.values()):
        kind = type(obj).__name__
        keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"no state dict found in {where}: top level is a {kind}"
            + (f" with keys {keys}" if keys else "")
        )
    tensors = {str(k): v for k, v in cur.items() if isinstance(v, torch.Tensor)}
    skipped = [str(k) for k, v in cur.items() if not isinstance(v, torch.Tensor)]
    return tensors, path, skipped


def _contains_tensors(d: Mapping[Any, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first tensor with NaN or Inf values.

    A sum per tensor is the fast screen (NaN and Inf propagate into it); only a tensor whose
    sum is not finite is examined element by element, so huge finite values are not flagged.
    """
    for key, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        with torch.no_grad():
            if bool(torch.isfinite(t.sum())):
                continue
            finite = torch.isfinite(t)
            if bool(finite.all()):
                continue
            bad = int((~finite).sum())
            kinds = [n for n, f in (("NaN", torch.isnan), ("Inf", torch.isinf)) if bool(f(t).any())]
        raise NonFiniteWeightsError(
            f"{where}: weight {key!r} holds {bad} non-finite value(s) "
            f"({'/'.join(kinds)}) of {t.numel()}"
        )
