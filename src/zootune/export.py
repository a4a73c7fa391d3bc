"""Saving and loading models: safetensors weights + JSON metadata, never pickle.

* ``save(zoo_model, path)`` writes the ZooModel's state dict (source weights, alignments, gates,
  temporal-ensemble buffers, norm layers, head) and, in the safetensors header, JSON metadata
  with everything ``zoo_tune`` needs to rebuild the same structure (layer names, alignment,
  lite, gate settings, number of sources).
* ``load(path, template=...)`` rebuilds that structure from ``template`` — a module of the source
  architecture (random weights are fine) or a zero-argument callable returning one — and loads
  the weights: the result computes exactly what the saved model computed.
* ``save(plain_module, path)`` writes a plain state dict (e.g. ``zm.export()``), loadable with
  ``model.load_state_dict(safetensors.torch.load_file(path))`` and no zootune at all.

Files are written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted save never leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_write
from .convert import ZooModel, zoo_tune
from .errors import CheckpointError

FORMAT_KEY = "zootune"
FORMAT_VERSION = 1


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save(module: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``module`` to ``path`` (safetensors). A :class:`ZooModel` keeps its structure in the
    metadata; any other module is written as a plain state dict."""
    info: dict[str, Any] = {"format_version": FORMAT_VERSION, "extra": metadata or {}}
    if isinstance(module, ZooModel):
        info["kind"] = "zoo_model"
        info["settings"] = module.settings
    else:
        info["kind"] = "plain"
        info["class"] = f"{type(module).__module__}.{type(module).__qualname__}"
    header = {FORMAT_KEY: json.dumps(info)}
    tensors = _tensors(module)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The zootune metadata of a saved file (``{}`` for a safetensors file zootune did not write)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    raw = meta.get(FORMAT_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt zootune metadata ({exc})") from None


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None


def load(
    path: str | os.PathLike,
    template: nn.Module | Callable[[], nn.Module] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load what :func:`save` wrote.

    ``template`` gives the architecture (a module of the source architecture, or a callable that
    builds one; its weights are ignored). For a ZooModel file the ZooModel is rebuilt around it;
    a plain file is loaded into a copy of it. The template itself is not modified.
    """
    path = Path(path)
    info = read_metadata(path)
    tensors = _read_tensors(path, device)
    if template is None:
        raise CheckpointError(
            f"{path}: pass template= (a module of the source architecture) to load it"
        )
    base = template() if callable(template) and not isinstance(template, nn.Module) else template
    if isinstance(base, ZooModel):
        base = base.model
    if not isinstance(base, nn.Module):
        raise CheckpointError(f"template must be an nn.Module or a callable returning one, got {type(base).__name__}")
    if info.get("kind") == "zoo_model":
        s = info["settings"]
        model = zoo_tune(
            [base] * int(s["num_sources"]),
            layers=list(s["layers"]),
            align=list(s["align"]) if s["align"] else False,
            lite=s["lite"],
            rest=0,
            gate=s["gate"],
            gate_init=s["gate_init"],
            gate_hidden=s["gate_hidden"],
            te_momentum=s["te_momentum"],
            kernel=s.get("kernel", "auto"),
            recompute=s.get("recompute", True),
        )
        model.settings["rest"] = s.get("rest", "average")
    else:
        import copy

        model = copy.deepcopy(base)
    _load_state(model, tensors, path)
    return model.to(device)


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the template: "
            + (f"missing '{missing[0]}' ({len(missing)} missing)" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected '{unexpected[0]}' ({len(unexpected)} unexpected)" if unexpected else "")
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: tensor '{k}' has shape {tuple(v.shape)} in the file but "
                f"{tuple(own[k].shape)} in the template"
            )
    model.load_state_dict(tensors, strict=True)
