"""Tests of the DER agent (zootune.rl): C51 projection, n-step returns over the compact replay,
prioritized sampling, env state, config, sources; smoke runs and resume on a real ALE game."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from rl_utils import SMOKE, kill_mid_run

import zootune
from zootune.config import ConfigError
from zootune.errors import CheckpointError, ZootuneError
from zootune.rl import (
    CompactReplay,
    DERNetwork,
    build_online,
    build_rl_config,
    load_agent,
    load_rl_config,
    project,
    support,
    train_agent,
)
from zootune.rl.agent import agent_metadata, load_source
from zootune.rl.c51 import c51_loss
from zootune.rl.replay import ReplayError, SumMinTree

# ---- C51 ---------------------------------------------------------------------------------------


def test_c51_projection_hand_computed():
    z = support(3, -1.0, 1.0)  # atoms -1, 0, 1
    p = torch.tensor([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    # row 0: Tz = 0.5 + 0.5 z = [0, 0.5, 1] -> [0, 0.2 + 0.15, 0.15 + 0.5]
    # row 1: terminal (discount 0), return 3 -> clipped to 1: all mass on the top atom
    # row 2: Tz = -0.25 + 1 * z = [-1.25 -> -1, -0.25, 0.75] -> [0.2 + 0.075, 0.225 + 0.125, 0.375]
    m = project(p, torch.tensor([0.5, 3.0, -0.25]), torch.tensor([0.5, 0.0, 1.0]), z)
    expected = torch.tensor([[0.0, 0.35, 0.65], [0.0, 0.0, 1.0], [0.275, 0.35, 0.375]])
    assert torch.allclose(m, expected, atol=1e-6)
    assert torch.allclose(m.sum(1), torch.ones(3))


def test_c51_projection_identity_and_loss():
    z = support(51, -10, 10)
    p = torch.softmax(torch.randn(4, 51), 1)
    m = project(p, torch.zeros(4), torch.ones(4), z)  # Tz = z: unchanged
    assert torch.allclose(m, p, atol=1e-6)
    logp = torch.log_softmax(torch.randn(4, 3, 51), -1)
    a = torch.tensor([0, 2, 1, 1])
    loss = c51_loss(logp, a, m)
    assert torch.allclose(loss, -(m * logp[torch.arange(4), a]).sum(-1))


# ---- compact replay: stacking and n-step returns -------------------------------------------------


def _frame(v: int) -> np.ndarray:
    return np.full((2, 2), v, dtype=np.uint8)


def _replay(n=3, gamma=0.5, cap=64, **kw) -> CompactReplay:
    return CompactReplay(cap, (2, 2), stack=4, n_step=n, discount=gamma, alpha=1.0, **kw)


def test_frames_stored_once_and_stacked_with_episode_padding():
    r = _replay()
    r.start_episode(_frame(1))
    for v in (2, 3):
        r.add(0, 0.0, False, _frame(v))
    st = r.stacked(np.array([0, 1, 2]))[:, :, 0, 0]
    assert st.tolist() == [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 2, 3]]  # padded like FrameStackObservation
    assert r.frames.shape == (64, 2, 2)  # one frame per slot, not a stack
    r.add(0, 0.0, False, _frame(4), episode_end=True)
    r.start_episode(_frame(10))
    r.add(0, 0.0, False, _frame(11))
    # slot 3 is the final frame of episode 1; slot 4 starts episode 2: no frame leaks across
    assert r.stacked(np.array([5]))[0, :, 0, 0].tolist() == [10, 10, 10, 11]


def test_nstep_returns_with_episode_ends_inside_the_window():
    g = 0.5
    r = _replay(n=3, gamma=g)
    r.start_episode(_frame(0))
    r.add(0, 1.0, False, _frame(1))            # slot 0
    r.add(1, 2.0, False, _frame(2))            # slot 1
    r.add(2, 4.0, True, _frame(3))             # slot 2: terminal (a lost life): no bootstrap
    r.add(0, 8.0, False, _frame(4))            # slot 3 (same episode goes on)
    r.add(0, 16.0, False, _frame(5), episode_end=True)  # slot 4, truncated: slot 5 = final frame
    r.start_episode(_frame(6))                 # slot 6
    for v in range(7, 12):
        r.add(0, 1.0, False, _frame(v))        # slots 6..10
    ret, boot, disc = r.nstep(np.array([0, 1, 2, 3, 4, 6]))
    assert ret.tolist() == pytest.approx([1 + g * 2 + g * g * 4, 2 + g * 4, 4, 8 + g * 16, 16, 1 + g + g * g])
    assert disc.tolist() == pytest.approx([0, 0, 0, g ** 2, g, g ** 3])
    assert boot[3] == 5 and boot[4] == 5 and boot[5] == 9  # truncation bootstraps from the final frame
    # sampleable: every acted-on slot of episode 1 (closed) and slots 6..8 (n later slots
    # written; the current observation is slot 11)
    ready = np.flatnonzero(r.tree.leaves(np.arange(64)) > 0).tolist()
    assert ready == [0, 1, 2, 3, 4, 6, 7, 8]


def test_ring_overwrite_invalidates_stale_slots():
    r = _replay(n=2, cap=16)
    r.start_episode(_frame(0))
    for t in range(1, 40):
        r.add(0, 0.0, False, _frame(t % 250))
    pr = r.tree.leaves(np.arange(16))
    c = r.cursor
    for k in range(4):  # the slot just written and the stacks reaching into it
        assert pr[(c + k) % 16] == 0
    # a sampled observation never mixes frames across the overwrite point
    b = r.sample(8, 0.4)
    frames = b.obs[:, :, 0, 0].numpy().astype(int)
    assert (np.diff(frames, axis=1) == 1).all()


def test_replay_errors_are_clear():
    r = _replay()
    with pytest.raises(ReplayError, match="start_episode"):
        r.add(0, 0.0, False, _frame(1))
    r.start_episode(_frame(0))
    with pytest.raises(ReplayError, match="nothing to sample"):
        r.sample(4, 0.4)


# ---- prioritized sampling -------------------------------------------------------------------------


def test_sum_min_tree():
    t = SumMinTree(5)
    t.update(np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 0.0, 3.0, 4.0]))
    assert t.total == 10.0 and t.min_value == 1.0  # empty slots (0) are not the minimum
    assert t.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99])).tolist() == [0, 0, 1, 1, 3, 3, 4, 4]


def test_prioritized_probabilities_and_importance_weights():
    r = _replay(n=1, cap=128, seed=3)
    r.start_episode(_frame(0))
    for t in range(1, 9):
        r.add(0, 0.0, False, _frame(t))
    idx = np.arange(7)
    losses = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    r.update_priorities(idx, losses)  # alpha 1: p = loss + eps
    p = losses + r.eps
    total = p.sum() + 1.0  # slot 7 is ready too, with the max priority when it was added (1)
    assert r.probabilities(idx) == pytest.approx(p / total)
    counts = np.zeros(128)
    for _ in range(400):
        b = r.sample(16, beta=0.5)
        np.add.at(counts, b.index, 1)
        w = (r.tree.leaves(b.index) / r.tree.min_value) ** -0.5
        assert b.weights.numpy() == pytest.approx(w, rel=1e-5)
        assert float(b.weights.max()) <= 1.0
    freq = counts[:8] / counts.sum()
    expected = np.append(p, 1.0) / total
    assert freq == pytest.approx(expected, abs=0.01)


def test_priority_alpha_exponent():
    r = CompactReplay(64, (2, 2), n_step=1, alpha=0.5)
    r.start_episode(_frame(0))
    r.add(0, 0.0, False, _frame(1))
    r.add(0, 0.0, False, _frame(2))
    r.update_priorities(np.array([0]), np.array([4.0]))
    assert r.tree.leaves(np.array([0]))[0] == pytest.approx(math.sqrt(4.0 + 1e-6))


# ---- config ----------------------------------------------------------------------------------------


def test_der_defaults_and_config_errors():
    cfg = load_rl_config("der")
    a = cfg.agent
    assert (a.atoms, a.v_min, a.v_max, a.n_step, a.discount) == (51, -10.0, 10.0, 20, 0.99)
    assert (a.priority_alpha, a.priority_beta_start, a.priority_beta_end) == (0.5, 0.4, 1.0)
    assert (a.target_update, a.learning_starts, a.batch_size, a.lr, a.adam_eps, a.grad_clip) == (
        2000, 1600, 32, 1e-4, 1.5e-4, 10.0)
    assert a.dueling and a.noisy and a.double_q and a.noisy_sigma0 == 0.1 and a.hidden == 256
    assert cfg.env.repeat_action_probability == 0.0 and not cfg.env.full_action_space
    assert cfg.env.max_episode_frames == 108_000 and cfg.env.noop_max == 30
    assert cfg.run.eval_episodes == 10 and cfg.run.steps == 100_000
    assert cfg.run.flush_denormal  # decayed Adam moments of dead units: 12 vs 1.3 ms an Adam step
    assert build_rl_config({}) == cfg  # the shipped file spells out the defaults
    with pytest.raises(ConfigError, match="agent.n_stp"):
        build_rl_config({}, ["agent.n_stp=3"])
    with pytest.raises(ConfigError, match="v_max"):
        build_rl_config({}, ["agent.v_max=-20"])


def test_network_shapes():
    cfg = build_rl_config({})
    net = DERNetwork(6, cfg.agent)
    out = net(torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8))
    assert out.shape == (3, 6, 51)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, 6), atol=1e-5)
    assert net.feature_size == 64 * 3 * 3
    net.eval()  # noise off: deterministic
    x = torch.randint(0, 255, (1, 4, 84, 84), dtype=torch.uint8)
    y = net(x)
    net.reset_noise()
    assert torch.equal(y, net(x))


# ---- sources and methods ---------------------------------------------------------------------------


def _source(tmp_path, name, actions=18, **agent):
    cfg = build_rl_config({"agent": agent})
    net = DERNetwork(actions, cfg.agent)
    f = tmp_path / f"{name}.safetensors"
    zootune.save(net, f, metadata=agent_metadata(name, actions, cfg.agent, cfg.env, "scratch"))
    return f, net


def test_input_layout_is_speed_only(tmp_path):
    """``run.channels_last`` changes how observations are stored, not the function: DER, Zoo-Tuning
    and lite networks give the same outputs and gradients for NCHW and channels-last inputs;
    by default every method but per-sample zoo_tuning runs channels-last."""
    from zootune.layers.patches import is_channels_last
    from zootune.rl.config import input_channels_last
    from zootune.train import gate_tracking

    assert input_channels_last(build_rl_config({})) is True
    assert input_channels_last(build_rl_config({"method": {"name": "zoo_tuning"}})) is False
    assert input_channels_last(build_rl_config({"method": {"name": "zoo_tuning"}, "run": {"channels_last": True}}))
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    assert is_channels_last(DERNetwork.scale(obs, True))
    assert torch.equal(DERNetwork.scale(obs, True), DERNetwork.scale(obs))
    srcs = [str(_source(tmp_path, g)[0]) for g in ("Seaquest", "Riverraid")]
    for name in ("scratch", "zoo_tuning", "zoo_tuning_lite"):
        cfg = build_rl_config({"method": {"name": name, "sources": srcs if name != "scratch" else []}})
        net = build_online(cfg.method, 6, cfg.agent, cfg.env, 0).train()
        res = []
        for cl in (False, True):
            net.zero_grad()
            with gate_tracking(net, False):
                y = net(DERNetwork.scale(obs, cl))
            (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
            res.append((y.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
        torch.testing.assert_close(res[0][0], res[1][0], atol=1e-5, rtol=1e-4, msg=name)
        assert res[0][1].keys() == res[1][1].keys()
        for n, g in res[0][1].items():
            torch.testing.assert_close(g, res[1][1][n], atol=1e-5, rtol=1e-4, msg=f"{name}: {n}")


def test_methods_build_from_sources(tmp_path):
    f1, n1 = _source(tmp_path, "Seaquest", 18)
    f2, n2 = _source(tmp_path, "Riverraid", 14)  # a source's head may differ: only convs move
    srcs = [str(f1), str(f2)]
    cfg = build_rl_config({"method": {"name": "finetune", "sources": srcs, "source": "Riverraid"}})
    ft = build_online(cfg.method, 9, cfg.agent, cfg.env, seed=0)
    assert torch.equal(ft.conv2.weight, n2.conv2.weight) and ft.num_actions == 9
    cfg = build_rl_config({"method": {"name": "zoo_tuning", "sources": srcs}})
    zm = build_online(cfg.method, 9, cfg.agent, cfg.env, seed=0)
    assert zm.layer_names == ["conv1", "conv2"]
    layers = zm.adaagg_layers()  # the config's per-layer kernels reach the layers
    assert {n: layers[n].kernel for n in layers} == cfg.method.kernel == {"conv1": "unfold", "conv2": "stacked"}
    one = build_online(build_rl_config({"method": {"name": "zoo_tuning", "sources": srcs, "layers": ["conv1"],
                                                   "kernel": "grouped"}}).method, 9, cfg.agent, cfg.env, seed=0)
    assert {n: m.kernel for n, m in one.adaagg_layers().items()} == {"conv1": "grouped"}
    first = build_online(build_rl_config({"method": {"name": "zoo_tuning", "sources": srcs, "layers": ["conv1"]}}
                                         ).method, 9, cfg.agent, cfg.env, seed=0)  # conv2's entry: nothing to set
    assert {n: m.kernel for n, m in first.adaagg_layers().items()} == {"conv1": "unfold"}
    bad = build_rl_config({"method": {"name": "zoo_tuning", "sources": srcs, "kernel": {"conv3": "unfold"}}})
    with pytest.raises(ConfigError, match="conv3"):
        build_online(bad.method, 9, cfg.agent, cfg.env, seed=0)
    w = zm.model.conv1.weights if hasattr(zm.model.conv1, "weights") else None
    assert w is None or torch.equal(w[0], n1.conv1.weight)
    cfg = build_rl_config({"method": {"name": "zoo_tuning_lite", "sources": srcs}})
    lite = build_online(cfg.method, 9, cfg.agent, cfg.env, seed=0)
    plain = lite.export()
    assert isinstance(plain, DERNetwork)
    x = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    assert torch.allclose(plain(x), lite.eval()(x), atol=1e-5)


def test_mismatched_source_names_the_tensor(tmp_path):
    f, _ = _source(tmp_path, "Seaquest", 18, channels=[16, 64])
    cfg = build_rl_config({})
    with pytest.raises(CheckpointError, match=r"tensor 'conv1\.(weight|bias)' has shape"):
        load_source(f, cfg.agent, cfg.env)
    cfg = build_rl_config({"method": {"name": "zoo_tuning", "sources": [str(f)]}})
    with pytest.raises(ZootuneError, match="at least 2 sources"):
        build_online(cfg.method, 9, cfg.agent, cfg.env, seed=0)


# ---- the env and its state ---------------------------------------------------------------------------


def test_env_state_roundtrip():
    from zootune.rl.envs import env_state, make_env, set_env_state

    cfg = build_rl_config({"env": {"game": "Alien"}}).env
    e1 = make_env(cfg)
    e1.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        e1.step(int(rng.integers(e1.action_space.n)))
    st = env_state(e1)
    e2 = make_env(cfg)
    set_env_state(e2, st)
    for a in rng.integers(e1.action_space.n, size=60):
        o1, r1, *_ = e1.step(int(a))
        o2, r2, *_ = e2.step(int(a))
        assert np.array_equal(o1, o2) and r1 == r2
    assert e1.observation_space.shape == (4, 84, 84)


# ---- real runs on ALE (slow) ---------------------------------------------------------------------



@pytest.mark.slow
@pytest.mark.parametrize("method", ["scratch", "finetune", "zoo_tuning", "zoo_tuning_lite"])
def test_smoke_200_steps_each_method(tmp_path, method):
    f1, _ = _source(tmp_path, "Seaquest", 18)
    f2, _ = _source(tmp_path, "Riverraid", 18)
    cfg = load_rl_config("der", SMOKE + ["env.game=Alien", f"method.name={method}",
                                         f"method.sources=[{f1},{f2}]"])
    res = train_agent(cfg, tmp_path / "run")
    assert res.finished and res.steps == 200
    info = json.loads((tmp_path / "run" / "result.json").read_text())
    assert info["updates"] == 101 and math.isfinite(info["final_return"])
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(e["split"] == "eval" for e in events) and any("loss" in e for e in events)
    net = load_agent(tmp_path / "run")
    if method == "zoo_tuning":
        assert isinstance(net, zootune.ZooModel) and set(info["gates"]) == {"conv1", "conv2"}
    else:
        assert isinstance(net, DERNetwork)  # lite is exported to a plain DER network
    again = train_agent(cfg, tmp_path / "run")  # finished: returns at once
    assert again.finished and again.info["updates"] == 101


@pytest.mark.slow
def test_acting_and_targets_do_not_feed_gate_statistics(tmp_path):
    f1, _ = _source(tmp_path, "Seaquest", 18)
    f2, _ = _source(tmp_path, "Riverraid", 18)
    cfg = load_rl_config("der", ["method.name=zoo_tuning_lite", f"method.sources=[{f1},{f2}]"])
    from zootune.rl.loop import act, learn
    from zootune.train import OptimizerStep

    net = build_online(cfg.method, 18, cfg.agent, cfg.env, 0).train()
    before = {k: v.clone() for k, v in net.gate_values().items()}
    obs = np.random.default_rng(0).integers(0, 255, (4, 84, 84), dtype=np.uint8)
    act(net, obs, support(51, -10, 10), torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in net.gate_values().items())
    rep = CompactReplay(200, (84, 84), n_step=3)
    rep.start_episode(obs[-1])
    for _ in range(10):
        rep.add(0, 1.0, False, obs[-1])
    import copy

    calls = []
    target = copy.deepcopy(net)
    for layer in net.adaagg_layers().values():  # count forwards that track gates
        layer.register_forward_pre_hook(lambda m, i: calls.append(m.track_gates))
    learn(net, target, rep, cfg, support(51, -10, 10), 0.4,
          OptimizerStep(torch.optim.Adam(net.parameters())), torch.device("cpu"))
    # two online forwards per layer (double-Q choice, training forward): only the latter tracks
    assert calls == [False, False, True, True]


def test_update_shares_next_obs_input_work_between_target_and_online_and_stays_exact(tmp_path, monkeypatch):
    """learn() runs the target and the online network on next_obs inside ``input_reuse``: conv1's
    im2col and gate pooling of next_obs are computed once, and the update equals one without it."""
    import contextlib
    import copy

    import zootune.layers.adaagg as A
    import zootune.layers.shared_input as R
    import zootune.layers.kernels as K
    import zootune.rl.loop as L
    from zootune.train import OptimizerStep

    f1, _ = _source(tmp_path, "Seaquest", 18)
    f2, _ = _source(tmp_path, "Riverraid", 18)
    cfg = load_rl_config("der", ["method.name=zoo_tuning", f"method.sources=[{f1},{f2}]"])
    assert cfg.method.kernel["conv1"] == "unfold"
    obs = np.random.default_rng(0).integers(0, 255, (4, 84, 84), dtype=np.uint8)
    rep = CompactReplay(200, (84, 84), n_step=3, seed=0)
    rep.start_episode(obs[-1])
    for t in range(40):
        rep.add(t % 18, 1.0, False, np.roll(obs[-1], t))
    torch.manual_seed(0)
    net = build_online(cfg.method, 18, cfg.agent, cfg.env, 0).train()
    runs = {}
    for reuse in (False, True):
        n, tgt, r = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(rep)
        calls = []
        orig = R.reuse

        def counting(kind, x, key, compute, calls=calls):
            return orig(kind, x, key, lambda: (calls.append((kind, tuple(x.shape))), compute())[1])

        monkeypatch.setattr(A, "reuse", counting)
        monkeypatch.setattr(K, "reuse", counting)
        monkeypatch.setattr(L, "input_reuse", R.input_reuse if reuse else contextlib.nullcontext)
        torch.manual_seed(1)
        loss = L.learn(n, tgt, r, cfg, support(51, -10, 10), 0.4,
                       OptimizerStep(torch.optim.Adam(n.parameters())), torch.device("cpu"))
        runs[reuse] = (loss, n.state_dict(), calls)
    obs_shape = (32, 4, 84, 84)
    # target(next_obs), online(next_obs) [shared when reusing], online(obs)
    assert runs[False][2].count(("im2col", obs_shape)) == 3
    assert runs[True][2].count(("im2col", obs_shape)) == 2
    assert runs[True][2].count(("pool_conv", obs_shape)) == 2
    assert torch.equal(runs[False][0], runs[True][0])
    for k, v in runs[False][1].items():
        assert torch.equal(v, runs[True][1][k]), k


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted_run(tmp_path):
    from zootune.train.checkpoint import read_state

    ov = SMOKE + ["run.steps=300", "run.checkpoint_every=100", "env.game=Alien"]
    full = train_agent(load_rl_config("der", ov), tmp_path / "full")
    assert full.finished
    assert kill_mid_run(ov, tmp_path / "killed", timeout=120) < 300  # killed mid-run
    assert not (tmp_path / "killed" / "result.json").exists()
    resumed = train_agent(load_rl_config("der", ov), tmp_path / "killed")
    assert resumed.finished
    a = read_state(tmp_path / "full" / "checkpoints" / "step_00000300")
    b = read_state(tmp_path / "killed" / "checkpoints" / "step_00000300")
    for key in ("frames", "actions", "rewards", "terminal", "priorities"):
        assert torch.equal(a["extras"]["replay"][key], b["extras"]["replay"][key]), key
    assert torch.equal(a["extras"]["env"]["frames"], b["extras"]["env"]["frames"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the next action from the saved state is the same
    from zootune.rl.loop import act

    obs = a["extras"]["env"]["frames"].numpy()
    na, nb = load_agent(tmp_path / "full").train(), load_agent(tmp_path / "killed").train()
    assert act(na, obs, support(51, -10, 10), torch.device("cpu")) == act(nb, obs, support(51, -10, 10),
                                                                        torch.device("cpu"))
    assert full.final_return == resumed.final_return


@pytest.mark.slow
def test_cli_grid_dry_run_and_errors(tmp_path, capsys):
    from zootune.cli import main

    assert main(["rl", "grid", "grid_paper", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "92 runs" in out and "Alien zoo_tuning_lite seed 4" in out and "Alien knowledge_flow seed 4" in out
    assert main(["rl", "tune", "Alien", "--method", "zoo_tuning", "--out", str(tmp_path / "x")]) == 2
    assert "needs source agents" in capsys.readouterr().err


def test_a_training_run_holds_its_folder_lock_and_the_grid_skips_locked_runs(tmp_path, monkeypatch):
    """Two grid invocations (one per free core) never train the same run: a run holds
    ``<out>/.lock`` while it trains, and the runner skips runs whose lock is held."""
    from zootune.atomic import exclusive_lock, is_locked
    from zootune.rl import loop
    from zootune.rl.grid import GridConfig, plan, run_grid

    seen = {}

    def fake_locked(cfg, out, *, label, progress):
        seen["locked"] = is_locked(out / loop.LOCK_FILE)
        return "trained"

    monkeypatch.setattr(loop, "_train_agent_locked", fake_locked)
    cfg = build_rl_config({"env": {"game": "Alien"}})
    assert loop.train_agent(cfg, tmp_path / "run") == "trained" and seen["locked"] is True
    assert not is_locked(tmp_path / "run" / loop.LOCK_FILE)  # released when it returns

    grid = GridConfig(sources={}, targets=["Alien"], methods=["scratch"], seeds=[0, 1])
    runs = plan(grid, tmp_path / "grid")
    said: list[str] = []
    for r in runs:
        r.out.mkdir(parents=True)
    with exclusive_lock(runs[0].out / loop.LOCK_FILE):
        # --max-runs counts the runs this invocation starts: the busy seed 0 is passed over
        run_grid(grid, tmp_path / "grid", max_runs=1, dry_run=True, say=said.append)
        assert said[1:] == ["skip (being trained by another process): Alien scratch seed 0",
                            f"  would run Alien scratch seed 1 -> {runs[1].out}"]
        said.clear()
        with exclusive_lock(runs[1].out / loop.LOCK_FILE):
            counts = run_grid(grid, tmp_path / "grid", say=said.append)
    assert counts["started"] == 0 and counts["failed"] == 0
    assert [s for s in said if s.startswith("skip (being trained")] == [
        "skip (being trained by another process): Alien scratch seed 0",
        "skip (being trained by another process): Alien scratch seed 1"]


@pytest.mark.parametrize("setting", [True, False])
def test_a_run_flushes_denormals_as_configured_and_restores_the_process_setting(tmp_path, monkeypatch, setting):
    """``run.flush_denormal`` holds while the run trains (decayed Adam moments of dead units
    made a Zoo-Tuning run's Adam step 9x slower), and the process's own setting is back after."""
    from zootune.rl import loop

    seen = {}

    def fake_locked(cfg, out, *, label, progress):
        seen["during"] = loop.flushes_denormals()
        return "trained"

    monkeypatch.setattr(loop, "_train_agent_locked", fake_locked)
    cfg = build_rl_config({"env": {"game": "Alien"}, "run": {"flush_denormal": setting}})
    before = loop.flushes_denormals()
    assert loop.train_agent(cfg, tmp_path / "run") == "trained"
    assert seen["during"] is setting and loop.flushes_denormals() is before
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # this test process does not flush
