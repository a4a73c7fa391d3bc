"""``load`` one zoo member, ``load_zoo`` several and check they form one zoo."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch.nn as nn

from zootune.zoo.builders import BUILDERS, head_name
from zootune.zoo.cache import Context
from zootune.zoo.checkpoint import check_finite
from zootune.zoo.errors import ZooMismatchError, ZooSpecError
from zootune.zoo.keymap import KeyMapReport
from zootune.zoo.preprocess import ATTR as PRE_ATTR
from zootune.zoo.preprocess import Preprocessing, zoo_preprocessing
from zootune.zoo.presets import PRESET_DEFAULTS, expand_preset, preset_names
from zootune.zoo.relatedness import Relatedness, relatedness, warn_if_unrelated
from zootune.zoo.spec import ZooSpec, parse_spec

SPEC_ATTR = "zootune_spec"
REPORT_ATTR = "zootune_load_report"

SpecLike = str | Mapping[str, Any] | ZooSpec


class ZooLoadWarning(UserWarning):
    """Something about a loaded zoo the user should know (random head, class unified...)."""


def load(
    spec: SpecLike,
    pretrained: bool = True,
    *,
    offline: bool | None = None,
    checkpoint_dir: str | Path | Sequence[str | Path] | None = None,
    arch: str | None = None,
    strict: bool | None = None,
    name: str | None = None,
    _ctx: Context | None = None,
) -> nn.Module:
    """Build the model a spec names; ``pretrained=False`` gives random weights, same shapes.

    The result carries ``zootune_spec`` (the spec text), ``zootune_preprocessing``
    (:class:`~zootune.zoo.preprocess.Preprocessing`) and ``zootune_load_report``
    (:class:`~zootune.zoo.keymap.KeyMapReport`: what was mapped, filled, dropped).
    ``arch``/``strict``/``name`` fill options the spec leaves out. See :mod:`zootune.zoo`.
    """
    if isinstance(spec, str) and expand_preset(spec) is not None:
        raise ZooSpecError(f"{spec!r} is a preset (a whole zoo); load it with load_zoo")
    parsed = parse_spec(spec, arch=arch, strict=strict, name=name)
    ctx = _ctx or Context.make(offline, checkpoint_dir)
    model, pre, report = BUILDERS[parsed.kind](parsed, pretrained, ctx)
    check_finite(dict(model.state_dict()), parsed.text)
    setattr(model, SPEC_ATTR, parsed.text)
    setattr(model, PRE_ATTR, pre)
    setattr(model, REPORT_ATTR, report)
    return model


def _safe_parse(s: SpecLike, arch: str | None) -> ZooSpec:
    try:
        return parse_spec(s, arch=arch)
    except ZooSpecError:
        if isinstance(s, str) and " " not in s.strip() and ":" not in s:
            raise ZooSpecError(
                f"{s!r} is neither a zoo spec nor a preset; presets: {', '.join(preset_names())}"
            ) from None
        raise


def expand_specs(
    specs: SpecLike | Iterable[SpecLike], arch: str | None = None
) -> tuple[list[ZooSpec], dict[str, object]]:
    """Expand presets and parse specs: ``([ZooSpec...], preset defaults)``.

    ``arch`` is used by raw-checkpoint specs (``file:``, ``url:``) that do not name one.
    """
    if isinstance(specs, (str, Mapping, ZooSpec)):
        specs = [specs]
    out: list[ZooSpec] = []
    defaults: dict[str, object] = {}
    for s in specs:
        if isinstance(s, str) and (members := expand_preset(s)) is not None:
            key = s.strip().replace("_", "-").lower()
            defaults.update(PRESET_DEFAULTS.get(key, {}))
            out += [parse_spec(text, name=n) for n, text in members]
        else:
            out.append(_safe_parse(s, arch))
    if not out:
        raise ZooSpecError("empty zoo: give at least one spec or a preset")
    return out, defaults


def strip_head(model: nn.Module) -> str | None:
    """Replace the classification head by ``nn.Identity`` (timm: ``reset_classifier(0)``).

    Returns the head's name (``None`` when the model has none). The model then outputs its
    pooled features; ``model.num_features`` says how many when the library sets it.
    """
    head = head_name(model)
    if head is None:
        return None
    if hasattr(model, "reset_classifier"):
        try:
            model.reset_classifier(0)
            return head
        except Exception:  # fall back to replacing the module
            pass
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    lin = getattr(parent, child)
    if not hasattr(model, "num_features") and isinstance(lin, nn.Linear):
        model.num_features = lin.in_features  # type: ignore[assignment]
    setattr(parent, child, nn.Identity())
    return head


def check_same_architecture(
    models: Sequence[nn.Module], names: Sequence[str], *, hint_heads: bool = True
) -> None:
    """Raise :class:`ZooMismatchError` at the first parameter/buffer whose name or shape
    differs between ``models[0]`` and another member (naming both members and shapes)."""
    ref = models[0].state_dict()
    for other, oname in zip(models[1:], names[1:]):
        sd = other.state_dict()
        head = head_name(models[0])
        hint = ""
        for k, v in ref.items():
            if k not in sd:
                if hint_heads and head and k.startswith(head + "."):
                    hint = " (a classification head: pass strip_heads=True)"
                raise ZooMismatchError(
                    f"zoo members {names[0]!r} and {oname!r} differ: {k!r} {tuple(v.shape)} "
                    f"is in {names[0]!r} but not in {oname!r}{hint}"
                )
            if tuple(sd[k].shape) != tuple(v.shape):
                if hint_heads and head and k.startswith(head + "."):
                    hint = " (a classification head: pass strip_heads=True)"
                raise ZooMismatchError(
                    f"zoo members {names[0]!r} and {oname!r} differ at {k!r}: shape "
                    f"{tuple(v.shape)} vs {tuple(sd[k].shape)}{hint}"
                )
        extra = [k for k in sd if k not in ref]
        if extra:
            raise ZooMismatchError(
                f"zoo members {names[0]!r} and {oname!r} differ: {extra[0]!r} "
                f"{tuple(sd[extra[0]].shape)} is in {oname!r} but not in {names[0]!r}"
            )


class Zoo(list):
    """The loaded zoo: a list of ``nn.Module`` (pass it straight to ``zootune.zoo_tune``) with
    ``names``, ``specs``, ``preprocessing`` (the zoo's), ``reports`` (per member
    :class:`~zootune.zoo.keymap.KeyMapReport`), ``relatedness`` and ``warnings`` (texts)."""

    names: list[str]
    specs: list[str]
    preprocessing: Preprocessing
    reports: list[KeyMapReport]
    relatedness: Relatedness | None
    warnings: list[str]

    def summary(self) -> str:
        lines = []
        for n, s, r in zip(self.names, self.specs, self.reports):
            lines.append(f"{n}: {s}")
            lines += ["    " + line for line in r.summary().splitlines()]
        return "\n".join(lines)


def load_zoo(
    specs: SpecLike | Iterable[SpecLike],
    *,
    pretrained: bool = True,
    strip_heads: bool | None = None,
    offline: bool | None = None,
    checkpoint_dir: str | Path | Sequence[str | Path] | None = None,
    arch: str | None = None,
    check_related: bool | None = None,
    unify: bool = True,
    warn: bool = True,
) -> Zoo:
    """Load every member of a zoo and check that they form one.

    ``specs``: one spec, a preset name (``"paper-resnet50"``), or a list mixing both.
    ``strip_heads``: replace each classification head by ``nn.Identity`` (default: the
    preset's choice, else ``False``). ``unify``: when members are different classes with
    identical parameter names and shapes (timm's and torchvision's ResNet-50), load each
    member's weights into a copy of the first member so that all share one class.
    ``check_related``: compute per-layer weight similarity and warn when members look
    independently trained (default: only with ``pretrained=True``; random weights are
    trivially unrelated). Raises :class:`ZooMismatchError` at the first parameter whose
    name or shape differs (both shapes in the message).
    """
    parsed, defaults = expand_specs(specs, arch)
    if strip_heads is None:
        strip_heads = bool(defaults.get("strip_heads", False))
    ctx = Context.make(offline, checkpoint_dir)
    models: list[nn.Module] = []
    names = unique_names([p.label for p in parsed])
    for p, n in zip(parsed, names):
        models.append(load(p, pretrained, arch=arch, _ctx=ctx, name=n))
    texts: list[str] = []
    if strip_heads:
        for m in models:
            strip_head(m)
    else:
        for n, m in zip(names, models):
            rep: KeyMapReport = getattr(m, REPORT_ATTR)
            if rep.head_missing and rep.head:
                texts.append(f"{n}: head {rep.head!r} is not in the checkpoint and was randomly "
                             "initialised (pass strip_heads=True to drop heads)")
    check_same_architecture(models, names, hint_heads=not strip_heads)
    if unify and len({type(m) for m in models}) > 1:
        models = _unify_classes(models, names, texts)
    pre = zoo_preprocessing(
        [getattr(m, PRE_ATTR, None) for m in models], names, warn=warn
    )
    if warn:
        for t in texts:
            warnings.warn(t, ZooLoadWarning, stacklevel=2)
    rel = None
    if check_related is None:
        check_related = pretrained
    if check_related and len(models) > 1:
        heads = [h for h in {head_name(m) for m in models} if h]
        rel = relatedness(models, names, exclude_prefixes=heads)
        text = warn_if_unrelated(rel, stacklevel=2) if warn else rel.warning_text()
        if text:
            texts.append(text)
    zoo = Zoo(models)
    zoo.names = names
    zoo.specs = [getattr(m, SPEC_ATTR) for m in models]
    zoo.preprocessing = pre
    zoo.reports = [getattr(m, REPORT_ATTR) for m in models]
    zoo.relatedness = rel
    zoo.warnings = texts
    return zoo


def unique_names(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if lab in seen:
            seen[lab] += 1
            out.append(f"{lab}#{seen[lab]}")
        else:
            seen[lab] = 1
            out.append(lab)
    return out


def _unify_classes(models: list[nn.Module], names: list[str], texts: list[str]) -> list[nn.Module]:
    first = models[0]
    out = [first]
    for m, n in zip(models[1:], names[1:]):
        if type(m) is type(first):
            out.append(m)
            continue
        clone = copy.deepcopy(first)
        clone.load_state_dict(m.state_dict())
        for attr in (SPEC_ATTR, PRE_ATTR, REPORT_ATTR):
            setattr(clone, attr, getattr(m, attr))
        texts.append(f"{n}: weights of a {type(m).__module__}.{type(m).__name__} loaded into "
                     f"the first member's class {type(first).__name__} (same parameter names)")
        out.append(clone)
    return out
