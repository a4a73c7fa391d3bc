"""Do these modules form one zoo? The one architecture check of zootune.

Aggregating weights (Zoo-Tuning, averaging) needs every member to have the first member's
parameters and buffers, under the same names and with the same shapes; the aggregated model
takes the first member's module tree, so the members' trees must match too (same module names
and classes: two models whose tensors agree but whose activations differ would silently be
aggregated into the first one's); and a NaN or Inf weight would poison every aggregated layer.

:func:`check_same_architecture` tests exactly that and raises one
:class:`~zootune.errors.ZooMismatchError` at the first difference, naming both members (by
name when names are given), the key and both shapes, and saying when the difference lies in a
classification head (:func:`zootune.zoo.find_head`), which is the usual cause: a zoo mixes
models trained for different label sets. ``zootune.validate_zoo`` (what ``zoo_tune`` runs) and
:func:`zootune.zoo.load_zoo` both call it.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from zootune.errors import ZooMismatchError
from zootune.zoo.checkpoint import check_finite
from zootune.zoo.heads import find_head
from zootune.zoo.keymap import is_head_key

__all__ = ["HEAD_HINT", "check_same_architecture"]

#: Appended to a mismatch that lies in a classification head.
HEAD_HINT = (" (a classification head: strip the heads, e.g. load_zoo(..., strip_heads=True) or "
             "zootune.zoo.strip_head, or give every member the same head)")


def _class_name(cls: type, other: type) -> str:
    """``cls.__name__``, qualified by its module when that alone would not tell it from other."""
    if cls.__name__ == other.__name__ and cls is not other:
        return f"{cls.__module__}.{cls.__qualname__}"
    return cls.__name__


def check_same_architecture(
    models: Sequence[nn.Module],
    names: Sequence[str] | None = None,
    *,
    hint_heads: bool = True,
    modules: bool = True,
    finite: bool = True,
) -> None:
    """Raise :class:`~zootune.errors.ZooMismatchError` unless ``models`` share one architecture.

    Every member is compared with ``models[0]``, in this order: parameter and buffer names and
    shapes (state dict keys); with ``modules=True`` the module tree (names and classes, in
    order); with ``finite=True`` every floating-point tensor of every member must be finite
    (:class:`~zootune.zoo.errors.NonFiniteWeightsError`, a ``ZooMismatchError``).

    ``names``: one name per member, used in messages (default: ``member 0``, ``member 1``...).
    ``hint_heads``: say so when the first difference lies in a classification head.
    ``modules=False`` allows members of different classes with identical tensors (timm's and
    torchvision's ResNet-50; :func:`zootune.zoo.load_zoo` then loads them into one class).
    """
    models = list(models)
    if names is not None and len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} zoo members")

    def short(i: int) -> str:
        return repr(names[i]) if names is not None else str(i)

    def who(i: int) -> str:
        return repr(names[i]) if names is not None else f"member {i}"

    states = [m.state_dict() for m in models]
    heads: dict[int, str | None] = {}

    def hint(key: str, *members: int) -> str:
        if not hint_heads:
            return ""
        for i in members:
            if i not in heads:
                heads[i] = find_head(models[i])
            if is_head_key(key, heads[i]):
                return HEAD_HINT
        return ""

    ref = states[0]
    for i in range(1, len(models)):
        sd = states[i]
        pair = f"zoo members {short(0)} and {short(i)}"
        for key, t0 in ref.items():
            t1 = sd.get(key)
            if t1 is None:
                raise ZooMismatchError(
                    f"{pair} differ: {key!r} {tuple(t0.shape)} is in {who(0)} but not in "
                    f"{who(i)}{hint(key, 0, i)}"
                )
            if tuple(t1.shape) != tuple(t0.shape):
                raise ZooMismatchError(
                    f"{pair} differ at {key!r}: shape {tuple(t0.shape)} in {who(0)} but "
                    f"{tuple(t1.shape)} in {who(i)}{hint(key, 0, i)}; a zoo shares one architecture"
                )
        extra = next((k for k in sd if k not in ref), None)
        if extra is not None:
            raise ZooMismatchError(
                f"{pair} differ: {extra!r} {tuple(sd[extra].shape)} is in {who(i)} but not in "
                f"{who(0)}{hint(extra, i, 0)}"
            )
    if modules:
        tree0 = [(n, type(m)) for n, m in models[0].named_modules()]
        for i in range(1, len(models)):
            tree = [(n, type(m)) for n, m in models[i].named_modules()]
            if tree == tree0:
                continue
            pair = f"zoo members {short(0)} and {short(i)}"
            for (n0, c0), (n1, c1) in zip(tree0, tree):
                if (n0, c0) != (n1, c1):
                    raise ZooMismatchError(
                        f"{pair} have a different module tree: '{n0 or '<root>'}' "
                        f"({_class_name(c0, c1)}) in {who(0)} vs '{n1 or '<root>'}' "
                        f"({_class_name(c1, c0)}) in {who(i)}"
                    )
            longer, j = (tree0, 0) if len(tree0) > len(tree) else (tree, i)
            n, c = longer[min(len(tree0), len(tree))]
            raise ZooMismatchError(
                f"{pair} have a different module tree: '{n}' ({c.__name__}) is only in {who(j)}"
            )
    if finite:
        for i, sd in enumerate(states):
            check_finite(sd, f"zoo member {names[i]!r}" if names is not None else f"zoo member {i}")
