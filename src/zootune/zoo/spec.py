"""Zoo specs: short strings that say where one zoo member comes from.

Grammar (one member)::

    KIND:TARGET [key=value ...]

- ``timm:NAME`` -- a timm model, pretrained tag included (``timm:resnet50.a1_in1k``);
- ``torchvision:MODEL[:WEIGHTS]`` -- a torchvision classification model and a member of its
  weights enum (``torchvision:resnet50:IMAGENET1K_V1``; default ``DEFAULT``);
- ``torchvision-backbone:MODEL[:WEIGHTS]`` -- the ResNet trunk of a torchvision detection or
  segmentation model, mapped onto the plain classification model's keys
  (``torchvision-backbone:maskrcnn_resnet50_fpn:COCO_V1`` -> a ``resnet50``);
- ``hf:ORG/REPO[@REVISION]`` -- a timm model hosted on the Hugging Face hub (config + weights);
- ``hf:ORG/REPO[@REVISION]:FILE`` -- one checkpoint file of a hub repo, loaded into ``arch=``;
- ``file:PATH`` -- a local ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` / ``.tar``
  checkpoint, loaded into ``arch=``;
- ``url:URL`` -- a checkpoint downloaded once into torch's hub cache, loaded into ``arch=``;
- ``random:ARCH`` -- a randomly initialised model of ``ARCH`` (same forms as ``arch=``), built
  under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: its weights depend only on
  (ARCH, kwargs, seed) and the caller's random state is left untouched. Default name
  ``random{seed}``. For smoke tests and the ``scratch`` baseline.

Options after the target, separated by spaces: ``arch=`` (the architecture a raw checkpoint is
loaded into: ``resnet50``, ``torchvision:resnet50``, ``timm:resnet50``, or the import path
of a model builder, ``package.module:callable``, e.g. ``zootune.demo.model:MiniCNN``), ``name=`` (a short
name used in reports), ``strict=false`` (allow trunk keys missing from a checkpoint), ``seed=N``
(``random:`` only; default 0). A spec may also be given as a mapping ``{"spec": "file:a.pth",
"arch": "resnet50", "name": "a"}`` (handy in YAML when a path holds spaces); a mapping may add
``kwargs: {...}``, keyword arguments for the architecture builder (``arch=`` or the target of
``random:``), e.g. ``{"spec": "file:a.safetensors", "arch": "zootune.models:small_cnn",
"kwargs": {"widths": [4, 8], "norm": "group"}}``. A bare path to an existing checkpoint file
is read as ``file:PATH``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from zootune.zoo.errors import ZooSpecError

KINDS = ("timm", "torchvision", "torchvision-backbone", "hf", "file", "url", "random")
#: Options of the text form (``key=value`` after the target).
OPTIONS = ("arch", "name", "strict", "seed")
#: Keys a mapping-form spec may hold besides ``spec``.
MAPPING_OPTIONS = OPTIONS + ("kwargs",)
#: Options that ``parse_spec(..., **overrides)`` may fill in.
OVERRIDES = ("arch", "name", "strict")
#: Kinds that build their model with the ``arch=`` builder (and so accept ``kwargs``).
ARCH_KINDS = ("file", "url", "random")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".tar", ".ckpt")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ZooSpec:
    """One parsed zoo member spec.

    ``target`` is the model name, path, repo id, URL or (``random:``) architecture; ``weights``
    the torchvision weights name or the file inside a hub repo (``None`` when not given);
    ``revision`` a hub revision; ``arch`` the architecture a checkpoint is loaded into (for
    ``random:`` the target itself); ``kwargs`` keyword arguments of that architecture's
    builder; ``seed`` the seed of a ``random:`` model (``None``: 0).
    """

    kind: str
    target: str
    weights: str | None = None
    revision: str | None = None
    arch: str | None = None
    name: str | None = None
    strict: bool = True
    text: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    seed: int | None = None

    def uses_arch(self) -> bool:
        """Whether the model is built by the ``arch`` builder (so ``kwargs`` apply)."""
        return self.kind in ARCH_KINDS or (self.kind == "hf" and self.weights is not None)

    @property
    def label(self) -> str:
        """Short name for reports: ``name=`` if given, else derived from the target."""
        if self.name:
            return self.name
        if self.kind == "random":
            return f"random{self.seed or 0}"
        if self.kind in ("file", "url"):
            base = self.target.rstrip("/").rsplit("/", 1)[-1]
            for suffix in CHECKPOINT_SUFFIXES:
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
            return base.removesuffix(".pth")
        if self.kind == "hf":
            return self.target.rsplit("/", 1)[-1] + (f":{self.weights}" if self.weights else "")
        return self.target + (f":{self.weights}" if self.weights else "")

    def __str__(self) -> str:
        return self.text or f"{self.kind}:{self.target}"


def _parse_bool(key: str, value: str, text: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ZooSpecError(f"zoo spec {text!r}: option {key}={value!r} is not a boolean")


def parse_spec(spec: str | Mapping[str, Any] | ZooSpec, **overrides: Any) -> ZooSpec:
    """Parse one spec string (or mapping) into a :class:`ZooSpec`.

    ``overrides`` (``arch=``, ``name=``, ``strict=``) fill options the spec leaves unset.
    Raises :class:`ZooSpecError` with the accepted forms when the spec is malformed.
    """
    if isinstance(spec, ZooSpec):
        parsed = spec
    elif isinstance(spec, Mapping):
        data = dict(spec)
        if "spec" not in data:
            raise ZooSpecError(f"zoo spec mapping {data!r} needs a 'spec' key")
        base = _parse_text(str(data.pop("spec")))
        unknown = sorted(set(data) - set(MAPPING_OPTIONS))
        if unknown:
            raise ZooSpecError(
                f"zoo spec {spec!r}: unknown option(s) {unknown}; valid: {list(MAPPING_OPTIONS)}"
            )
        strict = data.get("strict", base.strict)
        if isinstance(strict, str):
            strict = _parse_bool("strict", strict, str(spec))
        kwargs = data.get("kwargs") or {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ZooSpecError(f"zoo spec {spec!r}: kwargs must be a mapping of keyword "
                               f"arguments, got {kwargs!r}")
        text = base.text
        if base.kind == "random" and data.get("arch") is not None:
            raise ZooSpecError(_random_arch_message(base.text))
        # Options given as keys are appended to the text, so that the text (what reports and
        # Zoo.specs show) names the architecture and seed; each may be given once only.
        seed, arch = base.seed, base.arch
        if data.get("seed") is not None:
            if base.seed is not None:
                raise ZooSpecError(f"zoo spec {spec!r}: seed given twice")
            seed = _parse_seed(str(data["seed"]), base.text)
            text += f" seed={seed}"
        if data.get("arch") is not None:
            if base.arch is not None:
                raise ZooSpecError(f"zoo spec {spec!r}: arch given twice")
            arch = str(data["arch"])
            text += f" arch={arch}"
        parsed = ZooSpec(
            kind=base.kind,
            target=base.target,
            weights=base.weights,
            revision=base.revision,
            arch=arch,
            name=data.get("name", base.name),
            strict=bool(strict),
            text=text,
            kwargs=dict(kwargs),
            seed=seed,
        )
    else:
        parsed = _parse_text(str(spec))
    if overrides:
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(changes) - set(OVERRIDES))
        if unknown:
            raise ZooSpecError(f"unknown spec option(s) {unknown}; valid: {list(OVERRIDES)}")
        parsed = replace(
            parsed,
            arch=parsed.arch or changes.get("arch"),
            name=parsed.name or changes.get("name"),
            strict=parsed.strict if "strict" not in changes else bool(changes["strict"]),
        )
    if parsed.kwargs and not parsed.uses_arch():
        raise ZooSpecError(
            f"zoo spec {parsed.text!r}: kwargs are passed to the arch= builder, and a "
            f"{parsed.kind}: spec builds its model itself; use kwargs with file:, url:, "
            f"hf:ORG/REPO:FILE or random:"
        )
    if parsed.seed is not None and parsed.kind != "random":
        raise ZooSpecError(f"zoo spec {parsed.text!r}: seed= is an option of random: specs only")
    if parsed.kind in ("file", "url") and not parsed.arch:
        raise ZooSpecError(
            f"zoo spec {parsed.text!r}: a raw checkpoint needs arch= naming the architecture "
            f"to load it into, e.g. '{parsed.text} arch=resnet50'"
        )
    if parsed.kind == "hf" and parsed.weights and not parsed.arch:
        raise ZooSpecError(
            f"zoo spec {parsed.text!r}: a checkpoint file from a hub repo needs arch=, "
            f"e.g. '{parsed.text} arch=resnet50'"
        )
    return parsed


def _parse_text(text: str) -> ZooSpec:
    text = text.strip()
    if not text:
        raise ZooSpecError("empty zoo spec")
    # Options are trailing key=value tokens; what precedes them is the target (a file path
    # may hold spaces).
    tail = re.search(r"(?:\s+(?:%s)=\S+)*\s*$" % "|".join(OPTIONS), text)
    head = text[: tail.start()].strip() if tail else text
    options: dict[str, str] = {}
    for opt in (tail.group(0).split() if tail else []):
        key, _, value = opt.partition("=")
        options[key] = value
    if any(c.isspace() for c in head) and not head.startswith("file:"):
        tokens = head.split()[1:]
        # name the token that is actually wrong: the first that is not a known key=value option
        extra = next((t for t in tokens if t.partition("=")[0] not in OPTIONS or "=" not in t), tokens[0])
        key = extra.partition("=")[0]
        if "=" in extra:
            raise ZooSpecError(
                f"zoo spec {text!r}: unknown option {key!r}; valid: {', '.join(OPTIONS)}"
            )
        raise ZooSpecError(
            f"zoo spec {text!r}: expected key=value options after the target, got {extra!r}"
        )
    strict = _parse_bool("strict", options["strict"], text) if "strict" in options else True
    seed = _parse_seed(options["seed"], text) if "seed" in options else None
    kind, colon, rest = head.partition(":")
    if not colon or kind not in KINDS:
        if Path(head).suffix in CHECKPOINT_SUFFIXES and Path(head).is_file():
            kind, rest = "file", head
        else:
            raise ZooSpecError(_unknown_kind_message(text, head, kind if colon else None))
    if not rest:
        raise ZooSpecError(f"zoo spec {text!r}: nothing after '{kind}:'")
    weights = revision = None
    target = rest
    if kind in ("torchvision", "torchvision-backbone"):
        target, _, weights = rest.partition(":")
        weights = weights or None
    elif kind == "hf":
        target, _, weights = rest.partition(":")
        weights = weights or None
        target, _, revision = target.partition("@")
        revision = revision or None
        if target.count("/") != 1 or not all(target.split("/")):
            raise ZooSpecError(
                f"zoo spec {text!r}: expected hf:ORG/REPO[@REVISION][:FILE], got {rest!r}"
            )
    elif kind == "url" and "://" not in rest:
        raise ZooSpecError(f"zoo spec {text!r}: expected url:https://..., got {rest!r}")
    arch = options.get("arch")
    if kind == "random":
        if arch is not None:
            raise ZooSpecError(_random_arch_message(text))
        arch = rest
    return ZooSpec(
        kind=kind,
        target=target,
        weights=weights,
        revision=revision,
        arch=arch,
        name=options.get("name"),
        strict=strict,
        text=text,
        seed=seed,
    )


def _parse_seed(value: str, text: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise ZooSpecError(f"zoo spec {text!r}: seed={value!r} is not an integer") from None
    if seed < 0:
        raise ZooSpecError(f"zoo spec {text!r}: seed={seed} must be >= 0")
    return seed


def _random_arch_message(text: str) -> str:
    return (f"zoo spec {text!r}: a random: spec names its architecture after 'random:' "
            f"(e.g. 'random:resnet18 seed=0'); arch= is not used")


def _unknown_kind_message(text: str, head: str, kind: str | None) -> str:
    forms = "timm:NAME, torchvision:MODEL[:WEIGHTS], torchvision-backbone:MODEL[:WEIGHTS], " \
        "hf:ORG/REPO, file:PATH arch=ARCH, url:URL arch=ARCH, random:ARCH [seed=N], or a preset"
    if kind is not None:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"zoo spec {text!r}: unknown kind {kind!r}{hint}; expected {forms}"
    if Path(head).suffix in CHECKPOINT_SUFFIXES:
        return f"zoo spec {text!r}: no such checkpoint file {head!r}"
    return (
        f"zoo spec {text!r} names no source; write e.g. 'timm:{head}' or 'torchvision:{head}' "
        f"(expected {forms})"
    )
