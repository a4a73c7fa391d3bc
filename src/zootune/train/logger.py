"""Run logging: ``metrics.jsonl`` (one JSON object per event) and TensorBoard event files.

Only rank 0 logs. On resume, events after the resumed step are dropped from ``metrics.jsonl``
(they came from the part of the killed run that is being redone) and TensorBoard is told to
purge them, so the logs of a resumed run read like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from zootune.atomic import atomic_write_text


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All events of a ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class RunLogger:
    """Writes events to ``metrics.jsonl`` and TensorBoard (when installed and enabled)."""

    def __init__(self, out_dir: str | Path | None, *, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self._tb = None
        self._file = None
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        kept: list[dict[str, Any]] = []
        if resume_step is not None:
            kept = [e for e in read_metrics(path) if e.get("step", 0) <= resume_step]
            self.history = kept
        # the rewritten log replaces the old one atomically; events are then appended line by
        # line (a torn last line after a crash is skipped by read_metrics)
        atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))
        self._file = open(path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=resume_step)
            except Exception as exc:  # noqa: BLE001 - tensorboard is optional
                warnings.warn(f"TensorBoard logging disabled: {exc}", stacklevel=2)

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        event = {"step": int(step), "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self.history.append(event)
        if self._file is not None:
            self._file.write(json.dumps(event) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
