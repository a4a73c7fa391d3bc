"""The shipped mini zoo: ``weights/*.safetensors`` described by ``weights/zoo.json``.

The zoo loads through :func:`zootune.zoo.load_zoo`, like every other zoo: the default members
are also the zoo preset ``demo`` (``zootune.zoo.load_zoo("demo")``, heads stripped by default).
Weights are stored in float16 (half the size; the recorded source accuracies were measured after
that rounding) and load as float32. Each member keeps its own source head (its domain's number
of classes) unless the caller strips it; the target task replaces it anyway
(:meth:`zootune.tasks.Task.prepare_zoo`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from zootune.errors import CheckpointError
from zootune.zoo import Zoo, load, load_zoo
from zootune.zoo.load import StripHeads
from zootune.zoo.presets import DEMO_ARCH, DEMO_MEMBERS, DEMO_WEIGHTS_DIR

__all__ = ["WEIGHTS_DIR", "MANIFEST", "read_manifest", "member_spec", "load_member",
           "load_demo_zoo", "DEFAULT_ZOO"]

WEIGHTS_DIR = DEMO_WEIGHTS_DIR
MANIFEST = "zoo.json"
#: The zoo the demo uses by default: the broad base model and its four fine-tuned specialists
#: (the members of the ``demo`` zoo preset).
DEFAULT_ZOO = DEMO_MEMBERS
#: Manifest fields copied into ``Zoo.info["members"][name]``.
INFO_FIELDS = ("domain", "init", "source_accuracy")


def read_manifest(weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The parsed ``zoo.json`` of ``weights_dir`` (recipe, members, source accuracies)."""
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"the demo zoo is missing ({path} not found); rebuild it with "
            "`python -m zootune.demo.build_zoo`")
    return json.loads(path.read_text())


def member_spec(entry: dict[str, Any], weights_dir: str | Path = WEIGHTS_DIR,
                arch: str = DEMO_ARCH) -> dict[str, Any]:
    """The zoo spec (mapping form) of one manifest entry: its file loaded into ``arch``."""
    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"demo zoo member {entry['name']!r}: {path} not found")
    return {"spec": f"file:{path}", "arch": arch, "name": entry["name"],
            "kwargs": {"width": int(entry.get("width", 32))}}


def load_member(entry: dict[str, Any], weights_dir: str | Path = WEIGHTS_DIR) -> nn.Module:
    """One zoo member (a MiniCNN with its source head), float32, eval mode."""
    return load(member_spec(entry, weights_dir)).eval()


def load_demo_zoo(
    names: Sequence[str] | None = DEFAULT_ZOO,
    weights_dir: str | Path = WEIGHTS_DIR,
    *,
    strip_heads: StripHeads = "differing",
    **load_kwargs: Any,
) -> Zoo:
    """The mini zoo of ``weights_dir`` as a :class:`zootune.zoo.Zoo` (``names=None``: every
    member of its manifest).

    Goes through :func:`zootune.zoo.load_zoo` (``load_kwargs``: its other options). The
    members' source heads differ in size (each domain has its own classes), so by default they
    are stripped (``"differing"``) and the result is one aggregatable zoo; to keep every
    member's own head, load members one by one with :func:`load_member`. ``info["members"][name]``
    carries the manifest's ``domain``, ``init`` and ``source_accuracy``.
    """
    manifest = read_manifest(weights_dir)
    members = {m["name"]: m for m in manifest["members"]}
    names = list(members) if names is None else list(names)
    missing = [n for n in names if n not in members]
    if missing:
        raise CheckpointError(f"demo zoo has no member(s) {missing}; shipped: {', '.join(members)}")
    arch = manifest.get("architecture", DEMO_ARCH)
    specs = [member_spec(members[n], weights_dir, arch) for n in names]
    zoo = load_zoo(specs, strip_heads=strip_heads, **load_kwargs)
    zoo.info["members"] = {n: {k: members[n][k] for k in INFO_FIELDS if k in members[n]}
                           for n in names}
    zoo.info["weights_dir"] = str(Path(weights_dir))
    return zoo
