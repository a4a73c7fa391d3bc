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
- ``url:URL`` -- a checkpoint downloaded once into torch's hub cache, loaded into ``arch=``.

Options after the target, separated by spaces: ``arch=`` (the architecture a raw checkpoint is
loaded into: ``resnet50``, ``torchvision:resnet50``, ``timm:resnet50``, or the import path
of a model builder, ``package.module:callable``, e.g. ``zootune.demo.model:MiniCNN``), ``name=`` (a short
name used in reports), ``strict=false`` (allow trunk keys missing from a checkpoint). A spec
may also be given as a mapping ``{"spec": "file:a.pth", "arch": "resnet50", "name": "a"}``
(handy in YAML when a path holds spaces). A bare path to an existing checkpoint file is read as
``file:PATH``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from zootune.zoo.errors import ZooSpecError

KINDS = ("timm", "torchvision", "torchvision-backbone", "hf", "file", "url")
OPTIONS = ("arch", "name", "strict")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".tar", ".ckpt")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ZooSpec:
    """One parsed zoo member spec.

    ``target`` is the model name, path, repo id or URL; ``weights`` the torchvision weights
    name or the file inside a hub repo (``None`` when not given); ``revision`` a hub revision.
    """

    kind: str
    target: str
    weights: str | None = None
    revision: str | None = None
    arch: str | None = None
    name: str | None = None
    strict: bool = True
    text: str = ""

    @property
    def label(self) -> str:
        """Short name for reports: ``name=`` if given, else derived from the target."""
        if self.name:
            return self.name
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
        unknown = sorted(set(data) - set(OPTIONS))
        if unknown:
            raise ZooSpecError(
                f"zoo spec {spec!r}: unknown option(s) {unknown}; valid: {list(OPTIONS)}"
            )
        strict = data.get("strict", base.strict)
        if isinstance(strict, str):
            strict = _parse_bool("strict", strict, str(spec))
        parsed = ZooSpec(
            kind=base.kind,
            target=base.target,
            weights=base.weights,
            revision=base.revision,
            arch=data.get("arch", base.arch),
            name=data.get("name", base.name),
            strict=bool(strict),
            text=base.text,
        )
    else:
        parsed = _parse_text(str(spec))
    if overrides:
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(changes) - set(OPTIONS))
        if unknown:
            raise ZooSpecError(f"unknown spec option(s) {unknown}; valid: {list(OPTIONS)}")
        values = {
            "arch": parsed.arch or changes.get("arch"),
            "name": parsed.name or changes.get("name"),
            "strict": parsed.strict if "strict" not in changes else bool(changes["strict"]),
        }
        parsed = ZooSpec(
            parsed.kind, parsed.target, parsed.weights, parsed.revision,
            values["arch"], values["name"], values["strict"], parsed.text,
        )
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
        extra = head.split()[1]
        key = extra.partition("=")[0]
        if "=" in extra:
            raise ZooSpecError(
                f"zoo spec {text!r}: unknown option {key!r}; valid: {', '.join(OPTIONS)}"
            )
        raise ZooSpecError(
            f"zoo spec {text!r}: expected key=value options after the target, got {extra!r}"
        )
    strict = _parse_bool("strict", options["strict"], text) if "strict" in options else True
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
    return ZooSpec(
        kind=kind,
        target=target,
        weights=weights,
        revision=revision,
        arch=options.get("arch"),
        name=options.get("name"),
        strict=strict,
        text=text,
    )


def _unknown_kind_message(text: str, head: str, kind: str | None) -> str:
    forms = "timm:NAME, torchvision:MODEL[:WEIGHTS], torchvision-backbone:MODEL[:WEIGHTS], " \
        "hf:ORG/REPO, file:PATH arch=ARCH, url:URL arch=ARCH, or a preset"
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
