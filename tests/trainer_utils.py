"""Shared helpers of the trainer tests (tiny configs; not a test module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from zootune.config import build_config
from zootune.train.checkpoint import WEIGHTS

REPO = Path(__file__).resolve().parents[1]


def tiny_raw(**over: Any) -> dict[str, Any]:
    """A config dict for a few-second run on 8x8 digits with 2-3 tiny random CNN sources."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "recipe": "adam",
        "method": "zoo_tuning_lite",
        "zoo": {"builder": "zootune.models:small_cnn",
                "builder_kwargs": {"widths": [4, 8], "norm": "group"}, "random_sources": 2},
        "data": {"name": "digits", "labels_per_class": 12},
        "optim": {"lr": 0.01},
        "train": {"steps": 12, "batch_size": 16, "eval_every": 6, "log_every": 3,
                  "checkpoint_every": 4, "threads": 1, "progress": False, "tensorboard": False},
    }
    for k, v in over.items():
        section, _, key = k.partition("__")
        if key:
            raw.setdefault(section, {})[key] = v
        else:
            raw[section] = v
    return raw


def tiny_config(**over: Any):
    return build_config(tiny_raw(**over))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(run_dir / "model.safetensors")


def ckpt_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(ckpt_dir / WEIGHTS)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs (max {float((a[k].double() - b[k].double()).abs().max())})"
        else:
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=1e-5), (
                f"{k} differs by {float((a[k].double() - b[k].double()).abs().max())}")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def zootune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zootune", *args]


def run_cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(zootune_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(), cwd=cwd)


def load_script(relative_path: str) -> Any:
    """Import a script of the repository (``benchmarks/paper_zoo.py``, ``examples/...``) as a
    module named after its file, registered in ``sys.modules`` (dataclasses need that)."""
    import importlib.util

    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod
