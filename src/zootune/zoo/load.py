"""``load`` one zoo member, ``load_zoo`` several and check they form one zoo."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import torch.nn as nn

from zootune.zoo.builders import BUILDERS
from zootune.zoo.cache import Context
from zootune.zoo.check import check_same_architecture
from zootune.zoo.checkpoint import check_finite
from zootune.zoo.errors import ZooSpecError
from zootune.zoo.heads import find_head, strip_head
from zootune.zoo.keymap import KeyMapReport, is_head_key
from zootune.zoo.preprocess import ATTR as PRE_ATTR
from zootune.zoo.preprocess import Preprocessing, zoo_preprocessing
from zootune.zoo.presets import PRESET_DEFAULTS, expand_preset, preset_key, preset_names
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
            defaults.update(PRESET_DEFAULTS.get(preset_key(s), {}))
            out += [parse_spec(text, name=n) for n, text in members]
        else:
            out.append(_safe_parse(s, arch))
    if not out:
        raise ZooSpecError("empty zoo: give at least one spec or a preset")
    return out, defaults


StripHeads = bool | Literal["differing"] | None

_UNSET: Any = object()


class Zoo(list):
    """The one zoo type: a list of ``nn.Module`` (pass it straight to ``zootune.zoo_tune``)
    with what is known about its members.

    Attributes (all present on every instance, however it was built):

    * ``names`` -- one short name per member (reports, gate plots);
    * ``specs`` -- the spec text each member was loaded from (``""`` for a module given as is);
    * ``preprocessing`` -- the zoo's :class:`~zootune.zoo.preprocess.Preprocessing` (``None``
      when unknown);
    * ``reports`` -- per member, the :class:`~zootune.zoo.keymap.KeyMapReport` of its loading
      (an empty report for a module given as is);
    * ``relatedness`` -- :class:`~zootune.zoo.relatedness.Relatedness` or ``None`` (not
      computed);
    * ``warnings`` -- texts of the warnings raised while loading;
    * ``info`` -- free-form facts about the zoo, e.g. ``{"members": {name: {...}}}``.

    ``Zoo(models)`` wraps modules you built yourself: names default to ``source0``,
    ``source1``..., specs and preprocessing to what :func:`load` attached to the modules.
    Deep copies (``copy.deepcopy``) copy everything; :meth:`copy_models` copies the modules and
    keeps the metadata.
    """

    names: list[str]
    specs: list[str]
    preprocessing: Preprocessing | None
    reports: list[KeyMapReport]
    relatedness: Relatedness | None
    warnings: list[str]
    info: dict[str, Any]

    def __init__(
        self,
        models: Iterable[nn.Module] = (),
        names: Sequence[str] | None = None,
        *,
        specs: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = _UNSET,
        reports: Sequence[KeyMapReport] | None = None,
        relatedness: Relatedness | None = None,
        warnings: Sequence[str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(models)
        for i, m in enumerate(self):
            if not isinstance(m, nn.Module):
                raise TypeError(f"zoo member {i} is a {type(m).__name__}, not an nn.Module")
        n = len(self)
        self.names = [str(x) for x in names] if names is not None else [f"source{i}" for i in range(n)]
        self.specs = list(specs) if specs is not None else [getattr(m, SPEC_ATTR, "") for m in self]
        self.reports = (list(reports) if reports is not None
                        else [getattr(m, REPORT_ATTR, None) or KeyMapReport() for m in self])
        for what, values in (("names", self.names), ("specs", self.specs),
                             ("reports", self.reports)):
            if len(values) != n:
                raise ValueError(f"Zoo: {len(values)} {what} for {n} models")
        if preprocessing is _UNSET:
            known = [getattr(m, PRE_ATTR, None) for m in self]
            preprocessing = (zoo_preprocessing(known, self.names, warn=False)
                             if any(p is not None for p in known) else None)
        self.preprocessing = preprocessing
        self.relatedness = relatedness
        self.warnings = list(warnings or [])
        self.info = dict(info or {})

    @property
    def models(self) -> list[nn.Module]:
        """The members as a plain list (a new list; the modules themselves are not copied)."""
        return list(self)

    def copy_models(self) -> "Zoo":
        """A Zoo of deep copies of the modules, with the same metadata (lists and ``info``
        copied, so editing one zoo's metadata leaves the other's alone)."""
        return Zoo(
            [copy.deepcopy(m) for m in self], self.names, specs=self.specs,
            preprocessing=self.preprocessing, reports=self.reports,
            relatedness=self.relatedness, warnings=self.warnings, info=copy.deepcopy(self.info),
        )

    def summary(self) -> str:
        """Several lines: per member its name, spec and what loading did."""
        lines = []
        for n, s, r in zip(self.names, self.specs, self.reports):
            lines.append(f"{n}: {s}" if s else n)
            lines += ["    " + line for line in r.summary().splitlines()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Zoo({len(self)} members: {', '.join(self.names)})"


def _head_signature(model: nn.Module) -> tuple | None:
    """What must agree between members for their heads to be 'the same': name and shapes."""
    head = find_head(model)
    if head is None:
        return None
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()
                   if is_head_key(k, head))
    return head, shapes


def heads_differ(models: Sequence[nn.Module]) -> bool:
    """Whether the members' classification heads (:func:`find_head`) differ in shape or
    presence (one member has a linear head, another none)."""
    return len({_head_signature(m) for m in models}) > 1


def load_zoo(
    specs: SpecLike | Iterable[SpecLike],
    *,
    pretrained: bool = True,
    strip_heads: StripHeads = None,
    offline: bool | None = None,
    checkpoint_dir: str | Path | Sequence[str | Path] | None = None,
    arch: str | None = None,
    check_related: bool | None = None,
    unify: bool = True,
    warn: bool = True,
) -> Zoo:
    """Load every member of a zoo and check that they form one.

    ``specs``: one spec, a preset name (``"paper-resnet50"``, ``"demo"``), or a list mixing
    both (strings or mappings, see :mod:`zootune.zoo.spec`).
    ``strip_heads``: replace each classification head (:func:`find_head`) by ``nn.Identity``:
    ``True`` always, ``False`` never, ``"differing"`` only when the members' heads differ in
    shape or presence (for callers that replace the heads anyway, e.g. a training task: a MoCo
    checkpoint's 128-d projection next to a 1000-class model then forms a zoo, while a zoo of
    identical heads keeps them), ``None`` the preset's choice, else ``False``.
    ``unify``: when members are different classes with identical parameter names and shapes
    (timm's and torchvision's ResNet-50), load each member's weights into a copy of the first
    member so that all share one class.
    ``check_related``: compute per-layer weight similarity and warn when members look
    independently trained (default: only with ``pretrained=True`` and when not every member
    is a ``random:`` model; random weights are trivially unrelated).
    Raises :class:`ZooMismatchError` at the first difference
    (:func:`~zootune.zoo.check.check_same_architecture`: both members, the key, both shapes).

    The result's ``info`` holds ``heads`` (each member's head as found before any stripping,
    ``None`` for none) and ``heads_stripped`` (whether they were stripped).
    """
    if strip_heads not in (True, False, None, "differing"):
        raise ZooSpecError(f"strip_heads must be True, False, None or 'differing', "
                           f"got {strip_heads!r}")
    parsed, defaults = expand_specs(specs, arch)
    if strip_heads is None:
        strip_heads = bool(defaults.get("strip_heads", False))
    ctx = Context.make(offline, checkpoint_dir)
    models: list[nn.Module] = []
    names = unique_names([p.label for p in parsed])
    for p, n in zip(parsed, names):
        models.append(load(p, pretrained, arch=arch, _ctx=ctx, name=n))
    heads = {n: find_head(m) for n, m in zip(names, models)}
    strip = strip_heads is True or (strip_heads == "differing" and heads_differ(models))
    texts: list[str] = []
    if strip:
        for m in models:
            strip_head(m)
    elif strip_heads is False:  # "differing" callers replace the heads: a random one is no news
        for n, m in zip(names, models):
            rep: KeyMapReport = getattr(m, REPORT_ATTR)
            if rep.head_missing and rep.head:
                texts.append(f"{n}: head {rep.head!r} is not in the checkpoint and was randomly "
                             "initialised (pass strip_heads=True to drop heads)")
    # load() checked every member's weights for NaN/Inf already. Members of different classes
    # are compared by their tensors only, then unified into the first member's class.
    one_class = len({type(m) for m in models}) == 1
    check_same_architecture(models, names, hint_heads=not strip, modules=one_class,
                            finite=False)
    if unify and not one_class:
        models = _unify_classes(models, names, texts)
    pre = zoo_preprocessing(
        [getattr(m, PRE_ATTR, None) for m in models], names, warn=warn
    )
    if warn:
        for t in texts:
            warnings.warn(t, ZooLoadWarning, stacklevel=2)
    rel = None
    if check_related is None:
        check_related = pretrained and not all(p.kind == "random" for p in parsed)
    if check_related and len(models) > 1:
        exclude = [h for h in dict.fromkeys(heads.values()) if h]
        rel = relatedness(models, names, exclude_prefixes=exclude)
        text = warn_if_unrelated(rel, stacklevel=2) if warn else rel.warning_text()
        if text:
            texts.append(text)
    return Zoo(
        models, names,
        specs=[getattr(m, SPEC_ATTR) for m in models],
        preprocessing=pre,
        reports=[getattr(m, REPORT_ATTR) for m in models],
        relatedness=rel,
        warnings=texts,
        info={"heads": heads, "heads_stripped": bool(strip)},
    )


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
