"""``zootune tune CONFIG.yaml [key=value ...] [--resume]``: train one run from a YAML config.

Multi-GPU: ``torchrun --nproc_per_node=N -m zootune tune CONFIG.yaml`` (DistributedDataParallel;
rank 0 writes the run folder).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

EPILOG = """\
examples:
  zootune tune digits_tiny                # an example shipped with zootune (--examples lists them)
  zootune tune my_run.yaml method.lite=true optim.lr=0.003
  zootune tune paper_classification data.root=/data/cifar100
  zootune tune digits_tiny --resume       # continue after a crash or Ctrl-C
  torchrun --nproc_per_node=4 -m zootune tune paper_classification data.root=/data/cifar100

The run folder (out_dir, default runs/<config name>) gets config.yaml, metrics.jsonl,
tb/ (TensorBoard), checkpoints/, model.safetensors, result.json, report.md, gates.png and
curves.png. Ctrl-C writes a checkpoint and exits (status 130); --resume continues it.
Recipes (recipe: NAME): paper_classification (SGD 0.01, momentum 0.9, x0.1 every 6k of 15k
steps, batch 48), adam (Adam 1e-4). Methods (method: NAME or {name: NAME, ...options}) and tasks
are registries: python -c "import zootune; print(zootune.methods.available())".
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="train a model from a zoo with a YAML config (Zoo-Tuning, lite, baselines)",
        description="Train one run described by a YAML config; key=value arguments override "
                    "config entries with dotted keys (e.g. optim.lr=0.001 train.steps=500).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file, or the name of a shipped example")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its latest checkpoint")
    p.add_argument("--out", default=None, help="run folder (default: out_dir or runs/<name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over even if the run folder already holds checkpoints")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("--examples", action="store_true",
                   help="list the example configs shipped with zootune and exit")
    p.set_defaults(func=run)
    from zootune.commands._overrides import make_intermixed

    make_intermixed(p)


def default_out_dir(cfg, config_path: str) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    name = cfg.name or Path(config_path).stem
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run(args: argparse.Namespace) -> int:
    from zootune.config import ConfigError, example_configs, load_config, resolve_config_path

    if args.examples:
        for name, path in example_configs().items():
            print(f"{name:24s} {path}")
        return 0
    if args.config is None:
        raise ConfigError("name a config file (or a shipped example: zootune tune --examples)")
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    out = Path(args.out) if args.out else default_out_dir(cfg, args.config)
    rank = int(os.environ.get("RANK", "0"))
    ckpts = out / "checkpoints"
    if not args.resume and (ckpts / "latest.json").exists():
        if not args.overwrite:
            raise ConfigError(f"{str(out)!r} already holds a run: pass --resume to continue it, "
                              "--overwrite to start over, or --out DIR for a new folder")
        if rank == 0:
            import shutil

            shutil.rmtree(ckpts, ignore_errors=True)
            for f in ("best.safetensors", "model.safetensors", "result.json"):
                (out / f).unlink(missing_ok=True)
    if args.resume and rank == 0 and (out / "config.yaml").is_file():
        _note_config_changes(out / "config.yaml", cfg)
    from zootune.train import run_config

    def announce(stage: str, run_) -> None:
        if rank == 0:
            print(f"zootune tune: {run_.method.describe()}"
                  + (f" [stage {stage}]" if stage != "main" else "")
                  + f", {len(run_.zoo.names)} source(s) ({', '.join(run_.zoo.names)}), task "
                  f"{run_.task.name}, data {run_.cfg.data.name} (train {len(run_.data.train)}), "
                  f"{run_.cfg.train.steps} steps -> {out}", flush=True)

    config_dir = resolve_config_path(args.config).resolve().parent
    res = run_config(cfg, out, resume=args.resume, base_dir=config_dir, on_stage=announce)
    if rank != 0:
        return 130 if res.interrupted else 0
    if res.interrupted:
        print(f"interrupted at step {res.steps}; checkpoint {res.checkpoint}. "
              f"Continue with: zootune tune {args.config} --resume"
              + (f" --out {args.out}" if args.out else ""), file=sys.stderr)
        return 130
    from zootune.tasks import build_task

    task = build_task(cfg.task)
    parts = [f"{split} {task.summary_line(m)}" for split, m in res.metrics.items()]
    print(f"done in {res.wall_time_s:.1f} s: " + "; ".join(parts))
    print(f"report: {out / 'report.md'}")
    return 0


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _note_config_changes(saved_path: Path, cfg) -> None:
    """On --resume, say which settings differ from the run being continued."""
    import yaml

    try:
        saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    except yaml.YAMLError:
        return
    now = _flatten(cfg.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                     and k not in ("task.num_classes",))
    if changed:
        print("note: resuming with settings that differ from the run's config.yaml: "
              + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:8]),
              file=sys.stderr)
