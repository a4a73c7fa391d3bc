"""Helpers shared by the benchmark scripts (results files, notes, the machine they ran on)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

#: below this line of a results Markdown file, hand-written analysis survives a rewrite
NOTES_MARK = "<!-- notes: hand-written analysis below is kept when the tables are rewritten -->"


def keep_notes(path: Path, text: str) -> str:
    """``text`` followed by the notes already below :data:`NOTES_MARK` in ``path`` (if any)."""
    if path.is_file():
        old = path.read_text()
        if NOTES_MARK in old:
            return text.rstrip("\n") + "\n\n" + NOTES_MARK + old.split(NOTES_MARK, 1)[1]
    return text.rstrip("\n") + "\n\n" + NOTES_MARK + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (never a half-written result)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def command_line() -> str:
    """The command that ran this script, with the ``LD_PRELOAD`` it ran under (a results file
    records how to reproduce it; the allocator changes the numbers)."""
    preload = os.environ.get("LD_PRELOAD", "")
    return (f"LD_PRELOAD={preload} " if preload else "") + "python " + " ".join(sys.argv)


def run_setup(**options: Any) -> dict[str, Any]:
    """``options`` plus the CPU model and ``LD_PRELOAD``: everything that must match before rows
    measured by an earlier run are reused (:func:`reusable_rows`)."""
    return {**options, "cpu": cpu_name(), "ld_preload": os.environ.get("LD_PRELOAD", "")}


def reusable_rows(path: Path, setup: dict[str, Any], key, force: bool = False) -> tuple[dict, dict]:
    """The results file at ``path`` and ``{key(row): row}`` of its rows, if it was written with
    the same ``setup``; nothing when ``force`` or when the setup differs (a resumable benchmark
    skips only what it measured under the same conditions)."""
    old = json.loads(path.read_text()) if path.is_file() and not force else {}
    rows = {key(r): r for r in old.get("rows", [])} if old.get("setup") == setup else {}
    return old, rows


def provenance(threads: int, old: dict | None = None) -> dict[str, Any]:
    """``command`` and ``environment`` of a results file: ``old``'s when given (a re-run that
    reused every row measured nothing, so the numbers still come from that run), else this run's."""
    if old:
        return {"command": old["command"], "environment": old["environment"]}
    return {"command": command_line(), "environment": environment(threads)}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), recorded with every measurement: sessions run
    on different machines, and one results file collects cells from several of them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def environment(threads: int = 1) -> dict[str, Any]:
    """Machine, versions and time of writing, recorded beside every result."""
    import numpy
    import torch

    import zootune

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_name(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "zootune": zootune.__version__, "threads": threads,
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}


def aggregated_conv_inputs(zoo_model, size: int) -> dict[str, tuple[Any, Any]]:
    """``{name: (layer, input shape)}`` for every AdaAgg layer of ``zoo_model``, in the order a
    forward of a 2-image batch at ``size`` x ``size`` reaches them (eval mode, no autograd)."""
    import torch

    layers = zoo_model.adaagg_layers()
    inputs: dict[str, Any] = {}

    def recorder(name):
        def hook(mod, inp, out):
            inputs.setdefault(name, inp[0].shape)

        return hook

    hooks = [layer.register_forward_hook(recorder(n)) for n, layer in layers.items()]
    was_training = zoo_model.training
    try:
        with torch.no_grad():
            zoo_model.eval()
            zoo_model(torch.randn(2, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        zoo_model.train(was_training)
    return {n: (layers[n], shape) for n, shape in inputs.items()}
