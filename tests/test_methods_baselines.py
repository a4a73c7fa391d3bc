"""The paper's baselines as registered methods: ensemble, distill, knowledge_flow, ced, fe."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from trainer_utils import tiny_raw

import zootune
from zootune.config import build_config
from zootune.data.sample import collate_samples
from zootune.methods import MethodError, build_method
from zootune.methods._sources import stage_name, zoo_member_names
from zootune.report import count_flops, count_params
from zootune.train import build_run, run_config

BASELINES = ["ensemble", "distill", "knowledge_flow", "ced", "fe"]


def _cfg(method, **over):
    raw = tiny_raw(method=method, train__checkpoint_every=0, train__eval_every=0, **over)
    return build_config(raw)


def _inputs(run, n=8):
    ds = run.data.test
    return collate_samples([ds[i] for i in range(n)])["image"]


def test_baselines_are_registered_with_their_options():
    names = zootune.methods.available()
    for n in BASELINES:
        assert n in names
    cfg = _cfg({"name": "ced", "finetuned": True, "weight": 0.5})
    assert cfg.method.finetuned is True
    with pytest.raises(zootune.config.ConfigError, match="valid keys in method"):
        _cfg({"name": "distill", "temprature": 2})


def test_member_names_from_the_config_match_the_loaded_zoo(tmp_path):
    cfg = _cfg("finetune")
    assert zoo_member_names(cfg) == list(build_run(cfg).zoo.names) == ["random0", "random1"]
    raw = tiny_raw(method="finetune")
    raw["zoo"]["names"] = ["a", "b"]
    cfg = build_config(raw)
    assert zoo_member_names(cfg) == list(build_run(cfg).zoo.names) == ["a", "b"]
    assert zoo_member_names(build_config({"zoo": {"spec": "demo"}})) == [
        "base", "latin", "greek", "cyrillic", "numerals"]
    # stages: one fine-tuning per selected member, with the finetune baseline's own config
    st = build_method(_cfg({"name": "distill", "sources": [1]}).method).stages(
        _cfg({"name": "distill", "sources": [1]}))
    assert [s.name for s in st] == [stage_name("random1"), "main"]
    assert st[0].cfg.method.name == "finetune" and st[0].cfg.method.source == "random1"
    with pytest.raises(MethodError, match="not a zoo member"):
        build_method(_cfg({"name": "ensemble", "sources": ["x"]}).method).stages(
            _cfg({"name": "ensemble", "sources": ["x"]}))


def _train_losses(history):
    return [e["loss"] for e in history if e.get("split") == "train" and "loss" in e]


@pytest.mark.parametrize("method", [
    "distill", "knowledge_flow", "ced", {"name": "ced", "finetuned": True}, "fe",
    {"name": "fe", "finetuned": True}])
def test_each_baseline_trains_and_its_loss_falls(method):
    # a linear probe on random features (nearly constant: std ~0.006) needs a large step
    lr = 0.5 if method == "fe" else 0.01
    cfg = _cfg(method, train__steps=30, train__log_every=5, optim__lr=lr,
               zoo=dict(tiny_raw()["zoo"], builder_kwargs={"widths": [8, 16]}))
    res = run_config(cfg, None)
    losses = _train_losses(res.history)
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.05, losses
    assert res.metrics["test"]["accuracy"] > 0.0


def test_ensemble_equals_the_mean_of_its_fine_tuned_members(tmp_path):
    cfg = _cfg("ensemble", train__steps=10)
    out = tmp_path / "ens"
    res = run_config(cfg, out)
    assert res.steps == 0  # the final stage trains nothing
    members = [zootune.load(out / "stages" / stage_name(n) / "model.safetensors")
               for n in ("random0", "random1")]
    run = build_run(_cfg("finetune"))  # the zoo, task and data of the run
    x = _inputs(run)
    loaded = zootune.load(out)  # the saved ensemble, rebuilt from its config alone
    with torch.no_grad():
        want = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(loaded(x), want, atol=1e-6)
        assert torch.allclose(res.model(x), want, atol=1e-6)
        # the members really were fine-tuned: they differ from the pretrained sources
        src = run.zoo[0]
        assert not torch.equal(members[0].features[0].weight, src.features[0].weight)
        from zootune.methods.ensemble import EnsembleModel

        probs = EnsembleModel([copy.deepcopy(m) for m in members], "probabilities").eval()
        p = (members[0](x).softmax(-1) + members[1](x).softmax(-1)) / 2
        assert torch.allclose(probs(x).exp(), p, atol=1e-6)
    # the evaluation used exactly this model: accuracy of the mean output
    from zootune.train import evaluate

    assert evaluate(loaded, run.task, run.data.test)["accuracy"] == pytest.approx(
        res.metrics["test"]["accuracy"])


def test_distill_student_has_one_sources_cost_at_inference(tmp_path):
    from zootune.compare import measure_costs

    cfg = _cfg("distill", train__steps=6)
    res = run_config(cfg, tmp_path / "d")
    run = build_run(_cfg("finetune"))  # the zoo, task and data of the run
    src = run.zoo[0]
    x = _inputs(run, 2)
    assert type(res.model) is type(src)
    assert count_params(res.model) == count_params(run.task.prepare_zoo([copy.deepcopy(src)])[0])
    one = count_flops(res.model, x) / 2
    # the costs the comparison measures: the student alone at inference; student + 2 teachers
    # in a training step
    stage_run = build_run(cfg, stage="main", previous={
        stage_name(n): zootune.methods.StageResult(stage_name(n), zootune.load(
            tmp_path / "d" / "stages" / stage_name(n) / "model.safetensors"))
        for n in ("random0", "random1")})
    c = measure_costs(stage_run)
    assert c["inference_flops"] == pytest.approx(one)
    assert c["inference_params"] == count_params(res.model)
    assert c["train_flops"] == pytest.approx(3 * one, rel=0.01)


def test_distill_loss_is_the_naive_kd_formula():
    from zootune.methods.distill import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t1, t2 = (torch.randn(4, 5, generator=g) for _ in range(3))
    T = 3.0
    p = (F.softmax(t1 / T, -1) + F.softmax(t2 / T, -1)) / 2
    q = F.softmax(s / T, -1)
    naive = (p * (p.log() - q.log())).sum(-1).mean() * T * T
    assert torch.allclose(distillation_loss(s, [t1, t2], "kl", T), naive, atol=1e-6)
    assert torch.allclose(distillation_loss(s, [t1, t2], "mse", T), ((s - (t1 + t2) / 2) ** 2).mean())


def test_knowledge_flow_final_student_stands_alone(tmp_path):
    cfg = _cfg("knowledge_flow", train__steps=12)
    res = run_config(cfg, tmp_path / "kf")
    run = build_run(cfg)
    src = run.task.prepare_zoo([copy.deepcopy(run.zoo[0])])[0]
    # the final model is one plain source-architecture network: no teacher, no transform inside
    assert type(res.model) is type(src)
    assert count_params(res.model) == count_params(src)
    assert set(res.model.state_dict()) == set(src.state_dict())
    # the transforms were extra modules (trained, checkpointed, not exported); the schedule
    # ran to its end: the dependency on the teachers is exactly zero for the last half
    flow = res.extra_modules["knowledge_flow"]
    assert int(flow.step) == 12
    method = run.method
    assert method.beta(0) == pytest.approx(0.5) and method.beta(6) == 0.0 and method.beta(11) == 0.0
    # loaded without the method or teachers, it computes what the trained student computes
    alone = zootune.load(tmp_path / "kf")
    x = _inputs(run)
    with torch.no_grad():
        assert torch.allclose(alone(x), res.model.eval()(x), atol=1e-6)


def test_knowledge_flow_feeds_teacher_features_while_beta_is_positive():
    cfg = _cfg("knowledge_flow", train__steps=100)
    run = build_run(cfg)
    method, model, task = run.method, run.model, run.task
    assert method.layers == ["features.2", "features.5"]  # one per conv block of SmallCNN
    batch = collate_samples([run.data.train[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        plain = model(batch["image"])
        # with beta = 0.5 and identity transforms, each fed layer is the mean of student and
        # the uniform mix of teachers: the output changes
        method._feed = {n: [f[n] for f in (method._capture(t, batch, task) for t in method.teachers)]
                        for n in method.layers}
        method._beta = 0.5
        fed = model(batch["image"])
        method._feed = None
    assert not torch.allclose(plain, fed)
    # by hand for the first layer: (1 - b) h + b * mean_i t_i (identity Q, uniform weights)
    h = model.features[:3](batch["image"])
    t = [tm.features[:3](batch["image"]) for tm in method.teachers]
    mixed = method.flow.mix("features.2", t)
    assert torch.allclose(mixed, (t[0] + t[1]) / 2, atol=1e-6)
    assert h.shape == mixed.shape


def test_fe_trains_only_its_classifier_and_ced_distills_features(tmp_path):
    cfg = _cfg("fe", train__steps=8)
    res = run_config(cfg, None)
    run = build_run(cfg)
    for e, src in zip(res.model.extractors, run.zoo):
        assert torch.equal(e.features[0].weight, src.features[0].weight)  # frozen
        assert not e.training
    x = _inputs(run)
    with torch.no_grad():
        feats = torch.cat([torch.flatten(F.adaptive_avg_pool2d(s.features(x), 1), 1) for s in run.zoo], 1)
        assert torch.allclose(res.model.eval()(x), res.model.fc(feats), atol=1e-5)
    # CED: the backbone's heads learn to regress the sources' penultimate features
    cfg = _cfg({"name": "ced", "weight": 5.0}, train__steps=30, optim__lr=0.01)
    run = build_run(cfg)
    method, model = run.method, run.model
    batch = collate_samples([run.data.train[i] for i in range(32)])

    def feature_error():
        heads = model.fc
        heads.keep = True
        with torch.no_grad():
            model.eval()(batch["image"])
            g = heads.last
            t = [tm(batch["image"]) for tm in method.teachers]
        heads.keep, heads.last = False, None
        return float(sum(F.mse_loss(a, b) for a, b in zip(g, t)))

    before = feature_error()
    from zootune.train import fit

    fit(model, run.task, run.data, cfg, None, method=method)
    assert feature_error() < before


def test_baselines_need_a_linear_head_and_a_real_member():
    with pytest.raises(MethodError, match="not a zoo member"):
        build_run(_cfg({"name": "knowledge_flow", "student": "nobody"}))
    with pytest.raises(MethodError, match="no module"):
        build_run(_cfg({"name": "knowledge_flow", "layers": ["nope"]}))
