"""The results of an RL grid (paper §4.1, Fig. 4): tables, learning curves and gates.

    python benchmarks/rl_results.py --grid grid_cpu --root benchmarks/rl_runs
    python benchmarks/rl_results.py --grid my_grid.yaml --root /tmp/grid --out /tmp/report

Reads a grid folder written by ``zootune rl grid`` (any moment: finished runs, runs in progress,
runs not started) and writes ``<out>/rl.md``, ``rl.json``, ``rl_curves.png`` and
``rl_gates.png`` (``--name`` changes the stem; ``--out`` defaults to ``benchmarks/results``).
It trains nothing: later sessions only run the grid, then this script.

Every run of the grid comes from :func:`zootune.rl.grid.plan` (the same list the runner works
through); what each run did comes from its own records, written by
:func:`zootune.rl.loop.train_agent`: ``result.json`` (finished: ``evaluations``, ``final_return``,
``wall_s``, ``gates``, ``teacher_weights``) and ``metrics.jsonl`` (``split: eval`` events with
``return_mean``/``return_std`` and ``gate/<layer>/<source index>``; ``split: train`` events with
``episode_return`` at each episode's end and ``steps_per_s`` every ``run.log_every`` steps).

The report:

* commands, grid, machine and versions, each run's status, steps and wall time, what is left;
* the source agents' final greedy evaluation beside the published DER Atari-100k score of the
  same game (van Hasselt, Hessel & Aslanides 2019; see :data:`PUBLISHED_DER`);
* per target game and method: the final evaluation return over finished seeds (mean, sample
  std, per seed), the seed-paired difference to ``scratch`` and to the best ``finetune:*`` —
  the best source is chosen by the mean *training* episode return over the last 10% of agent
  steps, never by the final evaluation — and the paper's Fig. 4 claim (Zoo-Tuning above scratch,
  fine-tuning and Knowledge Flow) checked with a paired t-test;
* learning curves like Fig. 4 (evaluation return vs agent steps, mean and min-max band over
  seeds; smoothed training episode return below);
* Zoo-Tuning's learned gates (final values per layer and source, mean over finished seeds).

Hand-written notes below the marker of the Markdown file survive a rewrite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from common import atomic_write, environment, keep_notes

#: Published DER scores at 100k agent steps (400k frames) for the games of this setting.
#: van Hasselt, Hessel & Aslanides (2019), "When to use parametric models in reinforcement
#: learning?", NeurIPS 2019 (arXiv:1906.05243), Atari-100k table. Read here from the
#: "Eff. Rainbow (van Hasselt et al., 2019)" column of Table 2 of Laskin, Srinivas & Abbeel,
#: "CURL: Contrastive Unsupervised Representations for Reinforcement Learning", ICML 2020
#: (arXiv:2004.04136), which reproduces that table for the 26 Atari-100k games; the primary
#: table itself was not reachable from this machine.
PUBLISHED_DER: dict[str, float] = {"Alien": 739.9, "Gopher": 349.5, "Jamesbond": 301.6, "Seaquest": 354.1}
DER_CITATION = ("van Hasselt, Hessel & Aslanides (2019), \"When to use parametric models in reinforcement "
                "learning?\", NeurIPS 2019, arXiv:1906.05243, Atari-100k table; as reproduced in the "
                "\"Eff. Rainbow\" column of Table 2 of Laskin, Srinivas & Abbeel (2020), CURL, ICML 2020, "
                "arXiv:2004.04136")
#: The 26 games of the Atari-100k benchmark (Kaiser et al. 2019; the rows of the tables above).
ATARI_100K = ("Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
              "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
              "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
              "RoadRunner", "Seaquest", "UpNDown")
#: the Fig. 4 claim: Zoo-Tuning above each of these (the best finetune stands for "fine-tuning")
CLAIM_BASELINES = ("scratch", "best finetune", "knowledge_flow")
ZOO_METHODS = ("zoo_tuning", "zoo_tuning_lite")
LAST_FRACTION = 0.1  # the training-return window that picks the best fine-tuned source


# ---- reading the grid ----------------------------------------------------------------------------

def _planned_config(grid: Any, run: Any) -> Any:
    """The RLConfig the runner gives ``run`` (grid base + grid overrides + the run's own)."""
    from zootune.rl.config import load_rl_config

    return load_rl_config(grid.base, [*grid.overrides, *run.overrides, "run.threads=1"])


def _source_names(folder: Path, grid: Any) -> list[str]:
    """The source games in the order of the run's ``method.sources`` (the gate index)."""
    cfg = folder / "config.yaml"
    if cfg.is_file():
        import yaml

        raw = yaml.safe_load(cfg.read_text()) or {}
        files = (raw.get("method") or {}).get("sources") or []
        names = []
        for f in files:  # <root>/sources/<Game>/seed<S>/model.safetensors
            parts = Path(f).parts
            names.append(parts[-3] if len(parts) >= 3 else Path(f).stem)
        if names:
            return names
    return list(grid.sources)


def read_run(grid: Any, run: Any) -> dict[str, Any]:
    """One run of the plan with what its folder holds (see the module docstring)."""
    from zootune.train.logger import read_metrics

    folder = run.out
    is_source = run.name.startswith("source ")
    cfg = _planned_config(grid, run)
    game = cfg.env.game
    by_folder = {m.replace(":", "-"): m for m in grid.methods}  # plan(): <Target>/<method with - for :>/seed<S>
    method = "source" if is_source else by_folder.get(folder.parent.name, folder.parent.name)
    rec: dict[str, Any] = {
        "name": run.name, "kind": "source" if is_source else "target", "game": game, "method": method,
        "seed": cfg.run.seed, "folder": str(folder), "steps_planned": cfg.run.steps,
        "eval_every": cfg.run.eval_every, "eval_episodes": cfg.run.eval_episodes,
        "command": ["python", "-m", "zootune", "rl", "run", grid.base, "--out", str(folder),
                    "--quiet", *grid.overrides, *run.overrides, "run.threads=1"],
    }
    events = read_metrics(folder / "metrics.jsonl")
    res_file = folder / "result.json"
    result = json.loads(res_file.read_text()) if res_file.is_file() else None
    started = result is not None or (folder / "config.yaml").is_file() or bool(events)
    rec["status"] = "finished" if result is not None else ("in progress" if started else "not started")
    evals = [(e["step"], e.get("return_mean"), e.get("return_std")) for e in events if e.get("split") == "eval"]
    if result is not None:  # the result's evaluations are the authoritative ones (and hold each episode)
        evals = [(e["step"], e["return_mean"], e["return_std"]) for e in result.get("evaluations", [])]
    rec["evals"] = [list(t) for t in sorted(evals)]
    eps = [(e["step"], e["episode_return"]) for e in events if e.get("split") == "train" and "episode_return" in e]
    rec["train_episodes"] = [list(t) for t in sorted(eps)]
    last_from = (1.0 - LAST_FRACTION) * cfg.run.steps
    tail = [r for s, r in eps if s > last_from and r is not None]
    rec["train_last10"] = sum(tail) / len(tail) if tail else None
    rec["train_last10_episodes"] = len(tail)
    speed = [e for e in events if e.get("split") == "train" and "steps_per_s" in e]
    ckpt = folder / "checkpoints" / "latest.json"
    ckpt_step = json.loads(ckpt.read_text()).get("step") if ckpt.is_file() else None
    logged = max((e.get("step", 0) for e in events), default=0)
    rec["checkpoint_step"] = ckpt_step
    rec["steps_done"] = result["steps"] if result is not None else max(logged, ckpt_step or 0)
    mf = folder / "metrics.jsonl"
    rec["last_record"] = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mf.stat().st_mtime))
                          if mf.is_file() else None)
    rec["steps_per_s_recent"] = speed[-1]["steps_per_s"] if speed else None
    if result is not None:
        last = (result.get("evaluations") or [{}])[-1]
        rec.update(final_return=result.get("final_return"), final_return_std=last.get("return_std"),
                   final_episodes=len(last.get("returns") or []), final_step=last.get("step"),
                   wall_s=result.get("wall_s"), steps_per_s_learning=result.get("steps_per_s_learning"),
                   episodes=result.get("episodes"), updates=result.get("updates"),
                   teacher_weights=result.get("teacher_weights"))
        rec["finished_steps_differ"] = result.get("steps") != cfg.run.steps
        gates = result.get("gates")
        rec["gates"] = gates
        rec["gate_sources"] = _source_names(folder, grid) if gates else None
    else:
        rec.update(final_return=None, wall_s=None, gates=None, gate_sources=None)
        sps = rec["steps_per_s_recent"]
        left = cfg.run.steps - rec["steps_done"]
        rec["eta_s"] = left / sps if (started and sps) else None
    return rec


