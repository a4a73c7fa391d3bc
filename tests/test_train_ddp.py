"""DDP: 2 CPU processes (gloo) match a single process with the same global batch, and the lite
temporal-ensemble state is identical on every rank."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from trainer_utils import REPO, assert_same_state, subprocess_env, tiny_raw
from zootune.config import build_config
from zootune.train import build_run, fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    # no BatchNorm (GroupNorm): per-rank batch statistics would differ from the global batch's
    raw = tiny_raw(train__steps=8, train__batch_size=16, train__checkpoint_every=0,
                   train__eval_every=4)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(REPO / "tests" / "ddp_worker.py"),
           str(tmp_path / "cfg.yaml"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    # every rank holds exactly the same weights and running statistics (temporal ensemble)
    assert_same_state(r0["state"], r1["state"])
    te = [k for k in r0["state"] if ".te." in k]
    assert te and all(int(r0["state"][k]) == 8 for k in te if k.endswith("steps"))
    assert r0["metrics"] == r1["metrics"]
    # rank 0 alone wrote the run folder
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert json.loads((out / "result.json").read_text())["world_size"] == 2
    import zootune  # the run's model file carries its record: it loads with no template

    assert_same_state({k: v.detach() for k, v in zootune.load(out).state_dict().items()}, r0["state"])
    report = (out / "report.md").read_text()  # written after a collective FLOP count
    assert "## Cost" in report and "failed" not in report

    cfg = build_config(raw)
    run = build_run(cfg)
    single = fit(run.model, run.task, run.data, cfg, None, method=run.method, report=False)
    ref = {k: v.detach() for k, v in single.model.state_dict().items()}
    assert_same_state(r0["state"], ref, atol=1e-5)
    moved = [k for k in te if k.endswith("accumulator")]
    assert any(not torch.equal(r0["state"][k], torch.zeros_like(r0["state"][k])) for k in moved)
    assert single.metrics["test"]["accuracy"] == pytest.approx(r0["metrics"]["test"]["accuracy"])


@pytest.mark.slow
def test_extra_modules_of_a_method_stay_in_sync_under_ddp(tmp_path):
    """A method's extra trainable module (outside the DDP wrapper) gets averaged gradients: every
    rank ends with the same value, equal to a single process's."""
    raw = tiny_raw(method={"name": "test_scaled_finetune", "penalty": 0.1}, train__steps=6,
                   train__batch_size=16, train__checkpoint_every=0, train__eval_every=0)
    raw["zoo"]["builder_kwargs"]["norm"] = "group"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(REPO / "tests" / "ddp_worker.py"),
           str(tmp_path / "cfg.yaml"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(r0["extras"]["temperature.weight"], r1["extras"]["temperature.weight"])
    import plugin_examples  # noqa: F401

    cfg = build_config(raw)
    run = build_run(cfg)
    single = fit(run.model, run.task, run.data, cfg, None, method=run.method, report=False)
    t = single.extra_modules["temperature"].weight.detach()
    assert float(t) != 1.0
    assert torch.allclose(r0["extras"]["temperature.weight"], t, atol=1e-5)
