"""Reusable scratch buffers for the per-sample weights of AdaAgg layers.

Per-sample aggregation produces ``B x |W|`` numbers per layer and step (0.45 GB for one 3x3
conv of ResNet-50's last stage at batch 48). Allocating such a tensor afresh costs more than
filling it: on Linux the allocator maps new pages for every large allocation and each first
touch page-faults (measured here: allocate + fill 0.61 s vs fill of an existing buffer 0.23 s).
The per-sample weights are consumed immediately by the layer's kernel and (with
``recompute=True``) rebuilt in backward, so one buffer per purpose, grown on demand and shared by
all layers, serves every layer in turn.

Not re-entrant: two forward passes running at once in threads of one process would share the
buffers. :func:`release` frees them (e.g. after training, before deployment).
"""

from __future__ import annotations

import torch

_BUFFERS: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` backed by the shared buffer ``name``.

    Only on the CPU, where it pays (module docstring): elsewhere (CUDA's caching allocator
    reuses freed blocks without page faults) and while ``torch.compile`` traces (a global
    buffer is a side effect it cannot keep in one graph) it is a fresh ``torch.empty``.
    """
    if torch.device(device).type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(shape, dtype=dtype, device=device)
    numel = 1
    for s in shape:
        numel *= int(s)
    key = (name, torch.device(device), dtype)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        _BUFFERS.pop(key, None)
        with torch.inference_mode(False):  # a normal tensor: usable inside and outside
            buf = torch.empty(numel, dtype=dtype, device=device)
        _BUFFERS[key] = buf
    return buf[:numel].view(shape)


def release() -> None:
    """Free every scratch buffer."""
    _BUFFERS.clear()


def allocated_bytes() -> int:
    return sum(b.numel() * b.element_size() for b in _BUFFERS.values())
