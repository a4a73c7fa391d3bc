"""Run by the DDP test under torchrun: fit a tiny config, save every rank's final state.

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CONFIG.yaml OUT
"""

import os
import sys
from pathlib import Path

import torch

from zootune.config import load_config
from zootune.train import build_run, fit

import plugin_examples  # noqa: F401,E402 - registers test_scaled_finetune

cfg = load_config(sys.argv[1])
out = Path(sys.argv[2])
run = build_run(cfg)
res = fit(run.model, run.task, run.data, cfg, out, method=run.method, run_info=run.info(),
          record=run.record())  # report: all ranks count FLOPs
rank = int(os.environ.get("RANK", "0"))
state = {k: v.detach().cpu().clone() for k, v in res.model.state_dict().items()}
extras = {f"{n}.{k}": v.detach().cpu().clone() for n, m in res.extra_modules.items()
          for k, v in m.state_dict().items()}
torch.save({"state": state, "metrics": res.metrics, "extras": extras}, out / f"rank{rank}.pt")
