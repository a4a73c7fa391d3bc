"""Re-create the demo's mini zoo: ``python -m zootune.demo.build_zoo [--out DIR] [--seed S]``.

Built the way the paper's zoo was (four of its five ResNet-50s start from the same ImageNet
weights, so their channels correspond and their weights can be aggregated):

1. ``base``: a :class:`~zootune.demo.model.MiniCNN` trained from a random start on a *broad*
   source — glyphs of every script (Latin, Greek, Cyrillic, digits, symbols; look-alike
   characters merged), like ImageNet for the paper's zoo;
2. ``latin``, ``greek``, ``cyrillic``, ``numerals`` (digits + symbols): each starts from
   ``base``, gets a fresh head for its own domain and is fine-tuned on that domain alone, as
   Mask R-CNN, DeepLabV3 and Keypoint R-CNN were fine-tuned from the ImageNet model.

How far the specialists move from the base matters (``benchmarks/results/demo.md``): a first
zoo fine-tuned 500 steps at lr 1e-3 (relative weight change 5-48% per layer) left every source
transferring alike and no aggregation beat the best single source; fine-tuned 2000 steps at
lr 3e-3 (20-100%) the specialists differ enough that aggregating them wins (chosen on
validation).

None of them sees the ten held-apart Greek letters of the demo's target. Every model is trained
by the shared trainer (:func:`zootune.train.fit`), seeded and deterministic on CPU. Weights are
written as float16 safetensors (about 0.28 MB each) with ``zoo.json`` recording the recipe, the
seeds, the source accuracies (measured after the float16 rounding), the command, the versions and
the wall time.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zootune.demo.data import ZOO_DOMAINS, glyph_splits
from zootune.demo.model import RESOLUTION, MiniCNN
from zootune.demo.zoo import MANIFEST, WEIGHTS_DIR, load_member

#: Intra-op threads. Convolutions this small gain little from more, and on a shared machine
#: several spinning OpenMP threads per process cost far more than they give.
THREADS = 1

#: The recipe (Adam, cosine schedule with warm-up; batch 128 for the base, 64 for specialists).
RECIPE: dict[str, dict[str, Any]] = {
    "base": {"steps": 2000, "batch_size": 128, "lr": 2e-3, "n_train": 150, "warmup": 100},
    "specialist": {"steps": 2000, "batch_size": 64, "lr": 3e-3, "n_train": 200, "warmup": 25},
}


def _config(steps: int, batch_size: int, lr: float, warmup: int, seed: int):
    from zootune.config import build_config

    return build_config({
        "recipe": "adam",
        "method": "finetune",
        "optim": {"name": "adam", "lr": lr, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": warmup},
        "train": {"steps": steps, "batch_size": batch_size, "eval_every": 0, "log_every": 50,
                  "checkpoint_every": 0, "seed": seed, "select": "last", "tensorboard": False,
                  "progress": sys.stderr.isatty(), "threads": THREADS},
    })


def _train(model: MiniCNN, domain: str, recipe: dict[str, Any], seed: int, new_head: bool):
    """Fit ``model`` on glyph domain ``domain`` with the shared trainer; returns (model, splits)."""
    from zootune.tasks import build_task
    from zootune.train import fit

    data = glyph_splits(domain, recipe["n_train"], seed=seed)
    task = build_task({"name": "classification", "head": "head"}, data=data, seed=seed)
    if new_head:
        model = task.prepare_zoo([model])[0]
    else:
        task.head_name = "head"
    cfg = _config(recipe["steps"], recipe["batch_size"], recipe["lr"], recipe["warmup"], seed)
    res = fit(model, task, data, cfg, out_dir=None, report=False)
    if res.interrupted:  # Ctrl-C / SIGTERM: stop the whole build, write nothing more
        raise KeyboardInterrupt
    return res.model, data


def _accuracy(model: torch.nn.Module, dataset) -> float:
    from zootune.tasks import build_task
    from zootune.train import evaluate

    return float(evaluate(model, build_task("classification"), dataset)["accuracy"])


def _save(model: MiniCNN, path: Path) -> str:
    from safetensors.torch import save_file

    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    from zootune.atomic import atomic_write

    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "dtype": "float16"}))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path = WEIGHTS_DIR, seed: int = 0, recipe: dict[str, dict[str, Any]] = RECIPE,
          log=print, reuse_base: Path | None = None,
          command: str = "python -m zootune.demo.build_zoo") -> dict[str, Any]:
    """Train the zoo and write ``out/<name>.safetensors`` + ``out/zoo.json``; returns the manifest.

    ``reuse_base``: a folder holding a built zoo whose ``base`` member is reused (copied) instead
    of trained again — for variants of the specialists (e.g. fine-tuned longer).
    """
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    members: list[dict[str, Any]] = []
    base_model: MiniCNN | None = None
    for k, (name, domain) in enumerate(ZOO_DOMAINS.items()):
        t = time.time()
        s = seed * 1000 + k
        if name == "base" and reuse_base is not None:
            from zootune.demo.data import glyph_splits as _gs
            from zootune.demo.zoo import read_manifest

            old = {e["name"]: e for e in read_manifest(reuse_base)["members"]}["base"]
            model = load_member(old, reuse_base)
            data = _gs(domain, 1, seed=s)
            base_model = model
            rec = {k: old[k] for k in recipe["base"] if k in old}
            init = "random"
        elif name == "base":
            rec = recipe["base"]
            from zootune.demo.data import domain_chars

            torch.manual_seed(s)
            model, data = _train(MiniCNN(len(domain_chars(domain))), domain, rec, s, new_head=False)
            base_model = model
            init = "random"
        else:
            rec = recipe["specialist"]
            assert base_model is not None
            model, data = _train(copy.deepcopy(base_model), domain, rec, s, new_head=True)
            init = "base"
        model = model.cpu().eval()
        entry = {"name": name, "file": f"{name}.safetensors", "domain": domain,
                 "classes": "".join(data.classes), "num_classes": data.num_classes,
                 "width": model.width, "init": init, "seed": s, **rec}
        entry["sha256"] = _save(model, out / entry["file"])
        stored = load_member(entry, out)  # accuracies of the weights as shipped (float16)
        entry["source_accuracy"] = {"val": _accuracy(stored, data.val), "test": _accuracy(stored, data.test)}
        entry["wall_time_s"] = round(time.time() - t, 1)
        members.append(entry)
        log(f"{name:9s} {domain:36s} {data.num_classes:4d} classes  "
            f"test acc {entry['source_accuracy']['test']:.3f}  ({entry['wall_time_s']:.0f}s)")
    import numpy
    import safetensors

    manifest = {
        "architecture": "zootune.demo.model:MiniCNN",
        "resolution": RESOLUTION,
        "dtype": "float16",
        "seed": seed,
        "members": members,
        "recipe": recipe,
        "command": command,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__, "safetensors": safetensors.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "threads": torch.get_num_threads()},
        "wall_time_s": round(time.time() - t0, 1),
    }
    from zootune.atomic import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zootune.demo.build_zoo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny budget (a smoke test, not the shipped zoo)")
    p.add_argument("--reuse-base", type=Path, default=None, metavar="DIR",
                   help="reuse the base model of the zoo in DIR (train only the specialists)")
    p.add_argument("--specialist-steps", type=int, default=None)
    p.add_argument("--specialist-lr", type=float, default=None)
    args = p.parse_args(argv)
    recipe = {k: dict(v) for k, v in RECIPE.items()}
    if args.specialist_steps:
        recipe["specialist"]["steps"] = args.specialist_steps
    if args.specialist_lr:
        recipe["specialist"]["lr"] = args.specialist_lr
    if args.quick:
        recipe = {k: {**v, "steps": 5, "n_train": 2, "warmup": 0} for k, v in RECIPE.items()}
    given = list(argv if argv is not None else sys.argv[1:])
    m = build(args.out, args.seed, recipe, reuse_base=args.reuse_base,
              command=" ".join(["python -m zootune.demo.build_zoo"] + given))
    print(f"wrote {len(m['members'])} models to {args.out} in {m['wall_time_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
