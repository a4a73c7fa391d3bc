"""Validate the transferability scores against fine-tuned accuracy (issue 6, point 4).

    python benchmarks/selection.py                       # demo mini zoo, default targets
    python benchmarks/selection.py --zoo SPEC ... --targets digits:10 digits:50 image_folder=DIR:20
    python benchmarks/selection.py --smoke               # 2 random models, tiny budget (plumbing check)

For every target task and every zoo member: fine-tune that member alone (``method:
finetune``, the trainer's Adam preset, the same budget and seed for all, model chosen on
validation, accuracy reported on test) - the brute-force ground truth - and compute every
score on the task's training split (at most 50 samples per class, test data never seen).
Reported per score: Spearman and weighted Kendall tau against test accuracy, trials to reach
the best model, the best accuracy among the top-3 choices (against random selection's
exact expectation), and score time against brute-force fine-tuning time.

Resumable: each fine-tuning run and each task's scores are stored in
``benchmarks/results/selection.json`` as soon as they finish and skipped on a re-run.
Writes ``benchmarks/results/selection.md``.

Zoo: ``--zoo`` takes zoo specs (``zootune.zoo``); by default the demo mini zoo's shipped
weights (``src/zootune/demo/weights/*.safetensors``, loaded as ``file:PATH
arch=<demo arch>``) are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEMO_WEIGHTS = HERE.parent / "src" / "zootune" / "demo" / "weights"
SCORES = ("logme", "leep", "nce", "hscore", "hscore_shrinkage", "lfc", "lgc", "rsa")


def parse_target(text: str) -> dict:
    """``NAME[:LABELS_PER_CLASS]`` or ``image_folder=DIR[:LABELS_PER_CLASS]``."""
    name, _, lpc = text.partition(":")
    data: dict = {}
    if "=" in name:
        name, root = name.split("=", 1)
        data["root"] = root
    data["name"] = name
    if lpc:
        data["labels_per_class"] = int(lpc)
    return data


def default_zoo() -> list[str]:
    files = sorted(DEMO_WEIGHTS.glob("*.safetensors"))
    if not files:
        sys.exit(f"no demo zoo weights in {DEMO_WEIGHTS}; build them (python -m zootune.demo.build_zoo) "
                 "or pass --zoo SPEC ...")
    arch = os.environ.get("ZOOTUNE_DEMO_ARCH", "zootune.demo.model:MiniCNN")
    return [f"file:{f} arch={arch} name={f.stem}" for f in files]


def finetune(specs: list[str], source: int, data: dict, steps: int, seed: int) -> dict:
    from zootune.config import build_config
    from zootune.train import build_run, fit

    cfg = build_config({
        "preset": "adam", "method": "finetune", "source": source,
        "zoo": {"spec": specs}, "data": {**data, "seed": seed},
        "train": {"steps": steps, "batch_size": 32, "seed": seed, "select": "best",
                  "eval_every": max(steps // 5, 1), "progress": False, "tensorboard": False,
                  "checkpoint_every": 0, "device": "auto"},
    })
    t0 = time.perf_counter()
    run = build_run(cfg)
    res = fit(run.model, run.task, run.data, cfg, out_dir=None, report=False)
    return {"test_accuracy": float(res.metrics["test"]["accuracy"]),
            "val_accuracy": float(res.metrics.get("val", {}).get("accuracy", float("nan"))),
            "seconds": time.perf_counter() - t0, "steps": res.steps}


def scores_for(specs: list[str], data: dict, seed: int, max_per_class: int) -> dict:
    from zootune.config import DataConfig
    from zootune.data import build_data
    from zootune.select import probe_features, score_features
    from zootune.select.features import cap_per_class, dataset_labels, extract
    from zootune.train import load_zoo_from_config
    from zootune.config import ZooConfig

    zoo = load_zoo_from_config(ZooConfig(spec=specs), None)
    splits = build_data(DataConfig(**{**data, "seed": seed, "augment": False}), zoo.preprocessing)
    train = splits.train
    idx = cap_per_class(dataset_labels(train), max_per_class, seed=seed)
    out: dict = {"scores": {}, "seconds": {}}
    t0 = time.perf_counter()
    probe = None
    for i, model in enumerate(zoo.models if hasattr(zoo, "models") else zoo):
        name = zoo.names[i]
        t1 = time.perf_counter()
        ex = extract(model, train, indices=idx, gradients=True, seed=seed)
        if probe is None:
            t_probe = time.perf_counter()
            inputs = torch.stack([torch.as_tensor(train[int(j)][0]) for j in idx])
            probe = probe_features(inputs, ex.labels, seed=seed)
            out["probe_seconds"] = time.perf_counter() - t_probe
        res = score_features(ex.arrays(), ex.labels, scores=SCORES, probe=probe, seed=seed)
        out["scores"][name] = res["scores"]
        out["seconds"][name] = time.perf_counter() - t1
    out["total_seconds"] = time.perf_counter() - t0
    return out


def analyse(names: list[str], acc: dict, sc: dict) -> dict:
    from zootune.select.ranking import (random_top_k_accuracy, random_trials_to_best, spearman,
                                        top_k_accuracy, trials_to_best, weighted_kendall)

    a = np.array([acc[n] for n in names])
    rows = {}
    for s in SCORES:
        if not all(s in sc[n] for n in names):
            continue
        v = np.array([sc[n][s] for n in names])
        rows[s] = {"spearman": spearman(v, a), "weighted_tau": weighted_kendall(v, a),
                   "trials_to_best": trials_to_best(v, a), "top3_accuracy": top_k_accuracy(v, a, 3),
                   "top1_accuracy": top_k_accuracy(v, a, 1)}
    rows["random"] = {"spearman": 0.0, "weighted_tau": 0.0, "trials_to_best": random_trials_to_best(a),
                      "top3_accuracy": random_top_k_accuracy(a, 3), "top1_accuracy": random_top_k_accuracy(a, 1)}
    return rows


def write_md(res: dict, md_path: Path) -> None:
    lines = ["# Transferability scores against fine-tuned accuracy", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']}. Seed {res['seed']}; "
             f"fine-tuning: Adam preset, {res['steps']} steps, batch 32, best-on-val weights, test accuracy.", "",
             "Zoo: " + ", ".join(f"`{s}`" for s in res["zoo"]), ""]
    for tkey, task in res["tasks"].items():
        acc = {n: r["test_accuracy"] for n, r in task.get("finetune", {}).items()}
        if "scores" not in task or len(acc) < len(res["names"]):
            lines += [f"## {tkey}: incomplete ({len(acc)}/{len(res['names'])} fine-tuned)", ""]
            continue
        rows = analyse(res["names"], acc, task["scores"]["scores"])
        ft_time = sum(r["seconds"] for r in task["finetune"].values())
        lines += [f"## {tkey}", "",
                  "Fine-tuned test accuracy: " + ", ".join(f"{n} {acc[n]:.3f}" for n in res["names"]), "",
                  "| score | Spearman | weighted tau | trials to best | best of top-3 | top-1 |", "|---|---:|---:|---:|---:|---:|"]
        for s, r in rows.items():
            lines.append(f"| {s} | {r['spearman']:.2f} | {r['weighted_tau']:.2f} | {r['trials_to_best']:.2f} | "
                         f"{r['top3_accuracy']:.3f} | {r['top1_accuracy']:.3f} |")
        lines += ["", f"Time: all scores for the zoo {task['scores']['total_seconds']:.1f} s (extraction included) "
                  f"vs brute-force fine-tuning {ft_time:.1f} s.", ""]
    md_path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", nargs="+", default=None)
    ap.add_argument("--targets", nargs="+", default=["digits:5", "digits:20", "digits"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-per-class", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=None, help="override the zoo's input size")
    ap.add_argument("--results", default=str(RESULTS / "selection.json"))
    args = ap.parse_args()
    specs = args.zoo or default_zoo()
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(path.read_text()) if path.exists() else {}
    if res.get("zoo") not in (None, specs) or res.get("steps") not in (None, args.steps):
        sys.exit(f"{path} holds results for another zoo/budget; move it away or pass --results")
    from zootune.zoo.load import expand_specs, unique_names

    parsed, _ = expand_specs(specs)
    res.update({"zoo": specs, "steps": args.steps, "seed": args.seed, "names": unique_names([p.label for p in parsed]),
                "command": "python benchmarks/selection.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"})
    res.setdefault("tasks", {})

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(path)
        write_md(res, path.with_suffix(".md"))

    for target in args.targets:
        data = parse_target(target)
        if args.image_size:
            data["image_size"] = args.image_size
        task = res["tasks"].setdefault(target, {"data": data, "finetune": {}})
        if "scores" not in task:
            print(f"[{target}] scores ...", flush=True)
            task["scores"] = scores_for(specs, data, args.seed, args.max_per_class)
            save()
        for i, name in enumerate(res["names"]):
            if name in task["finetune"]:
                continue
            print(f"[{target}] fine-tune {name} ...", flush=True)
            task["finetune"][name] = finetune(specs, i, data, args.steps, args.seed)
            print(f"  test accuracy {task['finetune'][name]['test_accuracy']:.4f}", flush=True)
            save()
    save()
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
