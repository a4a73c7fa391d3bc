"""``zootune rl tune GAME --method knowledge_flow``: Knowledge Flow for DER agents (the paper's
Figure 4 baseline), sharing its mixing code with the classification method."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from rl_utils import SMOKE, kill_mid_run

import zootune
from zootune.config import ConfigError
from zootune.errors import ZootuneError
from zootune.layers.knowledge_flow import FeedHook, flow_beta
from zootune.rl import (
    DERNetwork,
    build_online,
    build_rl_config,
    load_agent,
    load_rl_config,
)
from zootune.rl.agent import SourceError, agent_metadata
from zootune.rl.knowledge_flow import KnowledgeFlowDER


def _save(tmp_path, name, net, actions):
    cfg = build_rl_config({})
    f = tmp_path / f"{name}.safetensors"
    zootune.save(net, f, metadata=agent_metadata(name, actions, cfg.agent, cfg.env, "scratch"))
    return f


def _sources(tmp_path, same=False):
    cfg = build_rl_config({})
    torch.manual_seed(1)
    a = DERNetwork(18, cfg.agent)
    b = copy.deepcopy(a) if same else DERNetwork(14, cfg.agent)  # a source's head may differ
    return [str(_save(tmp_path, "Seaquest", a, 18)), str(_save(tmp_path, "Riverraid", b, b.num_actions))]


def _kf(srcs, steps=200, **method):
    cfg = build_rl_config({"method": {"name": "knowledge_flow", "sources": srcs, **method}})
    return build_online(cfg.method, 9, cfg.agent, cfg.env, seed=0, steps=steps).train()


def _count_teacher_calls(net):
    calls = []
    for t in net.teachers:
        t.register_forward_pre_hook(lambda m, i: calls.append(int(net.flow.step)))
    return calls


def test_beta_schedule_hits_zero_and_teachers_stop(tmp_path):
    net = _kf(_sources(tmp_path), steps=200, beta=0.5, anneal=0.5)
    assert isinstance(net, KnowledgeFlowDER) and net.layers == ["act1", "act2"]  # after each ReLU
    assert net.beta(0) == 0.5 and 0.0 < net.beta(99) < 0.01
    assert net.beta(100) == 0.0 and net.beta(150) == 0.0 and net.beta(10**6) == 0.0
    assert net.beta(100) == flow_beta(100, 0.5, 0.5, 200)  # the classification method's schedule
    odd = _kf(_sources(tmp_path), steps=201, anneal=0.5)  # 100.5 steps: 0 from step 101
    assert odd.beta(100) > 0.0 and odd.beta(101) == 0.0
    calls = _count_teacher_calls(net)
    x = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    for step in (0, 50, 99, 100, 101, 150, 199):
        net.set_step(step)
        net(x.clone())  # a new batch each time (the teachers keep the last batch's features)
    assert calls == [0, 0, 50, 50, 99, 99]  # both teachers while beta > 0, never after
    net.set_step(0)
    net.eval()(x.clone())  # evaluation is the plain student: no teacher either
    assert len(calls) == 6
    # teacher forwards build no graph even when the student's does
    net.train().set_step(0)
    feats = []
    net.teachers.members[0].register_forward_hook(lambda m, i, o: feats.append(o))
    net(x.clone()).sum().backward()
    assert not feats[0].requires_grad and all(p.grad is None for p in net.teachers.parameters())
    assert net.flow.weights["act1"].grad is not None  # the teachers' weights and transforms learn
    assert net.flow.transforms["act2"][1].weight.grad is not None


def test_identity_transforms_and_same_weights_give_the_student(tmp_path):
    srcs = _sources(tmp_path, same=True)
    net = _kf(srcs, student=0)  # student convs = both teachers' convs
    assert torch.equal(net.student.conv1.weight, net.teachers.members[1].conv1.weight)
    calls = _count_teacher_calls(net)
    x = torch.randint(0, 255, (4, 4, 84, 84), dtype=torch.uint8)
    net.set_step(0)
    assert net.beta() == 0.5
    with torch.no_grad():
        mixed = net(x)           # train mode: noisy head, no noise resampled in between
        alone = net.student(x)   # no feed: the plain student, same noise
    assert len(calls) == 2
    assert torch.allclose(mixed, alone, atol=1e-6)
    # and the mix does act: another teacher changes the output, by the formula at act1
    with torch.no_grad():
        net.teachers.members[1].conv1.weight.mul_(1.5)
    seen = {}
    net.student.act1.register_forward_hook(lambda m, i, o: seen.setdefault("act1", o))
    with torch.no_grad():
        out = net(x)
        h = torch.relu(net.student.conv1(x.float() / 255))
        t = [torch.relu(tm.conv1(x.float() / 255)) for tm in net.teachers]
    assert not torch.allclose(out, alone, atol=1e-4)
    assert torch.allclose(seen["act1"], 0.5 * h + 0.5 * (t[0] + t[1]) / 2, atol=1e-5)


def test_target_network_uses_its_own_copy_of_the_transforms(tmp_path):
    net = _kf(_sources(tmp_path))
    target = copy.deepcopy(net)
    hook = next(iter(target.student.act1._forward_hooks.values()))
    assert isinstance(hook, FeedHook) and hook.owner is target  # not the online network's state
    assert target.teachers is net.teachers  # the same frozen teachers ...
    assert target.flow is not net.flow and target.student is not net.student  # ... own copies
    x = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    for n in (net, target):
        n.set_step(10)  # the loop sets both: the same beta at a given step
    with torch.no_grad():
        y_t = target(x)  # train mode: mixed (its noise is not resampled in between)
        net.flow.transforms["act2"][0].weight.mul_(3.0)  # an online update of a transform
        assert torch.equal(target(x), y_t)  # the target keeps its copy until the next refresh
        # the shared teachers' features of the same batch are computed once (double Q + target)
        calls = _count_teacher_calls(net)
        x = x.clone()
        y_t, y_o = target(x), net(x)
        assert len(calls) == 2
        net.teachers._last = None
        assert torch.equal(net(x), y_o) and len(calls) == 4
        x2 = x.clone()
        net(x2), x2.add_(1), net(x2)  # another tensor, or the same one changed: recomputed
        assert len(calls) == 8
        target.load_state_dict(net.state_dict())
        assert torch.equal(target.flow.transforms["act2"][0].weight, net.flow.transforms["act2"][0].weight)
    # the exported model is the plain student, without hooks, as the saved model
    plain = net.export()
    assert type(plain) is DERNetwork and not plain.act1._forward_hooks
    assert set(plain.state_dict()) == set(DERNetwork(9, build_rl_config({}).agent).state_dict())


def test_wrong_sources_and_options_are_one_clear_error(tmp_path, capsys):
    from zootune.cli import main

    srcs = _sources(tmp_path)
    with pytest.raises(SourceError, match="needs source agents"):
        _kf([])
    with pytest.raises(SourceError, match="'knowledge_flow' learns from a zoo of teachers: give at least 2 sources, got 1"):
        _kf(srcs[:1])
    with pytest.raises(ConfigError, match="after conv1, conv2"):
        _kf(srcs, layers=["fc_h_a"])
    with pytest.raises(SourceError, match="not a source game"):
        _kf(srcs, student="Pong")
    with pytest.raises(ConfigError, match="method.anneal"):
        _kf(srcs, anneal=0.0)
    assert main(["rl", "tune", "Alien", "--method", "knowledge_flow", "--sources", srcs[0],
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 sources, got 1" in err[0]
    assert not (tmp_path / "x" / "checkpoints").exists()
    assert isinstance(SourceError("x"), ZootuneError)


def test_runs_started_before_the_knowledge_flow_keys_still_resume(tmp_path):
    import yaml

    from zootune.rl.loop import _check_resume

    cfg = build_rl_config({"method": {"name": "scratch"}})
    old = cfg.model_dump(mode="json")
    for k in ("student", "beta", "anneal"):  # a config.yaml written before these keys existed
        del old["method"][k]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_resume(cfg, tmp_path)  # same run: resumes
    with pytest.raises(ConfigError, match=r"other method settings \(beta\)"):
        _check_resume(build_rl_config({"method": {"name": "scratch", "beta": 0.3}}), tmp_path)


# ---- real runs on ALE (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_200_steps_cli_saves_a_plain_der_network(tmp_path, monkeypatch, capsys):
    from zootune.cli import main
    from zootune.report import count_params
    from zootune.rl import loop

    srcs = _sources(tmp_path)
    calls: list[int] = []
    real = loop.build_online

    def counting(*a, **k):
        net = real(*a, **k)
        for t in net.teachers:
            t.register_forward_pre_hook(lambda m, i: calls.append(int(net.flow.step)))
        return net

    monkeypatch.setattr(loop, "build_online", counting)
    out = tmp_path / "run"
    # anneal 0.75: the teachers are mixed in for steps 0..149, and updates start at 100
    assert main(["rl", "tune", "Alien", "--method", "knowledge_flow", "--sources", *srcs,
                 "--out", str(out), "--quiet", *SMOKE, "method.anneal=0.75"]) == 0
    info = json.loads((out / "result.json").read_text())
    assert info["method"] == "knowledge_flow" and info["updates"] == 101
    assert math.isfinite(info["final_return"])
    # teachers: while acting at steps 0..149 and in the updates at 100..149; never after
    assert calls and max(calls) == 149 and min(calls) == 0
    # per teacher: act, and in the update the target's + double-Q choice's next_obs (once: the
    # online and target networks share the teachers) and the training forward's obs
    assert calls.count(149) == 2 * (1 + 2)
    # the transforms and teacher weights were trained by the agent's optimizer
    pi = info["teacher_weights"]
    assert set(pi) == {"conv1", "conv2"} and any(abs(v - 0.5) > 1e-6 for v in pi["conv1"] + pi["conv2"])
    from safetensors.torch import load_file

    ck = load_file(str(out / "checkpoints" / "step_00000200" / "model.safetensors"))
    assert int(ck["flow.step"]) == 200
    # the target network is told the step too (its copy is refreshed only every 50 updates)
    assert int(load_file(str(out / "checkpoints" / "step_00000200" / "extras.safetensors"))["target.flow.step"]) == 200
    eye = torch.eye(32).view(32, 32, 1, 1)
    assert not torch.equal(ck["flow.transforms.act1.0.weight"], eye)
    # the saved model is the plain student: a DER network with scratch's parameter count
    net = load_agent(out)
    cfg = load_rl_config("der", ["method.name=scratch"])
    scratch = build_online(cfg.method, net.num_actions, cfg.agent, cfg.env, seed=0)
    assert type(net) is DERNetwork and count_params(net) == count_params(scratch)
    assert set(net.state_dict()) == set(scratch.state_dict())
    assert torch.equal(net.conv1.weight, ck["student.conv1.weight"])
    capsys.readouterr()
    assert main(["rl", "eval", str(out), "Alien", "--episodes", "1", "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["return_mean"])


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from zootune.rl import train_agent
    from zootune.train.checkpoint import read_state

    srcs = _sources(tmp_path)
    # killed after the step-100 checkpoint at the earliest: resumes while beta > 0 (to step 150)
    ov = SMOKE + ["run.steps=300", "env.game=Alien", "method.name=knowledge_flow",
                  f"method.sources=[{srcs[0]},{srcs[1]}]"]
    full = train_agent(load_rl_config("der", ov), tmp_path / "full")
    assert full.finished
    assert kill_mid_run(ov, tmp_path / "killed", timeout=180) < 300  # killed mid-run
    resumed = train_agent(load_rl_config("der", ov), tmp_path / "killed")
    assert resumed.finished
    ca, cb = (tmp_path / r / "checkpoints" / "step_00000300" for r in ("full", "killed"))
    for f in ("model.safetensors", "extras.safetensors"):  # online (student, flow, step) and target
        wa, wb = load_file(str(ca / f)), load_file(str(cb / f))
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), f
    assert int(load_file(str(cb / "model.safetensors"))["flow.step"]) == 300
    a, b = read_state(ca), read_state(cb)
    for key in ("frames", "actions", "rewards", "terminal", "priorities"):
        assert torch.equal(a["extras"]["replay"][key], b["extras"]["replay"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert set(sa) == set(sb) and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert set(wa) == set(DERNetwork(9, build_rl_config({}).agent).state_dict())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full.final_return == resumed.final_return
    assert full.info["teacher_weights"] == resumed.info["teacher_weights"]
