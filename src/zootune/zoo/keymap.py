"""Map a checkpoint's keys onto a target architecture, and say exactly what was dropped.

Checkpoints rarely use the bare key names of the architecture they hold: ``module.`` from
``DataParallel``, ``module.encoder_q.`` from MoCo, ``backbone.body.`` from torchvision's
detection models (Faster / Mask / Keypoint R-CNN, RetinaNet), ``backbone.`` from its
segmentation models (DeepLabV3, FCN). :func:`map_state_dict` finds the prefix that makes the
most checkpoint keys land on target keys (ties go to the better-known prefix: ``encoder_q`` is
MoCo's query encoder, the one its authors transfer), strips it, and returns a
:class:`KeyMapReport` of everything else:

* ``dropped`` -- checkpoint keys that were not used (heads, FPN, RPN, MoCo's key encoder...);
* ``missing`` -- target keys the checkpoint does not provide;
* ``filled`` -- target keys synthesised because the source cannot have them: detection models
  use ``FrozenBatchNorm2d``, which has weight, bias, running mean and running variance (all
  mapped) but no ``num_batches_tracked`` counter; that counter is set to 0;
* ``mismatched`` -- keys present in both with different shapes.

Nothing is dropped silently: the report travels with the loaded model and
``zootune zoo inspect`` prints it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

# Preferred prefixes when several strip to the same number of matches (first wins).
KNOWN_PREFIXES = (
    "",
    "module.",
    "module.encoder_q.",
    "encoder_q.",
    "module.base_encoder.",
    "base_encoder.",
    "backbone.body.",
    "backbone.",
    "model.",
    "module.model.",
    "encoder.",
    "student.",
    "teacher.",
)


@dataclass
class KeyMapReport:
    """What happened to each key when a checkpoint was mapped onto an architecture."""

    prefix: str = ""
    wrapper: list[str] = field(default_factory=list)
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    head: str | None = None
    head_missing: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Several lines: prefix, counts, and dropped keys grouped by module."""
        lines = []
        where = "/".join(self.wrapper)
        if self.mapped or self.prefix or where:
            lines.append(
                f"mapped {self.mapped} tensors"
                + (f" from wrapper '{where}'" if where else "")
                + (f" with prefix '{self.prefix}' stripped" if self.prefix else "")
            )
        if self.filled:
            lines.append(
                f"filled {len(self.filled)} keys the source has no counterpart for "
                f"({_group_line(self.filled)}; set to 0)"
            )
        if self.missing:
            lines.append(f"missing {len(self.missing)}: {_group_line(self.missing)}")
        if self.head_missing and self.head:
            lines.append(f"head '{self.head}' not in the checkpoint: randomly initialised")
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:3])
            lines.append(f"shape mismatch {len(self.mismatched)}: {shown}")
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)}: {_group_line(self.dropped)}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "wrapper": list(self.wrapper),
            "mapped": self.mapped,
            "dropped": list(self.dropped),
            "missing": list(self.missing),
            "filled": list(self.filled),
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
            "head": self.head,
            "head_missing": self.head_missing,
            "notes": list(self.notes),
        }


def group_keys(keys: Sequence[str], depth: int = 2) -> "OrderedDict[str, int]":
    """Count keys by their first ``depth`` dotted components (``backbone.fpn`` -> 16)."""
    counts: "OrderedDict[str, int]" = OrderedDict()
    for k in keys:
        parts = k.split(".")
        g = ".".join(parts[: min(depth, max(1, len(parts) - 1))])
        counts[g] = counts.get(g, 0) + 1
    return counts


def _group_line(keys: Sequence[str], limit: int = 8) -> str:
    groups = group_keys(keys)
    items = [f"{g}.* ({n})" for g, n in list(groups.items())[:limit]]
    if len(groups) > limit:
        items.append(f"... {len(groups) - limit} more groups")
    return ", ".join(items)


def best_prefix(source_keys: Sequence[str], target_keys: Sequence[str]) -> tuple[str, int]:
    """The prefix whose removal makes the most ``source_keys`` equal to ``target_keys``."""
    targets = set(target_keys)
    counts: Counter[str] = Counter()
    for k in source_keys:
        if k in targets:
            counts[""] += 1
        idx = k.find(".")
        while idx != -1:
            if k[idx + 1:] in targets:
                counts[k[: idx + 1]] += 1
            idx = k.find(".", idx + 1)
    if not counts:
        return "", 0
    best = max(counts.values())
    tied = [p for p, c in counts.items() if c == best]

    def rank(p: str) -> tuple[int, int, str]:
        known = KNOWN_PREFIXES.index(p) if p in KNOWN_PREFIXES else len(KNOWN_PREFIXES)
        return (known, len(p), p)

    return min(tied, key=rank), best


def map_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    head: str | None = None,
) -> tuple[dict[str, torch.Tensor], KeyMapReport]:
    """Rename ``source`` keys onto ``target`` keys.

    ``target`` is the target model's ``state_dict()`` (only keys and shapes are used);
    ``prefix`` forces the prefix to strip (found automatically when ``None``); ``head`` names
    the classifier module of the target (its keys may be missing or mismatched without being
    an error: heads are replaced for the target task). Returns the mapped state dict (only
    keys the target has, shapes equal) and the report. Missing ``num_batches_tracked``
    counters are filled with 0 and listed under ``filled``.
    """
    src_keys = list(source.keys())
    if prefix is None:
        prefix, _ = best_prefix(src_keys, list(target.keys()))
    report = KeyMapReport(prefix=prefix, head=head)
    out: dict[str, torch.Tensor] = {}
    for k in src_keys:
        if not k.startswith(prefix):
            report.dropped.append(k)
            continue
        tk = k[len(prefix):]
        if tk not in target:
            report.dropped.append(k)
            continue
        if tuple(source[k].shape) != tuple(target[tk].shape):
            report.mismatched.append((tk, tuple(source[k].shape), tuple(target[tk].shape)))
            report.dropped.append(k)
            continue
        out[tk] = source[k]
    for tk, tv in target.items():
        if tk in out:
            continue
        if tk.endswith("num_batches_tracked") and tk.rsplit(".", 1)[0] + ".running_mean" in out:
            out[tk] = torch.zeros_like(tv)
            report.filled.append(tk)
            continue
        report.missing.append(tk)
    report.mapped = len(out) - len(report.filled)
    if head:
        hp = head + "."
        report.head_missing = any(k.startswith(hp) for k in report.missing)
    return out, report


def is_head_key(key: str, head: str | None) -> bool:
    return bool(head) and (key == head or key.startswith(head + "."))  # type: ignore[operator]