def collect(grid_path: str | Path, root: str | Path) -> tuple[Any, list[dict[str, Any]]]:
    """The grid config and every run of its plan, read from ``root``."""
    from zootune.rl.grid import load_grid, plan

    grid = load_grid(grid_path)
    root = Path(root)
    return grid, [read_run(grid, r) for r in plan(grid, root)]


# ---- statistics ----------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None for fewer than 2 values)."""
    import numpy as np

    if not values:
        return None, None
    a = np.asarray(values, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def paired(a: dict[int, float], b: dict[int, float], alpha: float = 0.05) -> dict[str, Any]:
    """Seed-paired ``a - b`` over the seeds finished in both, with a two-sided paired t-test."""
    import numpy as np

    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    out: dict[str, Any] = {"seeds": seeds, "n": len(seeds), "diffs": diffs, "mean_diff": None,
                           "std_diff": None, "t": None, "p": None, "verdict": "not enough seeds"}
    if not seeds:
        return out
    out["mean_diff"], out["std_diff"] = mean_std(diffs)
    if len(seeds) < 2:
        return out
    d = np.asarray(diffs, dtype=float)
    if float(d.std(ddof=1)) == 0.0:  # identical differences: t is +-inf (or 0/0 when all zero)
        t, p = (math.copysign(math.inf, d[0]), 0.0) if d[0] != 0 else (0.0, 1.0)
    else:
        from scipy import stats

        r = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        t, p = float(r.statistic), float(r.pvalue)
    out["t"], out["p"] = t, p
    m = out["mean_diff"]
    out["verdict"] = "agree" if (p < alpha and m > 0) else "reversed" if (p < alpha and m < 0) else "level"
    return out


def summarize(grid: Any, runs: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """Sources table, per-target method tables, claim checks and gates from the run records."""
    sources = []
    for r in runs:
        if r["kind"] != "source":
            continue
        g = r["game"]
        pub = PUBLISHED_DER.get(g)
        note = (DER_CITATION if pub is not None else
                ("not in the 26-game Atari-100k set: no published DER score" if g not in ATARI_100K
                 else "not found"))
        sources.append({"game": g, "seed": r["seed"], "status": r["status"], "steps": r["steps_done"],
                        "steps_planned": r["steps_planned"], "final_return": r["final_return"],
                        "final_return_std": r.get("final_return_std"), "episodes": r.get("final_episodes"),
                        "published_der": pub, "published_source": note})
    targets: dict[str, Any] = {}
    claims: list[dict[str, Any]] = []
    for target in grid.targets:
        rows: dict[str, Any] = {}
        for m in grid.methods:
            rs = [r for r in runs if r["kind"] == "target" and r["game"] == target and r["method"] == m]
            fin = {r["seed"]: r["final_return"] for r in rs if r["status"] == "finished"}
            crit = {r["seed"]: r["train_last10"] for r in rs
                    if r["status"] == "finished" and r["train_last10"] is not None}
            mean, std = mean_std(list(fin.values()))
            cmean, _ = mean_std(list(crit.values()))
            rows[m] = {"seeds_finished": sorted(fin), "seeds_planned": list(grid.seeds), "final": fin,
                       "mean": mean, "std": std, "train_last10": crit, "train_last10_mean": cmean}
        ft = [m for m in grid.methods if m.split(":")[0] == "finetune" and rows[m]["train_last10_mean"] is not None]
        best = max(ft, key=lambda m: rows[m]["train_last10_mean"]) if ft else None
        for m, row in rows.items():
            row["vs_scratch"] = (paired(row["final"], rows["scratch"]["final"], alpha)
                                 if "scratch" in rows and m != "scratch" else None)
            row["vs_best_finetune"] = (paired(row["final"], rows[best]["final"], alpha)
                                       if best is not None and m != best else None)
        targets[target] = {"methods": rows, "best_finetune": best,
                           "best_finetune_criterion": {m: rows[m]["train_last10_mean"] for m in ft}}
        for zm in [m for m in grid.methods if m in ZOO_METHODS]:
            for base in CLAIM_BASELINES:
                bm = best if base == "best finetune" else base
                c: dict[str, Any] = {"target": target, "method": zm, "baseline": base, "baseline_method": bm}
                if bm is None or bm not in rows:
                    c.update(verdict="not in grid" if base != "best finetune" or not any(
                        m.startswith("finetune") for m in grid.methods) else "no finished finetune run",
                        n=0, mean_diff=None, p=None, t=None)
                else:
                    c.update(paired(rows[zm]["final"], rows[bm]["final"], alpha))
                claims.append(c)
    gates = []
    for target in grid.targets:
        for m in grid.methods:
            rs = [r for r in runs if r["kind"] == "target" and r["game"] == target and r["method"] == m
                  and r["status"] == "finished" and r.get("gates")]
            if not rs:
                continue
            layers = list(rs[0]["gates"])
            names = rs[0]["gate_sources"] or [f"source {i}" for i in range(len(next(iter(rs[0]["gates"].values()))))]
            for layer in layers:
                for i, src in enumerate(names):
                    per = {r["seed"]: r["gates"][layer][i] for r in rs if layer in r["gates"]}
                    mean, std = mean_std(list(per.values()))
                    gates.append({"target": target, "method": m, "layer": layer, "source": src, "index": i,
                                  "mean": mean, "std": std, "per_seed": per})
    return {"sources": sources, "targets": targets, "claims": claims, "gates": gates, "alpha": alpha}


# ---- formatting ----------------------------------------------------------------------------------

def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{nd}f}"


def _p(v: Any) -> str:
    return "—" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _dur(s: Any) -> str:
    if s is None:
        return "—"
    s = float(s)
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _diff(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    if c["mean_diff"] is None:
        return c["verdict"]
    sd = f" ± {_f(c['std_diff'])}" if c["std_diff"] is not None else ""
    pv = f", p = {_p(c['p'])}" if c["p"] is not None else ""
    return f"{c['mean_diff']:+.1f}{sd} (n = {c['n']}{pv})"


def format_markdown(doc: dict[str, Any]) -> str:
    g, s, runs = doc["grid_config"], doc["summary"], doc["runs"]
    done = [r for r in runs if r["status"] == "finished"]
    lines = ["# Zoo-Tuning of Atari agents: results of the RL grid (paper §4.1, Fig. 4)", "",
             (f"Written by `benchmarks/rl_results.py` from the run folders under `{doc['root']}` (grid "
             f"`{doc['grid']}`); rewritten whenever the script runs, notes below the marker are kept. "
             f"{len(done)} of {len(runs)} runs finished."), "",
             "## Commands", "", "```bash",
             f"{doc['commands']['grid']}    # resumable: finished runs are skipped; --max-runs N does it in pieces",
             f"{doc['commands']['report']}", "```", "",
             ("The runner starts each run as one single-thread subprocess (`OMP_NUM_THREADS=1`; it passes the "
              "resolved path of the base config), e.g.:"), "",
             "```bash", " ".join(runs[-1]["command"]) if runs else "", "```", "",
             (f"Grid: base `{g['base']}`, overrides `{' '.join(g['overrides']) or '—'}`, sources "
             f"{', '.join(f'{k} (seeds {v})' for k, v in g['sources'].items())} (targets use seed {g['source_seed']}), "
             f"targets {', '.join(g['targets'])}, methods {', '.join(f'`{m}`' for m in g['methods'])}, "
             f"seeds {g['seeds']}, workers {g['workers']}."), ""]
    # ---- sources
    lines += ["## Source agents beside the published DER score", "",
              ("| source game | seed | status | agent steps | final greedy evaluation return (mean ± std over episodes) "
              "| episodes | published DER, 100k steps |"), "|---|---|---|---|---|---|---|"]
    for r in s["sources"]:
        ev = (f"{_f(r['final_return'])} ± {_f(r['final_return_std'])}" if r["final_return"] is not None else "—")
        pub = _f(r["published_der"]) if r["published_der"] is not None else r["published_source"]
        lines.append(f"| {r['game']} | {r['seed']} | {r['status']} | {r['steps']:,} / {r['steps_planned']:,} | {ev} "
                     f"| {r['episodes'] or '—'} | {pub} |")
    lines += ["", (f"Published DER numbers: {DER_CITATION}. Riverraid is not one of the 26 Atari-100k games, so "
              "DER has no published 100k score for it. DER's published numbers come from its own protocol "
              "(no sticky actions, 30 no-op starts); they are a sanity check of the source agents, not a target."),
              ""]
    # ---- targets
    alpha = s["alpha"]
    lines += ["## Target games: final evaluation return", "",
              (f"Final evaluation = the greedy evaluation at the last step ({doc['eval_note']}), mean ± sample "
              "std (ddof 1) over the finished seeds. Δ columns: seed-paired difference (method − baseline) over "
              "the seeds finished in both, mean ± std of the differences, two-sided paired t-test p. The best "
              f"`finetune:*` is chosen by the mean **training** episode return over the last {LAST_FRACTION:.0%} of "
              "agent steps (episodes ending there; mean over finished seeds) — never by the final evaluation, "
              "which is the quantity being compared."), ""]
    for target, t in s["targets"].items():
        best = t["best_finetune"]
        lines += [f"### {target}", "",
                  ("| method | seeds finished | final eval return | per seed | training return, last 10% "
                  "| Δ vs scratch | Δ vs best finetune |"), "|---|---|---|---|---|---|---|"]
        for m, row in t["methods"].items():
            per = ", ".join(f"s{k}: {_f(v)}" for k, v in sorted(row["final"].items())) or "—"
            ms = (f"{_f(row['mean'])} ± {_f(row['std'])}" if row["mean"] is not None else "—")
            label = f"`{m}`" + (" (best finetune)" if m == best else "")
            lines.append(f"| {label} | {len(row['seeds_finished'])}/{len(row['seeds_planned'])} | {ms} | {per} "
                         f"| {_f(row['train_last10_mean'])} | {_diff(row['vs_scratch'])} "
                         f"| {_diff(row['vs_best_finetune'])} |")
        crit = ", ".join(f"`{m}` {_f(v)}" for m, v in t["best_finetune_criterion"].items()) or "none finished"
        lines += ["", f"Best finetune: {f'`{best}`' if best else '—'} (training return, last 10%: {crit})."]
        pub = PUBLISHED_DER.get(target)
        lines += [f"Published DER on {target} at 100k steps (the `scratch` protocol): "
                  + (f"{pub:.1f} (van Hasselt et al. 2019; source above)." if pub is not None else
                     "not in the 26-game Atari-100k set." if target not in ATARI_100K else "not found."), ""]
    # ---- claims
    lines += ["## The paper's Fig. 4 claim", "",
              ("Shu et al. (2021, §4.1, Fig. 4): \"in all the downstream tasks, Zoo-Tuning outperforms transferring "
              "from a single pretrained model and Knowledge Flow\"; fine-tuning \"performs similarly with training "
              "from scratch, and even slightly worse\", so Zoo-Tuning is above scratch too. Verdict: "
              f"**agree** = Zoo-Tuning above the baseline with p < {alpha}, **reversed** = below with p < {alpha}, "
              "**level** = neither; *not enough seeds* when fewer than 2 seeds are finished in both."), "",
              "| target | Zoo-Tuning | baseline | n | mean Δ (Zoo − baseline) | t | p | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for c in s["claims"]:
        base = c["baseline"] + (f" (`{c['baseline_method']}`)" if c["baseline"] == "best finetune"
                                and c.get("baseline_method") else "")
        lines.append(f"| {c['target']} | `{c['method']}` | {base} | {c['n']} | {_f(c['mean_diff'])} | "
                     f"{_f(c['t'], 2)} | {_p(c['p'])} | {c['verdict']} |")
    if not s["claims"]:
        lines.append("| — | no Zoo-Tuning method in the grid | | | | | | |")
    lines += ["", (f"With {len(g['seeds'])} seeds a paired t-test has little power: *level* means the difference "
              "is not resolved by these seeds, not that the methods are equal."), ""]
    # ---- curves
    lines += ["## Learning curves (Fig. 4)", "", f"![learning curves]({doc['files']['curves']})", "",
              ("Top: greedy evaluation return vs agent steps, mean over the seeds that reached each evaluation "
              "(finished and in progress), band = min-max over those seeds. Bottom: training episode return, "
              "running mean over 10 episodes per run, then mean and min-max over seeds. Right column: the "
              "source agents."), ""]
    # ---- gates
    lines += ["## Learned gates of Zoo-Tuning", ""]
    if s["gates"]:
        lines += [f"![gates]({doc['files']['gates']})", "",
                  ("Final gate per aggregated layer and source (`result.json` `gates`; the same values as the "
                  "last `gate/<layer>/<source index>` in `metrics.jsonl`): for per-sample Zoo-Tuning the running "
                  "mean of the per-sample gates, for lite the temporal ensemble `abar`. Mean ± std over finished "
                  "seeds."), "",
                  "| target | method | layer | source | mean gate | per seed |", "|---|---|---|---|---|---|"]
        for q in s["gates"]:
            per = ", ".join(f"s{k}: {v:.3f}" for k, v in sorted(q["per_seed"].items()))
            sd = f" ± {q['std']:.3f}" if q["std"] is not None else ""
            lines.append(f"| {q['target']} | `{q['method']}` | {q['layer']} | {q['source']} | "
                         f"{q['mean']:.3f}{sd} | {per} |")
    else:
        lines.append("No finished Zoo-Tuning run yet.")
    lines.append("")
    # ---- status
    total_wall = sum(r["wall_s"] or 0.0 for r in done)
    lines += ["## Runs", "",
              (f"Wall time = `wall_s` of the run's `result.json` (the training loop, evaluations included, summed "
              f"over resumes). Finished runs: {len(done)}, {_dur(total_wall)} in all. For a run in progress: the "
              "time left at the last logged `steps_per_s`, a mean since the process started that counts the fast "
              "steps before learning starts (optimistic early in a run)."), "",
              "| run | status | agent steps | wall time | agent steps/s while learning | final eval return |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        st = r["status"]
        if st == "in progress":
            st += f" (last record {r['last_record'] or '—'})"
        if r.get("finished_steps_differ"):
            st += f" (at {r['steps_done']:,} steps, the grid plans {r['steps_planned']:,})"
        wall = _dur(r["wall_s"]) if r["status"] == "finished" else (
            f"≈ {_dur(r.get('eta_s'))} left at the logged mean speed" if r.get("eta_s") is not None else "—")
        lines.append(f"| {r['name']} | {st} | {r['steps_done']:,} / {r['steps_planned']:,} | {wall} | "
                     f"{_f(r.get('steps_per_s_learning'))} | {_f(r['final_return'])} |")
    todo = [r for r in runs if r["status"] != "finished"]
    lines += ["", "Still to run: " + ("nothing, the grid is complete." if not todo else "; ".join(
        f"{r['name']} ({r['status']}" + (f", step {r['steps_done']:,}" if r["status"] == "in progress" else "") + ")"
        for r in todo) + f". Continue with `{doc['commands']['grid']}`."), ""]
    lines += ["## Environment", "",
              ("Of this report (the runs were trained where the grid ran; each run folder records its config, "
              f"not its machine): `{json.dumps(doc['environment'])}`"), ""]
    return "\n".join(lines)


# ---- figures -------------------------------------------------------------------------------------

def _smoothed(episodes: list[list[float]], grid_x: Any, window: int = 10) -> Any:
    import numpy as np

    if not episodes:
        return np.full(len(grid_x), np.nan)
    st = np.asarray([e[0] for e in episodes], dtype=float)
    rt = np.asarray([e[1] for e in episodes], dtype=float)
    c = np.cumsum(np.insert(rt, 0, 0.0))
    k = np.arange(1, len(rt) + 1)
    lo = np.maximum(0, k - window)
    run_mean = (c[k] - c[lo]) / (k - lo)
    y = np.interp(grid_x, st, run_mean)
    y[(grid_x < st[0]) | (grid_x > st[-1])] = np.nan
    return y


def plot_curves(doc: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    runs = doc["runs"]
    g = doc["grid_config"]
    panels = list(g["targets"]) + (["sources"] if any(r["kind"] == "source" for r in runs) else [])
    if not any(r["evals"] or r["train_episodes"] for r in runs):
        return False
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 6.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, panel in enumerate(panels):
        if panel == "sources":
            groups = {game: [r for r in runs if r["kind"] == "source" and r["game"] == game] for game in g["sources"]}
        else:
            groups = {m: [r for r in runs if r["kind"] == "target" and r["game"] == panel and r["method"] == m]
                      for m in g["methods"]}
        ax_e, ax_t = axes[0, j], axes[1, j]
        for k, (label, rs) in enumerate(groups.items()):
            col = colors[k % len(colors)]
            series = [{s: v for s, v, _ in r["evals"] if v is not None} for r in rs if r["evals"]]
            if series:
                steps = sorted(set().union(*series))
                vals = [[ser[s] for ser in series if s in ser] for s in steps]
                mean = np.array([np.mean(v) for v in vals])
                ax_e.plot(steps, mean, "-o", ms=3, color=col, label=f"{label} (n={len(series)})")
                ax_e.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=col, alpha=0.15)
            eps = [r["train_episodes"] for r in rs if r["train_episodes"]]
            if eps:
                steps_max = max(r["steps_planned"] for r in rs)
                gx = np.linspace(0, steps_max, 200)
                ys = np.vstack([_smoothed(e, gx) for e in eps])
                ok = ~np.all(np.isnan(ys), axis=0)
                if ok.any():
                    with np.errstate(all="ignore"):
                        ax_t.plot(gx[ok], np.nanmean(ys[:, ok], 0), color=col, label=f"{label} (n={len(eps)})")
                        ax_t.fill_between(gx[ok], np.nanmin(ys[:, ok], 0), np.nanmax(ys[:, ok], 0), color=col,
                                          alpha=0.15)
        title = "source agents" if panel == "sources" else panel
        ax_e.set_title(f"{title}: evaluation return", fontsize=10)
        ax_t.set_title(f"{title}: training episode return (smoothed)", fontsize=10)
        for ax in (ax_e, ax_t):
            ax.set_xlabel("agent steps")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ax_e.set_ylabel("return")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_gates(doc: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    gates = doc["summary"]["gates"]
    keys = list(dict.fromkeys((q["target"], q["method"]) for q in gates))
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 0.8, 2.8), squeeze=False)
    for ax, (target, m) in zip(axes[0], keys):
        qs = [q for q in gates if q["target"] == target and q["method"] == m]
        layers = list(dict.fromkeys(q["layer"] for q in qs))
        srcs = list(dict.fromkeys(q["source"] for q in qs))
        mat = np.full((len(srcs), len(layers)), np.nan)
        for q in qs:
            mat[srcs.index(q["source"]), layers.index(q["layer"])] = q["mean"]
        top = max(1.0, float(np.nanmax(mat)))  # gates lie in [0, 1]: one scale for every panel
        im = ax.imshow(mat, aspect="auto", cmap="Blues", vmin=0.0, vmax=top)
        ax.set_yticks(range(len(srcs)), srcs)
        ax.set_xticks(range(len(layers)), layers)
        for i in range(len(srcs)):
            for k in range(len(layers)):
                ax.text(k, i, f"{mat[i, k]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if mat[i, k] > 0.6 * top else "black")
        n = max(len(q["per_seed"]) for q in qs)
        ax.set_title(f"{target} {m}: mean gate, {n} seed(s)", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# ---- writing -------------------------------------------------------------------------------------

def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in ("ale-py", "gymnasium", "torchrl", "scipy", "matplotlib"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def write_results(grid_path: str, root: str | Path, out: Path, name: str = "rl", *, alpha: float = 0.05,
                  grid_command: str | None = None, report_command: str | None = None) -> dict[str, Any]:
    """Read the grid, write ``<out>/<name>.md``, ``.json``, ``_curves.png``, ``_gates.png``; returns the doc."""
    grid, runs = collect(grid_path, root)
    summary = summarize(grid, runs, alpha)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env.update(_versions())
    files = {"curves": f"{name}_curves.png", "gates": f"{name}_gates.png"}
    gcfg = grid.model_dump(mode="json")
    ev = {(r["eval_every"], r["eval_episodes"]) for r in runs}
    eval_note = "; ".join(f"{n} greedy episode(s), noise off; also every {e:,} steps" if e else
                                  f"{n} greedy episode(s), noise off" for e, n in sorted(ev))
    doc = {"name": name, "grid": str(grid_path), "root": str(root),
           "commands": {"grid": grid_command or f"zootune rl grid {grid_path} --out {root}",
                        "report": report_command or
                        f"python benchmarks/rl_results.py --grid {grid_path} --root {root}"},
           "environment": env, "grid_config": gcfg, "eval_note": eval_note, "published_der": PUBLISHED_DER, "der_citation": DER_CITATION,
           "finished": sum(r["status"] == "finished" for r in runs), "total": len(runs),
           "to_run": [{"name": r["name"], "status": r["status"], "steps_done": r["steps_done"]}
                      for r in runs if r["status"] != "finished"],
           "summary": summary, "runs": runs, "files": files}
    have_curves = plot_curves(doc, out / files["curves"])
    plot_gates(doc, out / files["gates"])  # drawn when a Zoo-Tuning run is finished (the gates table)
    atomic_write(out / f"{name}.json", json.dumps(doc, indent=1, default=str))
    md = format_markdown(doc)
    if not have_curves:
        md = md.replace(f"![learning curves]({files['curves']})", "No evaluation or training episode recorded yet.")
    atomic_write(out / f"{name}.md", keep_notes(out / f"{name}.md", md))
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="grid_cpu", help="grid config: a file or a shipped name (grid_cpu)")
    ap.add_argument("--root", type=Path, default=HERE / "rl_runs", help="the grid's --out folder")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the results files go")
    ap.add_argument("--name", default="rl", help="stem of the results files")
    ap.add_argument("--alpha", type=float, default=0.05, help="level of the paired t-test verdicts")
    ap.add_argument("--grid-command", default=None, help="the grid command to print (default: derived)")
    a = ap.parse_args(argv)
    root = a.root
    try:  # print the root as given relative to the repository when it lies inside it
        root_txt = str(root.resolve().relative_to(Path.cwd().resolve())) if not root.is_absolute() else str(root)
    except ValueError:
        root_txt = str(root)
    args = sys.argv[1:] if argv is None else argv
    doc = write_results(a.grid, root_txt, a.out, a.name, alpha=a.alpha, grid_command=a.grid_command,
                        report_command="python benchmarks/rl_results.py " + " ".join(args))
    print(f"{doc['finished']}/{doc['total']} runs finished; results: {a.out / (a.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
