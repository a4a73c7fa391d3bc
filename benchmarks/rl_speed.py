"""Agent steps per second of DER and Zoo-Tuning DER (per-sample and lite), side by side.

One agent step = act (batch 1, noisy network, no gate statistics) + one DER update (batch 32:
online forward on s and s', target forward on s', C51 projection, backward, Adam, priority
update) + replay sampling — everything of the training loop but the emulator, which costs the
same for every method (measured separately and added for the wall-time estimate). The methods
are timed interleaved in rounds in one process (single thread), so machine noise hits all alike;
the sources are random DER networks written in the agent file format (speed does not depend on
their weights). Writes ``benchmarks/results/rl_speed.json`` and ``.md``.

    nice -n 10 python benchmarks/rl_speed.py            # ~3 min on one core
    python benchmarks/rl_speed.py --rounds 3 --steps 50  # quicker, noisier
    python benchmarks/rl_speed.py --kernels stacked,unfold,grouped   # per-sample kernels side by side
    python benchmarks/rl_speed.py --rounds 10 --flush-denormal   # steady baseline (see the notes)
    python benchmarks/rl_speed.py --processes 3 --rounds 6 --flush-denormal  # and across processes
    python benchmarks/rl_speed.py --compile --no-other-layout --no-layers --out benchmarks/results/rl_compile

``--processes N``: the whole measurement in N fresh processes one after the other; the reported
ratios are the medians over the processes, with each process's paired ratio listed. One process
measures a systematic offset of its own (memory placement): fresh processes of the same code
differed by up to 0.02 in their paired ratio here, more than its rounds vary.

``--kernels``: the per-sample conv kernels timed for ``zoo_tuning`` (each its own agent, all in the
same interleaved rounds; the first is the headline row; ``default`` is the config's per-layer
choice, ``method.kernel`` in ``configs/rl/der.yaml``); ``--recompute`` as ``method.recompute``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import zootune
from zootune.rl.agent import agent_metadata, build_online
from zootune.rl.c51 import support
from zootune.rl.config import build_rl_config, input_channels_last
from zootune.rl.envs import make_env
from zootune.rl.loop import act, learn, make_optimizer
from zootune.rl.network import DERNetwork, reset_noise
from zootune.rl.replay import CompactReplay
from zootune.train import OptimizerStep

sys.path.insert(0, str(Path(__file__).parent))
from common import atomic_write, keep_notes  # noqa: E402

METHODS = ("scratch", "zoo_tuning", "zoo_tuning_lite")


def fill_replay(cfg, steps: int, seed: int = 0) -> CompactReplay:
    a = cfg.agent
    rep = CompactReplay(max(steps + 100, 1000), (84, 84), n_step=a.n_step, discount=a.discount,
                        alpha=a.priority_alpha, seed=seed)
    rng = np.random.default_rng(seed)
    rep.start_episode(rng.integers(0, 255, (84, 84), dtype=np.uint8))
    for t in range(steps):
        end = (t + 1) % 500 == 0
        rep.add(int(rng.integers(18)), float(rng.integers(-1, 2)), bool(rng.random() < 0.01),
                rng.integers(0, 255, (84, 84), dtype=np.uint8), episode_end=end)
        if end:
            rep.start_episode(rng.integers(0, 255, (84, 84), dtype=np.uint8))
    return rep


def time_env(cfg, steps: int) -> float:
    env = make_env(cfg.env)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            env.reset()
    return (time.perf_counter() - t) / steps


def layer_table(m: int = 2, rounds: int = 30) -> list[dict]:
    """Each DER conv with every per-sample kernel against the plain conv, as the agent uses them:
    a training forward + backward at batch 32 (conv1's input needs no gradient), a forward
    without autograd at batch 32 (target / double-Q), and at batch 1 (acting, which takes the
    one-sample shortcut in the layer, so the bare kernels are listed for reference). Interleaved
    rounds, best of each; ``recompute=False`` as the RL default."""
    import torch.nn.functional as F

    from zootune.layers.kernels import ConvSpec, conv_kernel, per_sample

    spec = ConvSpec((5, 5), (0, 0), (1, 1), 1)
    rows = []
    for name, (cin, side, cout, needs_x) in {"conv1": (4, 84, 32, False), "conv2": (32, 16, 64, True)}.items():
        for batch, train in ((32, True), (32, False), (1, False)):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, cin, side, side, generator=g, requires_grad=needs_x and train)
            w = torch.randn(m, cout, cin, 5, 5, generator=g, requires_grad=train)
            a = torch.rand(batch, m, generator=g, requires_grad=train)
            wp = torch.randn(cout, cin, 5, 5, generator=g, requires_grad=train)

            def run(fn):
                with torch.set_grad_enabled(train):
                    y = fn()
                    if train:
                        y.backward(torch.ones_like(y))
                x.grad = a.grad = w.grad = wp.grad = None

            fns = {"plain": lambda: F.conv2d(x, wp, None, 5)}
            for kn in ("grouped", "unfold", "stacked"):
                kern = conv_kernel(kn, spec, x, (batch, cout, cin, 5, 5))
                fns[kn] = lambda kern=kern: per_sample(x, a, w, kern, False)
            best = {n: float("inf") for n in fns}
            for r in range(rounds + 2):  # two warm-up rounds
                for n, fn in fns.items():
                    t = time.perf_counter()
                    run(fn)
                    if r >= 2:
                        best[n] = min(best[n], time.perf_counter() - t)
            rows.append({"layer": name, "batch": batch, "autograd": train, "ms": {n: v * 1e3 for n, v in best.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100, help="agent steps per method per round")
    p.add_argument("--kernels", default="default,stacked,unfold",
                   help="comma list of per-sample kernels; 'default': the config's per-layer choice")
    p.add_argument("--recompute", choices=("true", "false"), default="false")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "rl_speed"))
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer kernel table")
    p.add_argument("--other-layout", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each method with the input layout `zootune rl` does not pick for it")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.set_flush_denormal for every method, as `zootune rl` does by default "
                        "(run.flush_denormal): denormal Adam moments otherwise slow a run for stretches")
    p.add_argument("--compile", action="store_true",
                   help="also each method with its networks torch.compile'd (inductor; compiled in the warm-up round)")
    p.add_argument("--processes", type=int, default=1,
                   help="repeat the measurement in this many fresh processes; report the medians")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.processes > 1:
        return across_processes(args, argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(args.flush_denormal)
    tmp = Path(tempfile.mkdtemp())
    kernels = [k for k in args.kernels.split(",") if k]
    recompute = args.recompute == "true"
    base = build_rl_config({"env": {"game": "Alien"}})
    srcs = []
    for i, game in enumerate(("Seaquest", "Riverraid")):
        torch.manual_seed(100 + i)
        net = DERNetwork(18, base.agent)
        f = tmp / f"{game}.safetensors"
        zootune.save(net, f, metadata=agent_metadata(game, 18, base.agent, base.env, "scratch"))
        srcs.append(str(f))
    rep = fill_replay(base, 3000)
    z = support(51, -10, 10)
    obs = np.random.default_rng(1).integers(0, 255, (4, 84, 84), dtype=np.uint8)
    agents = {}
    # rows: DER, per-sample Zoo-Tuning with each kernel, lite (kernel-independent), each in the
    # input layout `zootune rl` picks (run.channels_last: None); with --other-layout also each
    # method in the other layout (rows "...[nchw]" / "...[channels_last]"); with --compile also
    # each method with its networks torch.compile'd (rows "...+compile")
    rows = {"scratch": ("scratch", kernels[0], None, False)}
    rows.update({("zoo_tuning" if i == 0 else f"zoo_tuning[{k}]"): ("zoo_tuning", k, None, False)
                 for i, k in enumerate(kernels)})
    rows["zoo_tuning_lite"] = ("zoo_tuning_lite", kernels[0], None, False)
    if args.other_layout:
        for m in ("scratch", "zoo_tuning", "zoo_tuning_lite"):
            auto = input_channels_last(build_rl_config({"method": {"name": m}}))
            rows[f"{m}[{'nchw' if auto else 'channels_last'}]"] = (m, kernels[0], not auto, False)
    if args.compile:
        for m in ("scratch", "zoo_tuning", "zoo_tuning_lite"):
            rows[f"{m}+compile"] = (m, kernels[0], None, True)
    for row, (m, kern, cl, compiled) in rows.items():
        method = {"name": m, "sources": srcs if m != "scratch" else [], "recompute": recompute}
        if kern != "default":
            method["kernel"] = kern
        cfg = build_rl_config({"env": {"game": "Alien"}, "method": method, "run": {"channels_last": cl}})
        net = build_online(cfg.method, 18, cfg.agent, cfg.env, 0).train()
        import copy

        target = copy.deepcopy(net)
        opt = make_optimizer(list(net.parameters()), cfg.agent, torch.device("cpu"))  # as the loop's
        if compiled:  # compiled in the warm-up round (act: batch 1; learn: batch 32 with and without grad)
            net, target = torch.compile(net), torch.compile(target)
        agents[row] = (cfg, net, target, OptimizerStep(opt, grad_clip=cfg.agent.grad_clip))
    times = {m: [] for m in rows}
    for r in range(args.rounds + 1):  # round 0 warms up
        for m in rows:
            cfg, net, target, step_fn = agents[m]
            t = time.perf_counter()
            for _ in range(args.steps):
                reset_noise(net)
                act(net, obs, z, torch.device("cpu"), input_channels_last(cfg))
                learn(net, target, rep, cfg, z, 0.5, step_fn, torch.device("cpu"))
            if r:
                times[m].append((time.perf_counter() - t) / args.steps)
    env_s = time_env(base, 1000)
    med = {m: float(np.median(v)) for m, v in times.items()}
    res = {
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": 1, "kernels": kernels, "recompute": recompute, "rounds": args.rounds,
        "flush_denormal": args.flush_denormal,
        "channels_last": {r: input_channels_last(agents[r][0]) for r in rows},
        "steps_per_round": args.steps, "command": "python benchmarks/rl_speed.py " + " ".join(argv or sys.argv[1:]),
        "load_average_1_5_15": list(os.getloadavg()), "all_rounds_s": times,
        "agent_step_s_without_env": med, "env_step_s": env_s,
        "agent_steps_per_s": {m: 1.0 / (v + env_s) for m, v in med.items()},
        "ratio_to_der": {m: (v + env_s) / (med["scratch"] + env_s) for m, v in med.items()},
        # paired: each round's ratio (the methods of one round ran back to back), then the median;
        # less sensitive to the machine's speed drifting between rounds than the ratio of medians
        "ratio_to_der_paired": {m: float(np.median((np.array(v) + env_s) / (np.array(times["scratch"]) + env_s)))
                                for m, v in times.items()},
        "estimated_100k_run_h": {m: 100_000 * (v + env_s) / 3600 for m, v in med.items()},
    }
    if not args.no_layers:
        res["layers"] = layer_table()
    res["rows"] = {m: list(spec) for m, spec in rows.items()}
    write_results(args, res)
    return 0


def across_processes(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the measurement ``args.processes`` times, each in a fresh process (the per-layer
    table only in the first), and write the medians over the processes."""
    out = Path(args.out)
    child = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--kernels", args.kernels,
             "--recompute", args.recompute, "--flush-denormal" if args.flush_denormal else "--no-flush-denormal",
             *([] if args.other_layout else ["--no-other-layout"]), *(["--compile"] if args.compile else [])]
    runs = []
    for i in range(args.processes):
        part = out.parent / f"{out.name}-process{i}"  # no dot: with_suffix below
        cmd = [sys.executable, __file__, *child, "--out", str(part),
               *(["--no-layers"] if args.no_layers or i > 0 else [])]
        print(f"process {i + 1}/{args.processes}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(json.loads(part.with_suffix(".json").read_text()))
        for suffix in (".json", ".md"):
            part.with_suffix(suffix).unlink()
    res = dict(runs[0])
    res.update({
        "command": "python benchmarks/rl_speed.py " + " ".join(argv), "processes": args.processes,
        "all_rounds_s": [r["all_rounds_s"] for r in runs],
        "load_average_1_5_15": list(os.getloadavg()),
        "env_step_s": float(np.median([r["env_step_s"] for r in runs])),
        "per_process": {k: [r[k] for r in runs]
                        for k in ("ratio_to_der", "ratio_to_der_paired", "agent_step_s_without_env")},
    })
    for key in ("agent_step_s_without_env", "ratio_to_der", "ratio_to_der_paired", "agent_steps_per_s",
                "estimated_100k_run_h"):
        res[key] = {m: float(np.median([r[key][m] for r in runs])) for m in runs[0][key]}
    write_results(args, res)
    return 0


def write_results(args: argparse.Namespace, res: dict) -> None:
    """``res`` as ``--out``.json and .md (the hand-written notes below the tables are kept)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(res, indent=1))
    n = res.get("processes", 1)
    per = res.get("per_process")
    lines = ["| method | input layout | agent steps/s | step time vs DER | paired rounds vs DER | "
             + ("paired, each process | " if per else "") + "est. 100k run (h) |",
             "|---|---|---|---|---|---|" + ("---|" if per else "")]
    for m, (name, kern, cl, compiled) in res["rows"].items():
        label = "DER" if name == "scratch" else name
        if name == "zoo_tuning" and cl is None:  # the kernel rows, in the default layout
            label = f"zoo_tuning[{kern}]"
        if compiled:
            label += " (torch.compile)"
        lay = ("channels-last" if res["channels_last"][m] else "NCHW") + ("" if cl is None else " (not the default)")
        each = (" / ".join(f"{r[m]:.3f}" for r in per["ratio_to_der_paired"]) + " | ") if per else ""
        lines.append(f"| {label} | {lay} | {res['agent_steps_per_s'][m]:.1f} | "
                     f"{res['ratio_to_der'][m]:.2f}x | {res['ratio_to_der_paired'][m]:.2f}x | {each}"
                     f"{res['estimated_100k_run_h'][m]:.2f} |")
    procs = f"; medians over {n} fresh processes" if per else ""
    md = (f"# RL speed (one thread, per-sample kernels {', '.join(res['kernels'])}, "
          f"recompute={res['recompute']}, median of {args.rounds} interleaved rounds of {args.steps} "
          f"steps{procs}; env step {res['env_step_s'] * 1e3:.2f} ms included; \"step time vs DER\": ratio "
          f"of the medians, \"paired rounds\": median of each round's ratio"
          f"{'; denormals flushed' if args.flush_denormal else ''})\n\n"
          f"`{res['command']}`; load average at the end "
          f"{', '.join(f'{v:.1f}' for v in res['load_average_1_5_15'])} (2 cores)\n\n"
          + "\n".join(lines) + "\n")
    if res.get("layers"):
        md += ("\nPer layer (`layer_table`: m=2, recompute=False, best of 30 interleaved rounds; ms, "
               "ratio to the plain conv):\n\n| layer | batch | autograd | plain | grouped | unfold | stacked |\n"
               "|---|---|---|---|---|---|---|\n")
        for r in res["layers"]:
            ms = r["ms"]
            md += (f"| {r['layer']} | {r['batch']} | {'fwd+bwd' if r['autograd'] else 'fwd'} | {ms['plain']:.3f} | "
                   + " | ".join(f"{ms[k]:.3f} ({ms[k] / ms['plain']:.2f}x)" for k in ("grouped", "unfold", "stacked"))
                   + " |\n")
    atomic_write(out.with_suffix(".md"), keep_notes(out.with_suffix(".md"), md))  # hand notes stay
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
