"""Calibrate the "independently trained" warning of :mod:`zootune.zoo.relatedness`.

    python benchmarks/zoo_relatedness.py           # all cases (about 2-4 minutes on 2 cores)
    python benchmarks/zoo_relatedness.py --force   # recompute finished cases

Real cases built offline, each a pair of networks of one architecture; for each pair the
per-layer cosine similarity of the flattened weights (layers with >= 2 dims, head excluded),
summarised by the median over layers (what the warning uses) and the minimum:

* small CNN (3 convs, scikit-learn digits 8x8): two random inits; two nets trained from
  independent random inits on the same task; a trained net and a briefly fine-tuned copy
  (new head, another task); a trained net and a long, high-learning-rate fine-tune with weight
  decay; two siblings fine-tuned from one base on different tasks (the shape of the paper's
  zoo);
* torchvision ResNet-18 (digits upsampled to 32x32): two random inits; a random init and a
  briefly fine-tuned copy.

Results: ``benchmarks/results/zoo_relatedness.json`` (after each case; finished cases are
skipped on a re-run) and ``zoo_relatedness.md``. Seeds fixed (see ``SEED``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from zootune.zoo.relatedness import RELATED_THRESHOLD, relatedness

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
JSON_PATH = RESULTS / "zoo_relatedness.json"
MD_PATH = RESULTS / "zoo_relatedness.md"
SEED = 0


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def tasks(x, y):
    """Three label sets on the same images: digit, digit mod 3, (rotated image) digit >= 5."""
    return {
        "digit": (x, y, 10),
        "mod3": (x, y % 3, 3),
        "rot_ge5": (torch.rot90(x, 1, (2, 3)), (y >= 5).long(), 2),
    }


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def train(model, data, steps, lr, wd=0.0, seed=0, batch=64):
    x, y, _ = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return acc


def new_head(model, classes):
    m = copy.deepcopy(model)
    m.fc = nn.Linear(m.fc.in_features, classes)
    return m


def summarise(a, b, names=("a", "b")):
    rel = relatedness([a, b], list(names), exclude_prefixes=["fc"])
    per_layer = rel.sims[:, 0, 1]
    return {
        "median": float(np.median(per_layer)),
        "min": float(per_layer.min()),
        "max": float(per_layer.max()),
        "layers": len(per_layer),
        "per_layer": {k: round(float(v), 4) for k, v in zip(rel.layers, per_layer)},
    }


def cnn_cases():
    x, y = digits()
    t = tasks(x, y)
    torch.manual_seed(SEED)
    r0 = SmallCNN()
    torch.manual_seed(SEED + 1)
    r1 = SmallCNN()
    out = {"cnn: two random inits": (summarise(r0, r1), {})}
    a = copy.deepcopy(r0)
    acc_a = train(a, t["digit"], 600, 0.05, seed=1)
    b = copy.deepcopy(r1)
    acc_b = train(b, t["digit"], 600, 0.05, seed=2)
    out["cnn: trained from independent inits"] = (summarise(a, b), {"acc": [acc_a, acc_b]})
    brief = new_head(a, 3)
    acc = train(brief, t["mod3"], 100, 0.01, seed=3)
    out["cnn: trained vs brief fine-tune (100 steps, lr 0.01)"] = (summarise(a, brief), {"acc": acc})
    long = new_head(a, 2)
    acc = train(long, t["rot_ge5"], 2000, 0.05, wd=5e-4, seed=4)
    out["cnn: trained vs long fine-tune (2000 steps, lr 0.05, wd)"] = (summarise(a, long), {"acc": acc})
    sib = new_head(a, 3)
    acc = train(sib, t["mod3"], 2000, 0.05, wd=5e-4, seed=5)
    out["cnn: siblings fine-tuned from one base"] = (summarise(long, sib), {"acc": acc})
    return out


def resnet_cases():
    import torchvision

    x, y = digits()
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    torch.manual_seed(SEED)
    r0 = torchvision.models.resnet18(num_classes=10)
    torch.manual_seed(SEED + 1)
    r1 = torchvision.models.resnet18(num_classes=10)
    out = {"resnet18: two random inits": (summarise(r0, r1), {})}
    tuned = copy.deepcopy(r0)
    acc = train(tuned, (x, y, 10), 30, 0.1, seed=6, batch=32)
    out["resnet18: init vs brief fine-tune (30 steps, lr 0.1)"] = (summarise(r0, tuned), {"acc": acc})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids oversubscription on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {} if args.force or not JSON_PATH.exists() else json.loads(JSON_PATH.read_text())
    data.setdefault("cases", {})
    data["machine"] = machine()
    data["seed"] = SEED
    data["command"] = "python benchmarks/zoo_relatedness.py" + (" --force" if args.force else "")
    data["threshold"] = RELATED_THRESHOLD
    for group, fn in (("cnn", cnn_cases), ("resnet18", resnet_cases)):
        if any(k.startswith(group + ":") for k in data["cases"]):
            print(f"skip {group} (done; --force to recompute)")
            continue
        t0 = time.time()
        for name, (summary, extra) in fn().items():
            data["cases"][name] = {**summary, **extra}
            print(f"{name:<58} median {summary['median']:+.3f}  min {summary['min']:+.3f}")
        data.setdefault("seconds", {})[group] = round(time.time() - t0, 1)
        JSON_PATH.write_text(json.dumps(data, indent=2))
    write_md(data)
    return 0


def related(name: str) -> bool:
    return "fine-tune" in name or "siblings" in name


def write_md(data: dict) -> None:
    rows = ["| case | shared init | median layer cos | min layer cos | warns |",
            "|---|---|---:|---:|---|"]
    thr = data["threshold"]
    for name, c in data["cases"].items():
        rows.append(f"| {name} | {'yes' if related(name) else 'no'} | {c['median']:+.3f} | "
                    f"{c['min']:+.3f} | {'yes' if c['median'] < thr else 'no'} |")
    unrel = [c["median"] for n, c in data["cases"].items() if not related(n)]
    rel = [c["median"] for n, c in data["cases"].items() if related(n)]
    text = [
        "# Weight relatedness: calibrating the 'independently trained' warning",
        "",
        f"Command: `{data['command']}`; seed {data['seed']}; machine: "
        f"{data['machine']['platform']}, {data['machine']['cpu_count']} CPUs, torch "
        f"{data['machine']['torch']}.",
        "",
        "Per pair of networks: cosine similarity of each layer's flattened weights (layers with "
        ">= 2 dims, head excluded); the warning fires when the median over layers is below the "
        f"threshold ({thr}).",
        "",
        *rows,
        "",
        f"Unrelated pairs: median at most {max(unrel):+.3f}; related pairs: at least "
        f"{min(rel):+.3f}. The threshold {thr} sits between them with a wide margin on both "
        "sides.",
    ]
    MD_PATH.write_text("\n".join(text) + "\n")
    print(f"wrote {MD_PATH}")


if __name__ == "__main__":
    sys.exit(main())
