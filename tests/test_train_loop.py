"""Training loop: determinism, selection on validation, divergence, plain models."""

from __future__ import annotations

import pytest
import torch

from trainer_utils import assert_same_state, tiny_config
from zootune.train import build_run, evaluate, fit
from zootune.train.step import TrainingError


def _fit(cfg, out=None, **kw):
    run = build_run(cfg)
    return run, fit(run.model, run.task, run.data, cfg, out, method=run.method, report=False,
                    run_info=run.info(), record=run.record(), **kw)


def test_same_seed_same_weights_other_seed_differs():
    cfg = tiny_config(train__steps=5, train__eval_every=0, train__checkpoint_every=0)
    _, a = _fit(cfg)
    _, b = _fit(cfg)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    _, c = _fit(tiny_config(train__steps=5, train__eval_every=0, train__checkpoint_every=0,
                            train__seed=1))
    assert not torch.equal(a.model.model.fc.weight, c.model.model.fc.weight)


def test_select_best_restores_the_best_validation_weights(tmp_path):
    cfg = tiny_config(train__steps=12, train__eval_every=2, train__select="best",
                      optim__lr=0.05)
    run, res = _fit(cfg, tmp_path / "r")
    vals = [e for e in res.history if e["split"] == "val"]
    best = max(vals, key=lambda e: e["accuracy"])
    assert res.best_step == best["step"] and res.best_val["accuracy"] == best["accuracy"]
    again = evaluate(res.model, run.task, run.data.val)
    assert again["accuracy"] == pytest.approx(best["accuracy"])
    assert res.metrics["val"]["accuracy"] == pytest.approx(best["accuracy"])
    assert (tmp_path / "r" / "best.safetensors").is_file()
    # best/final model files carry the run record: they load without a template
    import zootune

    best_model = zootune.load(tmp_path / "r" / "best.safetensors")
    assert_same_state(best_model.state_dict(), {k: v.cpu() for k, v in res.model.state_dict().items()})
    assert evaluate(best_model, run.task, run.data.val)["accuracy"] == pytest.approx(best["accuracy"])


def test_divergence_is_a_clear_error():
    cfg = tiny_config(train__steps=30, train__eval_every=0, train__checkpoint_every=0,
                      optim__lr=1e12, optim__name="sgd")
    with pytest.raises(TrainingError, match="diverged"):
        _fit(cfg)
    import zootune.train
    import zootune.train.loop
    from zootune.errors import ZootuneError

    assert zootune.train.TrainingError is TrainingError is zootune.train.loop.TrainingError
    assert issubclass(TrainingError, ZootuneError)


def test_divergence_is_caught_before_a_checkpoint_saves_nan_weights(tmp_path):
    """Divergence is read at log steps and checkpoints (no per-step sync): with a log interval
    longer than the checkpoint interval, the checkpoint itself must refuse NaN weights."""
    from zootune.train.checkpoint import read_latest

    cfg = tiny_config(train__steps=30, train__eval_every=0, train__checkpoint_every=4,
                      train__log_every=25, optim__lr=1e12, optim__name="sgd")
    with pytest.raises(TrainingError, match=r"at step 2 \(diverged\)"):  # first bad step named
        _fit(cfg, tmp_path / "r")
    # the loss went NaN before the first checkpoint (step 4): nothing was saved
    assert read_latest(tmp_path / "r" / "checkpoints") is None
    assert not list((tmp_path / "r").glob("checkpoints/step_*"))
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_plain_finetune_uses_head_lr_and_logs_lr():
    cfg = tiny_config(method="finetune", train__steps=3, train__eval_every=0,
                      train__checkpoint_every=0, train__log_every=1, optim__head_lr=0.5)
    _, res = _fit(cfg)
    assert isinstance(res.model, torch.nn.Module) and not hasattr(res.model, "gate_values")
    train = [e for e in res.history if e["split"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3]
    assert all(e["lr"] > 0 for e in train)


@pytest.mark.parametrize("method", ["zoo_tuning_lite", "zoo_tuning"])
def test_bf16_autocast_runs_and_tracks_fp32(method):
    """The AMP code path (CPU autocast with bf16; CUDA uses the same code with bf16/fp16)."""
    common = dict(method=method, train__steps=6, train__eval_every=0, train__checkpoint_every=0,
                  train__log_every=1)
    _, full = _fit(tiny_config(**common))
    _, amp = _fit(tiny_config(train__amp="bf16", **common))
    lf = [e["loss"] for e in full.history if e["split"] == "train"]
    la = [e["loss"] for e in amp.history if e["split"] == "train"]
    assert la != lf  # bf16 really was used
    assert la[0] == pytest.approx(lf[0], abs=0.05)
    assert all(torch.isfinite(p).all() for p in amp.model.parameters())
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())  # weights stay fp32
