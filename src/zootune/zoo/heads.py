"""Find and strip the classification head of a model: the one head finder of zootune.

A zoo member's last layer is specific to its source task (1000 ImageNet classes, a 128-d MoCo
projection, a detector's trunk has none). Loading (:mod:`zootune.zoo.builders`), checking
(:mod:`zootune.zoo.check`), relatedness and the tasks' head replacement all need to know which
module that is; :func:`find_head` is the single place that decides.

Search order (the first that applies wins):

1. an explicit ``name``: the last ``nn.Linear`` inside that module (the module itself if it is
   one); an unknown name raises :class:`~zootune.errors.HeadError`;
2. timm's ``pretrained_cfg["classifier"]`` (the module name timm records for every model);
3. timm's ``get_classifier()``;
4. the attributes torchvision and common models use: ``fc``, ``classifier``, ``heads``,
   ``head``, ``last_linear``;
5. the last ``nn.Linear`` of the whole model.

A head the model declares (steps 2-3) is authoritative: when it holds no ``nn.Linear`` (timm
built with ``num_classes=0``, a stripped head) the answer is ``None``. Likewise in step 4, when
the attributes exist but none holds an ``nn.Linear`` (a head stripped to ``nn.Identity``, a
convolutional classifier): picking some other ``nn.Linear`` deep inside the trunk (a
transformer's MLP) would be wrong.
"""

from __future__ import annotations

import contextlib
import difflib

import torch.nn as nn

from zootune.errors import HeadError

__all__ = ["HEAD_ATTRS", "STRIPPED_ATTR", "find_head", "find_stripped_head", "strip_head"]

#: attribute recording which head :func:`strip_head` replaced
STRIPPED_ATTR = "zootune_stripped_head"

#: Attribute names under which torchvision and common plain models keep their classifier.
HEAD_ATTRS = ("fc", "classifier", "heads", "head", "last_linear")


def _last_linear(model: nn.Module, prefix: str) -> str | None:
    """Full name of the last ``nn.Linear`` in the submodule ``prefix`` (``""``: the model)."""
    root = model.get_submodule(prefix) if prefix else model
    last = None
    for name, mod in root.named_modules():
        if isinstance(mod, nn.Linear):
            last = ".".join(p for p in (prefix, name) if p)
    return last


def _module_name(model: nn.Module, module: nn.Module) -> str | None:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    return None


def _declared_head(model: nn.Module) -> str | None:
    """The head module a timm-style model declares (steps 2-3), if it names an existing one."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        cls = cfg["classifier"]
        cls = str(cls[0] if isinstance(cls, (list, tuple)) else cls)
        with contextlib.suppress(AttributeError):
            model.get_submodule(cls)
            return cls
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            clf = get_classifier()
        except Exception:  # noqa: BLE001 - any quirk of a model's own method: skip this step
            clf = None
        if isinstance(clf, nn.Module):
            return _module_name(model, clf) or None
    return None


def find_head(model: nn.Module, name: str | None = None) -> str | None:
    """Module name of the classification ``nn.Linear`` of ``model``, or ``None``.

    ``name`` names the head module explicitly (its last ``nn.Linear`` is returned; ``None`` when
    it holds none, e.g. a head stripped to ``nn.Identity``). Without ``name`` the search order of
    the module docstring applies; ``None`` means the model has no linear head (stripped, or a
    trunk without one). Raises :class:`~zootune.errors.HeadError` when ``name`` is not a module
    of ``model``.
    """
    if name is not None:
        try:
            model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HeadError(
                f"{type(model).__name__} has no module named {name!r}{hint}"
            ) from None
        return _last_linear(model, name)
    declared = _declared_head(model)
    if declared is not None:  # the model says where its head is: nowhere else to look
        return _last_linear(model, declared)
    attrs = [a for a in HEAD_ATTRS if isinstance(getattr(model, a, None), nn.Module)]
    for attr in attrs:
        found = _last_linear(model, attr)
        if found is not None:
            return found
    if attrs:  # the head's place exists but holds no Linear: stripped, or not a linear head
        return None
    return _last_linear(model, "")


def strip_head(model: nn.Module) -> str | None:
    """Replace the classification head by ``nn.Identity`` (timm: ``reset_classifier(0)``).

    Returns the head's name (``None`` when the model has none: nothing is changed). The model
    then outputs its pooled features; ``model.num_features`` says how many (set here from the
    removed layer's ``in_features`` when the model does not define it).
    """
    head = find_head(model)
    if head is None:
        return None
    setattr(model, STRIPPED_ATTR, head)
    if hasattr(model, "reset_classifier"):
        try:
            model.reset_classifier(0)
            return head
        except Exception:  # noqa: BLE001 - fall back to replacing the module
            pass
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    lin = getattr(parent, child)
    if not hasattr(model, "num_features") and isinstance(lin, nn.Linear):
        model.num_features = lin.in_features  # type: ignore[assignment]
    setattr(parent, child, nn.Identity())
    return head


def find_stripped_head(model: nn.Module, name: str | None = None) -> str | None:
    """Name of a head that was stripped to ``nn.Identity`` (by :func:`strip_head`, which records
    it, or by hand at ``name`` or one of the usual head attributes), or None."""
    candidates = [name] if name else [getattr(model, STRIPPED_ATTR, None), *HEAD_ATTRS]
    for cand in candidates:
        if not cand:
            continue
        try:
            m = model.get_submodule(cand)
        except AttributeError:
            continue
        if isinstance(m, nn.Identity):
            return cand
    return None
