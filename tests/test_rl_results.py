"""``benchmarks/rl_results.py`` on a fake RL grid folder: run records written in the format of
:func:`zootune.rl.loop.train_agent` (``RunLogger`` events, ``result.json`` keys), the tables'
numbers checked against a naive computation, a partial grid's missing runs listed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from trainer_utils import load_script

ROOT = Path(__file__).resolve().parent.parent

GRID = """\
base: der
overrides: [run.steps=1000, run.eval_every=500, run.eval_episodes=2]
sources: {Seaquest: [0], Riverraid: [0]}
source_seed: 0
targets: [Alien]
methods: [scratch, "finetune:Seaquest", "finetune:Riverraid", knowledge_flow, zoo_tuning]
seeds: [0, 1, 2]
workers: 1
"""

# final evaluation return per seed (None: not finished), and the training episodes per seed
FINAL = {
    "scratch": {0: 100.0, 1: 200.0, 2: 300.0},
    "finetune:Seaquest": {0: 150.0, 1: 260.0, 2: 330.0},
    "finetune:Riverraid": {0: 400.0, 1: 500.0, 2: 600.0},  # best by final evaluation, not by training
    "knowledge_flow": {0: 120.0, 1: 210.0},                # seed 2 not started
    "zoo_tuning": {0: 300.0, 1: 420.0},                    # seed 2 in progress
}
# (end step, return) of the training episodes; the last 10% of 1000 steps is steps > 900
EPISODES = {
    "scratch": [(300, 10.0), (700, 20.0), (950, 30.0)],
    "finetune:Seaquest": [(400, 1.0), (920, 500.0), (990, 520.0)],
    "finetune:Riverraid": [(500, 10_000.0), (910, 50.0), (999, 60.0)],  # huge, but before the window
    "knowledge_flow": [(600, 5.0), (980, 40.0)],
    "zoo_tuning": [(450, 7.0), (930, 90.0), (960, 110.0)],
}
GATES = {0: {"conv1": [0.7, 0.3], "conv2": [0.4, 0.6]}, 1: {"conv1": [0.5, 0.5], "conv2": [0.2, 0.8]}}


@pytest.fixture(scope="module")
def rr():
    return load_script("benchmarks/rl_results.py")


def _write_run(folder: Path, cfg, *, episodes, evals, finished: bool, gates=None, upto: int | None = None):
    """A run folder as train_agent leaves it (finished) or mid-run (``upto``: last logged step)."""
    from zootune.atomic import atomic_write_text
    from zootune.train import RunLogger

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", cfg.to_yaml())
    steps = cfg.run.steps if finished else upto
    log = RunLogger(folder, tensorboard=False)
    events = []
    for s in range(100, steps + 1, 100):
        events.append((s, 0, "train", {"steps_per_s": 20.0, "episodes": 0, "updates": max(0, s - 1600)}))
    for k, (s, r) in enumerate(episodes, 1):
        if s <= steps:
            events.append((s, 1, "train", {"episode_return": r, "episode_length": 100, "episode": k}))
    evaluations = []
    for s, m in evals:
        if s <= steps:
            ev = {"return_mean": m, "return_std": 5.0, "returns": [m - 5.0, m + 5.0], "length_mean": 321.0,
                  "step": s}
            evaluations.append(ev)
            g = {f"gate/{layer}/{i}": v for layer, vals in (gates or {}).items() for i, v in enumerate(vals)}
            events.append((s, 2, "eval", {"return_mean": m, "return_std": 5.0, "length_mean": 321.0, **g}))
    for s, _, split, metrics in sorted(events, key=lambda e: (e[0], e[1])):
        log.log(s, split, metrics)
    log.close()
    (folder / "checkpoints").mkdir(exist_ok=True)
    ck = (steps // 500) * 500
    (folder / "checkpoints" / "latest.json").write_text(json.dumps({"step": ck, "dir": f"step_{ck:08d}"}))
    if finished:  # the keys of train_agent's info dict
        info = {"game": cfg.env.game, "method": cfg.method.name, "seed": cfg.run.seed, "steps": steps,
                "evaluations": evaluations, "final_return": evaluations[-1]["return_mean"],
                "episodes": len(episodes), "updates": 0, "wall_s": 1234.5, "steps_per_s_learning": 21.0,
                "gates": gates, "teacher_weights": None, "model": "model.safetensors"}
        atomic_write_text(folder / "result.json", json.dumps(info, indent=1))


@pytest.fixture(scope="module")
def fake_grid(rr, tmp_path_factory):
    from zootune.rl.grid import load_grid, plan

    tmp = tmp_path_factory.mktemp("rlgrid")
    (tmp / "grid.yaml").write_text(GRID)
    grid = load_grid(tmp / "grid.yaml")
    root = tmp / "runs"
    for run in plan(grid, root):
        cfg = rr._planned_config(grid, run)
        if run.name.startswith("source "):
            final = {"Seaquest": 300.0, "Riverraid": 2000.0}[cfg.env.game]
            _write_run(run.out, cfg, episodes=[(800, 1.0)], evals=[(500, 1.0), (1000, final)], finished=True)
            continue
        m = run.name.split(" ")[1]
        s = cfg.run.seed
        gates = GATES.get(s) if m == "zoo_tuning" else None
        if s in FINAL[m]:
            _write_run(run.out, cfg, episodes=EPISODES[m], evals=[(500, 50.0 + s), (1000, FINAL[m][s])],
                       finished=True, gates=gates)
        elif m == "zoo_tuning":
            _write_run(run.out, cfg, episodes=EPISODES[m], evals=[(500, 60.0)], finished=False, upto=600,
                       gates={"conv1": [0.9, 0.1], "conv2": [0.9, 0.1]})
    return tmp / "grid.yaml", root


def test_tables_match_a_naive_computation(rr, fake_grid):
    from scipy import stats

    grid_file, root = fake_grid
    grid, runs = rr.collect(grid_file, root)
    s = rr.summarize(grid, runs)
    rows = s["targets"]["Alien"]["methods"]
    for m, fin in FINAL.items():
        vals = [fin[k] for k in sorted(fin)]
        assert rows[m]["final"] == fin and rows[m]["seeds_finished"] == sorted(fin)
        assert rows[m]["mean"] == pytest.approx(np.mean(vals))
        assert rows[m]["std"] == pytest.approx(np.std(vals, ddof=1))
        tail = [r for st, r in EPISODES[m] if st > 900]
        assert rows[m]["train_last10_mean"] == pytest.approx(np.mean(tail))  # same for every seed here
    # best finetune by the training return of the last 10% (Seaquest), although Riverraid's final
    # evaluation and its early training returns are higher
    t = s["targets"]["Alien"]
    assert t["best_finetune"] == "finetune:Seaquest"
    assert t["best_finetune_criterion"] == {"finetune:Seaquest": pytest.approx(510.0),
                                            "finetune:Riverraid": pytest.approx(55.0)}
    # seed-paired differences over the seeds finished in both
    z, sc, ft = FINAL["zoo_tuning"], FINAL["scratch"], FINAL["finetune:Seaquest"]
    c = rows["zoo_tuning"]["vs_scratch"]
    assert c["seeds"] == [0, 1] and c["diffs"] == [z[0] - sc[0], z[1] - sc[1]]
    assert c["mean_diff"] == pytest.approx(np.mean(c["diffs"]))
    assert c["std_diff"] == pytest.approx(np.std(c["diffs"], ddof=1))
    assert c["p"] == pytest.approx(stats.ttest_rel([z[0], z[1]], [sc[0], sc[1]]).pvalue)
    c = rows["zoo_tuning"]["vs_best_finetune"]
    assert c["diffs"] == [z[0] - ft[0], z[1] - ft[1]]
    c = rows["finetune:Riverraid"]["vs_scratch"]
    assert c["seeds"] == [0, 1, 2] and c["mean_diff"] == pytest.approx(300.0)  # identical differences
    assert c["p"] == 0.0 and c["verdict"] == "agree"
    assert rows["scratch"]["vs_scratch"] is None and rows["finetune:Seaquest"]["vs_best_finetune"] is None
    claims = {cl["baseline"]: cl for cl in s["claims"]}
    assert set(claims) == {"scratch", "best finetune", "knowledge_flow"}
    assert claims["best finetune"]["baseline_method"] == "finetune:Seaquest"
    kf = FINAL["knowledge_flow"]
    p = stats.ttest_rel([z[0], z[1]], [kf[0], kf[1]]).pvalue
    assert claims["knowledge_flow"]["p"] == pytest.approx(p)
    assert claims["knowledge_flow"]["verdict"] == ("agree" if p < 0.05 else "level")
    # sources beside the published DER scores
    src = {r["game"]: r for r in s["sources"]}
    assert src["Seaquest"]["final_return"] == 300.0 and src["Seaquest"]["published_der"] == 354.1
    assert src["Seaquest"]["episodes"] == 2
    assert src["Riverraid"]["published_der"] is None and "not in the 26-game" in src["Riverraid"]["published_source"]
    # final gates: mean over the finished seeds, sources named from the run's method.sources
    g = {(q["layer"], q["source"]): q for q in s["gates"]}
    assert set(g) == {(la, so) for la in ("conv1", "conv2") for so in ("Seaquest", "Riverraid")}
    assert g["conv1", "Seaquest"]["mean"] == pytest.approx(0.6)
    assert g["conv2", "Riverraid"]["mean"] == pytest.approx(0.7)
    assert g["conv2", "Riverraid"]["per_seed"] == {0: 0.6, 1: 0.8}


def test_paired_verdicts(rr):
    assert rr.paired({0: 5.0}, {0: 1.0})["verdict"] == "not enough seeds"
    assert rr.paired({0: 5.0, 1: 6.0}, {2: 1.0})["verdict"] == "not enough seeds"
    up = rr.paired({0: 10.0, 1: 12.0, 2: 14.0}, {0: 1.0, 1: 2.0, 2: 3.5})
    assert up["verdict"] == "agree" and up["p"] < 0.05
    down = rr.paired({0: 1.0, 1: 2.0, 2: 3.5}, {0: 10.0, 1: 12.0, 2: 14.0})
    assert down["verdict"] == "reversed" and down["mean_diff"] < 0
    assert rr.paired({0: 1.0, 1: 9.0}, {0: 2.0, 1: 3.0})["verdict"] == "level"
    same = rr.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same["p"] == 1.0 and same["verdict"] == "level"
    assert rr.mean_std([3.0]) == (3.0, None)


def test_partial_grid_lists_missing_runs_and_keeps_notes(rr, fake_grid, tmp_path):
    grid_file, root = fake_grid
    out = tmp_path / "report"
    assert rr.main(["--grid", str(grid_file), "--root", str(root), "--out", str(out)]) == 0
    doc = json.loads((out / "rl.json").read_text())
    assert doc["total"] == 17 and doc["finished"] == 15
    todo = {r["name"]: r for r in doc["to_run"]}
    assert set(todo) == {"Alien knowledge_flow seed 2", "Alien zoo_tuning seed 2"}
    assert todo["Alien knowledge_flow seed 2"]["status"] == "not started"
    assert todo["Alien zoo_tuning seed 2"]["status"] == "in progress"
    assert todo["Alien zoo_tuning seed 2"]["steps_done"] == 600
    run = {r["name"]: r for r in doc["runs"]}["Alien zoo_tuning seed 2"]
    assert run["checkpoint_step"] == 500 and run["evals"] == [[500, 60.0, 5.0]]
    assert run["eta_s"] == pytest.approx(400 / 20.0)
    assert run["gates"] is None  # only finished runs' final gates enter the table
    md = (out / "rl.md").read_text()
    assert "Still to run: Alien knowledge_flow seed 2 (not started); Alien zoo_tuning seed 2 (in progress, step 600)" in md
    assert f"zootune rl grid {grid_file} --out {root}" in md
    assert "| `finetune:Seaquest` (best finetune) | 3/3 |" in md
    assert "354.1" in md and "arXiv:1906.05243" in md
    assert (out / "rl_curves.png").stat().st_size > 0 and (out / "rl_gates.png").stat().st_size > 0
    assert math.isclose(doc["summary"]["targets"]["Alien"]["methods"]["scratch"]["mean"], 200.0)
    # hand-written notes below the marker survive a rewrite
    (out / "rl.md").write_text(md + "my analysis\n")
    assert rr.main(["--grid", str(grid_file), "--root", str(root), "--out", str(out)]) == 0
    assert (out / "rl.md").read_text().endswith("my analysis\n")


def test_empty_grid_folder_lists_every_run(rr, fake_grid, tmp_path):
    grid_file, _ = fake_grid
    out = tmp_path / "report"
    assert rr.main(["--grid", str(grid_file), "--root", str(tmp_path / "nothing"), "--out", str(out)]) == 0
    doc = json.loads((out / "rl.json").read_text())
    assert doc["finished"] == 0 and len(doc["to_run"]) == 17
    assert all(r["status"] == "not started" for r in doc["to_run"])
    assert {c["verdict"] for c in doc["summary"]["claims"]} == {"not enough seeds", "no finished finetune run"}
    md = (out / "rl.md").read_text()
    assert "No evaluation or training episode recorded yet." in md and "No finished Zoo-Tuning run yet." in md
