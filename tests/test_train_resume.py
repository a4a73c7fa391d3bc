"""Resume: a crashed, SIGKILLed or Ctrl-C'd run, resumed, ends with the uninterrupted weights;
checkpoints are written atomically."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer_utils import (assert_same_state, final_weights, load_state, subprocess_env, tiny_config,
                           tiny_raw, zootune_cmd)
from zootune.config import build_config
from zootune.errors import CheckpointError
from zootune.train import build_run, fit
from zootune.train import checkpoint as ck
from zootune.train.logger import read_metrics


def _fit(cfg, out, **kw):
    run = build_run(cfg)
    return fit(run.model, run.task, run.data, cfg, out, method=run.method, report=False,
               record=run.record(), **kw)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["zoo_tuning_lite", "zoo_tuning"])
def test_crash_and_resume_equals_uninterrupted(tmp_path, method):
    cfg = tiny_config(method=method)
    ref = _fit(cfg, tmp_path / "ref")
    ref_w = final_weights(tmp_path / "ref")

    def crash(event):
        if event["split"] == "train" and event["step"] == 9:  # after the checkpoint at step 8
            raise _Crash

    with pytest.raises(_Crash):
        _fit(cfg, tmp_path / "b", on_log=crash)
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["step"] == 8
    assert not (tmp_path / "b/model.safetensors").exists()
    # checkpoint layout: step_N/{model.safetensors, state.pt}; the model file is in the one
    # model format and loads with no template (it carries the run record)
    step8 = tmp_path / "b/checkpoints/step_00000008"
    assert {f.name for f in step8.iterdir()} == {ck.WEIGHTS, ck.STATE}
    assert ck.read_state(step8)["step"] == 8
    import zootune

    loaded = zootune.load(step8 / ck.WEIGHTS)
    assert_same_state({k: v for k, v in loaded.state_dict().items()},
                      load_state(step8 / ck.WEIGHTS))
    res = _fit(cfg, tmp_path / "b", resume=True)
    assert res.steps == cfg.train.steps
    assert_same_state(final_weights(tmp_path / "b"), ref_w)
    assert res.metrics["test"] == pytest.approx(ref.metrics["test"])
    # the log reads like one run: steps 3, 6, 9, 12 once each
    steps = [e["step"] for e in read_metrics(tmp_path / "b/metrics.jsonl") if e["split"] == "train"]
    assert steps == [3, 6, 9, 12]
    if method == "zoo_tuning_lite":  # the temporal ensemble is part of the resumed state
        te = [k for k in ref_w if k.endswith("te.steps")]
        assert te and all(int(ref_w[k]) == cfg.train.steps for k in te)


# ---- real signals to a subprocess ---------------------------------------------------------------

STEPS = 200


@pytest.fixture(scope="module")
def signal_setup(tmp_path_factory):
    """A config slow enough to be interrupted, and its uninterrupted final weights."""
    d = tmp_path_factory.mktemp("sig")
    raw = tiny_raw(train__steps=STEPS, train__checkpoint_every=4, train__eval_every=0,
                   train__log_every=40, train__keep_checkpoints=2)
    path = d / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    _fit(build_config(raw), d / "ref")
    return path, final_weights(d / "ref")


def _start(cfg_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(zootune_cmd("tune", str(cfg_path), "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, min_step: int, timeout: float = 120) -> int:
    latest = out / "checkpoints" / "latest.json"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if latest.exists():
            try:
                step = json.loads(latest.read_text())["step"]
            except ValueError:
                step = -1
            if step >= min_step:
                return step
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, signal_setup):
    cfg_path, ref_w = signal_setup
    out = tmp_path / "run"
    proc = _start(cfg_path, out)
    _wait_for_checkpoint(proc, out, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((out / "checkpoints/latest.json").read_text())["step"]
    assert 8 <= killed_at < STEPS and not (out / "model.safetensors").exists()
    cfg = build_config(yaml.safe_load(cfg_path.read_text()))
    res = _fit(cfg, out, resume=True)
    assert res.steps == STEPS
    assert_same_state(final_weights(out), ref_w)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, signal_setup):
    cfg_path, ref_w = signal_setup
    out = tmp_path / "run"
    proc = _start(cfg_path, out)
    _wait_for_checkpoint(proc, out, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted at step" in err
    step = json.loads((out / "checkpoints/latest.json").read_text())["step"]
    assert 4 <= step < STEPS
    assert f"step {step}" in err  # the checkpoint was taken where it stopped
    cfg = build_config(yaml.safe_load(cfg_path.read_text()))
    _fit(cfg, out, resume=True)
    assert_same_state(final_weights(out), ref_w)


# ---- atomic checkpoints -------------------------------------------------------------------------


def _files(model, state):
    return {ck.WEIGHTS: lambda p: ck.save_module(model, p),
            ck.STATE: lambda p: torch.save(state, p)}


def test_crash_mid_checkpoint_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    from zootune.train import TrainState

    model = torch.nn.Linear(3, 2)
    root = tmp_path / "checkpoints"
    state = TrainState(model=model, step=1, extras={"note": "first"})
    state.save(root)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    state.step = 2

    def torn_save(obj, path, *a, **k):
        Path(path).write_bytes(b"\x80\x02partial")  # half-written state, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(OSError):
        state.save(root)
    with pytest.raises(OSError):
        ck.save_checkpoint(root, 2, _files(model, {"step": 2}))
    monkeypatch.undo()
    latest = ck.read_latest(root)
    assert latest is not None and latest.name == "step_00000001"
    assert TrainState.latest(root) == latest
    assert ck.read_state(latest)["step"] == 1
    fresh = torch.nn.Linear(3, 2)
    ck.load_module(fresh, latest / ck.WEIGHTS)
    assert all(torch.equal(fresh.state_dict()[k], good[k]) for k in good)
    again = TrainState(model=torch.nn.Linear(3, 2))
    again.load(latest)
    assert again.step == 1 and again.extras == {"note": "first"}
    assert all(torch.equal(again.model.state_dict()[k], good[k]) for k in good)
    assert not (root / "step_00000002").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # temp folder removed


def test_torn_weights_file_never_replaces_the_old_one(tmp_path, monkeypatch):
    import zootune.export as zexport

    model = torch.nn.Linear(3, 2)
    path = tmp_path / "model.safetensors"
    ck.save_module(model, path)
    before = path.read_bytes()

    def torn(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(zexport, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        ck.save_module(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_corrupt_latest_pointer_is_a_clear_error(tmp_path):
    root = tmp_path / "checkpoints"
    ck.save_checkpoint(root, 3, _files(torch.nn.Linear(2, 2), {"step": 3}), keep=1)
    ck.save_checkpoint(root, 6, _files(torch.nn.Linear(2, 2), {"step": 6}), keep=1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000006"]
    (root / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.read_latest(root)
    (root / "latest.json").write_text(json.dumps({"step": 6, "dir": "step_00000006"}))
    (root / "step_00000006" / ck.STATE).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        ck.read_latest(root)
