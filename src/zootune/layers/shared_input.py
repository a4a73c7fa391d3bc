"""Compute what depends only on a layer's input once when several layers read that same input.

Two networks often see one batch: a DQN-style update runs the target network and the online
network on the same next observations (double Q-learning), and an ensemble or a distillation
teacher runs next to its student. Their AdaAgg layers then repeat work that depends on the input
alone — the im2col columns of the ``unfold`` kernel and the pooled gate input — although the
weights differ. Inside :func:`input_reuse` such input-derived tensors are memoised by the
identity of the input tensor (the object itself, kept alive by the memo so its ``id`` cannot be
reused, and its in-place version counter), so the second layer gets the first layer's result;
outside it nothing is kept. It is exact: a hit returns the very tensor the computation would
have recomputed from unchanged data.

A tensor that is part of an autograd graph (computed with grad enabled from an input that needs a
gradient) is never memoised: each graph keeps its own. The memo lives until the ``with`` block
ends; nest blocks freely (each has its own memo).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_MEMOS: list[dict] = []


@contextmanager
def input_reuse() -> Iterator[None]:
    """Memoise input-derived tensors (im2col columns, pooled gate inputs) inside the block."""
    _MEMOS.append({})
    try:
        yield
    finally:
        _MEMOS.pop()


def reuse(kind: str, x: torch.Tensor, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, or its earlier result for the same ``kind``, ``key`` and unchanged ``x``
    inside an :func:`input_reuse` block. ``key`` holds whatever else the result depends on
    (e.g. kernel size and stride); ``compute`` must depend on nothing but ``x`` and ``key``."""
    if not _MEMOS or torch.compiler.is_compiling() or (torch.is_grad_enabled() and x.requires_grad):
        return compute()
    memo = _MEMOS[-1]
    k = (kind, id(x), x._version, key)
    hit = memo.get(k)
    if hit is not None and hit[0] is x:
        return hit[1]
    out = compute()
    memo[k] = (x, out)
    return out


def memo_size() -> int:
    """Entries in the innermost memo (0 outside any block) — for tests and debugging."""
    return len(_MEMOS[-1]) if _MEMOS else 0


__all__ = ["input_reuse", "memo_size", "reuse"]
