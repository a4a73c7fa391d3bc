"""``zootune rl``: Zoo-Tuning of Atari agents with Data-Efficient Rainbow (paper §4.1).

Sub-commands: ``train-source GAME`` (a DER source agent), ``tune GAME --method M`` (transfer to
a target game), ``run CONFIG`` (any RL config), ``grid CONFIG`` (the resumable games x methods
x seeds runner) and ``eval MODEL GAME``. See ``docs/rl.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  zootune rl train-source Seaquest --out runs/rl/src/Seaquest            # 100k steps, ~1 h on 2 cores
  zootune rl tune Alien --method zoo_tuning --sources runs/rl/src/Seaquest runs/rl/src/Riverraid \\
      --out runs/rl/Alien/zoo_tuning/seed0 --seed 0
  zootune rl tune Alien --method finetune --source Seaquest --sources A.safetensors B.safetensors
  zootune rl tune Alien --method knowledge_flow --sources A.safetensors B.safetensors method.anneal=0.5
  zootune rl tune Alien --method scratch run.steps=2000 agent.learning_starts=200   # a smoke run
  zootune rl grid grid_cpu --out runs/rl_grid --max-runs 2               # resumable; run again to go on
  zootune rl eval runs/rl/Alien/zoo_tuning/seed0 Alien --episodes 10
"""


def register(sub: argparse._SubParsersAction) -> None:
    from zootune.commands._overrides import make_intermixed

    p = sub.add_parser("rl", help="RL transfer on Atari: DER source agents, Zoo-Tuning of agents, grids",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = p.add_subparsers(dest="rl_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser, game: bool = True) -> None:
        if game:
            q.add_argument("game", help="ALE game name (Seaquest, Riverraid, Alien, Gopher, Jamesbond, ...)")
        q.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides (run.steps=2000 agent.n_step=10 env.repeat_action_probability=0.25)")
        if game:
            q.add_argument("--config", default="der", help="RL config file or shipped name (default: der)")
        q.add_argument("--out", default=None, help="run folder (default: runs/rl/<game>/<method>/seed<S>)")
        q.add_argument("--seed", type=int, default=None)
        q.add_argument("--steps", type=int, default=None, help="agent steps (default: 100000)")
        q.add_argument("--quiet", action="store_true")
        make_intermixed(q)

    ts = rsub.add_parser("train-source", help="train a DER source agent from scratch and save it",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(ts)
    ts.set_defaults(func=_train_source)

    tu = rsub.add_parser("tune", help="train on a target game from source agents (or from scratch)",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(tu)
    tu.add_argument("--method", default="zoo_tuning",
                    help="scratch | finetune | zoo_tuning | zoo_tuning_lite | knowledge_flow")
    tu.add_argument("--sources", nargs="+", default=None, metavar="MODEL",
                    help="source agent files or run folders (from train-source)")
    tu.add_argument("--source", default=None, help="finetune: which source (index or game name)")
    tu.set_defaults(func=_tune)

    rr = rsub.add_parser("run", help="run an RL config as it is (what the grid runner starts)")
    rr.add_argument("config", help="RL config file or shipped name (der)")
    common(rr, game=False)
    rr.set_defaults(func=_run)

    gr = rsub.add_parser("grid", help="run a games x methods x seeds grid; skips finished runs, resumes the rest")
    gr.add_argument("config", help="grid config file or shipped name (grid_cpu, grid_paper)")
    gr.add_argument("--out", required=True)
    gr.add_argument("--max-runs", type=int, default=None, help="start at most this many runs")
    gr.add_argument("--workers", type=int, default=None, help="runs side by side (default: the config's, 2)")
    gr.add_argument("--dry-run", action="store_true", help="list what would run")
    gr.set_defaults(func=_grid)

    ev = rsub.add_parser("eval", help="evaluate a saved agent: greedy policy, noise off")
    ev.add_argument("model", help="agent model file or run folder")
    ev.add_argument("game")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_eval)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _config(args: argparse.Namespace, extra: list[str]):
    from zootune.rl.config import load_rl_config

    ov = list(extra)
    if getattr(args, "game", None):
        ov.insert(0, f"env.game={args.game}")
    if args.seed is not None:
        ov.append(f"run.seed={args.seed}")
    if args.steps is not None:
        ov.append(f"run.steps={args.steps}")
    return load_rl_config(args.config, ov + list(args.overrides))


def _execute(cfg, args, default_out: str) -> int:
    from zootune.rl.loop import train_agent

    out = args.out or default_out
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    say(f"{cfg.env.game} / {cfg.method.name} / seed {cfg.run.seed}: {cfg.run.steps} agent steps -> {out}")
    res = train_agent(cfg, out, progress=say)
    if not res.finished:
        print(f"stopped at step {res.steps}; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{cfg.env.game} {cfg.method.name} seed {cfg.run.seed}: final eval return "
          f"{res.final_return:.1f} ({res.info.get('steps_per_s_learning') or float('nan'):.1f} agent steps/s "
          f"while learning); model: {res.out_dir / 'model.safetensors'}")
    return 0


def _train_source(args: argparse.Namespace) -> int:
    cfg = _config(args, ["method.name=scratch"])
    return _execute(cfg, args, f"runs/rl/sources/{cfg.env.game}/seed{cfg.run.seed}")


def _tune(args: argparse.Namespace) -> int:
    extra = [f"method.name={args.method}"]
    if args.sources:
        extra.append("method.sources=[" + ",".join(args.sources) + "]")
    if args.source is not None:
        extra.append(f"method.source={args.source}")
    cfg = _config(args, extra)
    name = cfg.method.name + (f"-{cfg.method.source}" if cfg.method.name == "finetune" else "")
    return _execute(cfg, args, f"runs/rl/{cfg.env.game}/{name}/seed{cfg.run.seed}")


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args, [])
    return _execute(cfg, args, f"runs/rl/{cfg.env.game}/{cfg.method.name}/seed{cfg.run.seed}")


def _grid(args: argparse.Namespace) -> int:
    from zootune.rl.grid import load_grid, run_grid

    res = run_grid(load_grid(args.config), args.out, max_runs=args.max_runs, workers=args.workers,
                   dry_run=args.dry_run)
    print(f"grid: {res['done']}/{res['total']} runs finished ({res['started']} started now, "
          f"{res['failed']} failed)")
    return 1 if res["failed"] else 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zootune.export import read_metadata
    from zootune.rl.agent import load_agent
    from zootune.rl.config import build_rl_config
    from zootune.rl.loop import evaluate_agent

    path = Path(args.model)
    f = path / "model.safetensors" if path.is_dir() else path
    rl = (read_metadata(f).get("extra") or {}).get("rl") or {}
    cfg = build_rl_config({"env": {**(rl.get("env") or {}), "game": args.game}, "agent": rl.get("agent") or {}})
    net = load_agent(f)
    ev = evaluate_agent(net, cfg, args.episodes, seed=args.seed)
    if args.json:
        print(json.dumps(ev))
    else:
        print(f"{args.game}: return {ev['return_mean']:.1f} +- {ev['return_std']:.1f} over {args.episodes} episodes")
    return 0
