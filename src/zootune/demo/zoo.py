"""The shipped mini zoo: loading ``weights/*.safetensors`` described by ``weights/zoo.json``.

Weights are stored in float16 (half the size; the recorded source accuracies were measured after
that rounding) and loaded as float32. Each member keeps its own source head (its domain's number
of classes); the target task replaces it (:meth:`zootune.tasks.Task.prepare_zoo`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from zootune.demo.model import MiniCNN
from zootune.errors import CheckpointError

__all__ = ["WEIGHTS_DIR", "MANIFEST", "read_manifest", "load_member", "load_demo_zoo",
           "DEFAULT_ZOO"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "zoo.json"
#: The zoo the demo uses by default: the broad base model and its four fine-tuned specialists.
DEFAULT_ZOO = ("base", "latin", "greek", "cyrillic", "numerals")


def read_manifest(weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = Path(weights_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"the demo zoo is missing ({path} not found); rebuild it with "
            "`python -m zootune.demo.build_zoo`")
    return json.loads(path.read_text())


def load_member(entry: dict[str, Any], weights_dir: str | Path = WEIGHTS_DIR) -> MiniCNN:
    """One zoo member (with its source head), float32, eval mode."""
    from safetensors.torch import load_file

    path = Path(weights_dir) / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"demo zoo member {entry['name']!r}: {path} not found")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    model = MiniCNN(int(entry["num_classes"]), width=int(entry.get("width", 32)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"demo zoo member {entry['name']!r} does not fit MiniCNN: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def load_demo_zoo(names: Sequence[str] | None = DEFAULT_ZOO, weights_dir: str | Path = WEIGHTS_DIR):
    """The mini zoo as a :class:`zootune.train.Zoo` (``names=None``: every shipped member)."""
    from zootune.train import Zoo

    manifest = read_manifest(weights_dir)
    members = {m["name"]: m for m in manifest["members"]}
    names = list(members) if names is None else list(names)
    missing = [n for n in names if n not in members]
    if missing:
        raise CheckpointError(f"demo zoo has no member(s) {missing}; shipped: {', '.join(members)}")
    models = [load_member(members[n], weights_dir) for n in names]
    info = {"members": {n: {k: members[n][k] for k in ("domain", "init", "source_accuracy")
                            if k in members[n]} for n in names}}
    return Zoo(models, names, {"input_size": (1, manifest["resolution"], manifest["resolution"])}, info)
