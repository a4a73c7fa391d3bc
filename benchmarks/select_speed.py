"""Speed of the transferability scores (issue 6, point 6).

    python benchmarks/select_speed.py            # both parts, resumable
    python benchmarks/select_speed.py --force    # re-measure everything
    python benchmarks/select_speed.py --quick    # smaller LogME problem (smoke run)
    python benchmarks/select_speed.py --extract-only [--force]   # only part 3 (issue 15, item 3)

Part 1 - LogME at N=10,000, D=2,048, C=100 (float32 features with a class signal): the
library's :func:`zootune.select.logme` (one Gram eigendecomposition, the fixed-point iteration
run on length-r vectors for all classes at once, torch float64) side by side with
:func:`zootune.select.logme_reference` (a straightforward numpy version of the same algorithm:
thin SVD of F, then per class the D-dimensional posterior mean m and the residual F m - y every
iteration), same stopping rule; both values are recorded and must agree.

Part 2 - every score for a 5-model zoo from cached features: five torchvision ResNet-18s
(random weights, different seeds; 512-d penultimate features) on scikit-learn's digits
(50 per class, 3x32x32), features + logits + projected last-conv gradients extracted once into
a disk cache; then the timed part loads the cache and runs all scores (RSA with an MLP probe,
domain similarity against features of a second digits subset standing in for source data).

Part 3 - extraction at forward speed (issue 15, item 3), for two zoos (``--extract-zoos``): three
ResNet-18s on the 500 digits at 3x32x32, and three tiny CNNs (two convs, as in
``tests/test_select_command.py``) on them at 1x16x16. For each, side by side in one process,
interleaved, ``--repeats-extract`` rounds per model: a plain eval forward (``model.eval()``, ``torch.no_grad()``, the same batches of 64 already
stacked in memory), :func:`zootune.select.features.extract` for features only (head stripped),
features + logits, features + logits + projected gradients, the same with the extraction code as
it was before this work (read from git: ``BEFORE_REV``),
and a cache hit (with the model's weights hashed, as ``zootune select`` does, and with a given
``model_key``). Ratios are extraction time / plain forward time summed over the models, from the
best and from the median round.

Results: ``benchmarks/results/select_speed.json`` (after each part; finished parts are skipped
on a re-run) and ``select_speed.md``.
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
JSON_PATH = RESULTS / "select_speed.json"
MD_PATH = RESULTS / "select_speed.md"
CACHE = HERE / "cache" / "select_speed"
SEED = 0


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def part_logme(n: int, d: int, c: int, repeats: int) -> dict:
    from zootune.select import logme, logme_reference

    rng = np.random.default_rng(SEED)
    y = rng.integers(0, c, n)
    f = rng.normal(size=(n, d)).astype(np.float32)
    f[np.arange(n), y % d] += 2.0  # a class signal in one dimension per class
    logme(f[:200, :50], y[:200])  # warm-up (torch kernels, thread pool)
    fast_t, ref_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fast = logme(f, y)
        fast_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = logme_reference(f, y)
        ref_t.append(time.perf_counter() - t0)
    out = {
        "N": n, "D": d, "C": c, "repeats": repeats,
        "fast_seconds": min(fast_t), "reference_seconds": min(ref_t),
        "speedup": min(ref_t) / min(fast_t),
        "fast_value": fast, "reference_value": ref, "abs_diff": abs(fast - ref),
        "load_average_1min": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        ft = torch.as_tensor(f, device="cuda")
        logme(ft[:200, :50], y[:200])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        g = logme(ft, y)
        torch.cuda.synchronize()
        out["cuda_seconds"] = time.perf_counter() - t0
        out["cuda_value"] = g
    return out


def _digits(n_per_class: int, offset: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = np.asarray(d.target)
    idx = np.concatenate([np.flatnonzero(y == k)[offset : offset + n_per_class] for k in range(10)])
    return x[idx], torch.as_tensor(y[idx])


def part_zoo(models: int, per_class: int) -> dict:
    import torchvision

    from zootune.select import SCORE_NAMES, probe_features, score_features
    from zootune.select.features import extract

    target = _digits(per_class, 0)
    source = _digits(per_class, per_class)
    zoo = {}
    for i in range(models):
        torch.manual_seed(SEED + i)
        zoo[f"resnet18_seed{i}"] = torchvision.models.resnet18(num_classes=100)
    extract_s = {}
    t_all = time.perf_counter()
    for name, m in zoo.items():
        t0 = time.perf_counter()
        extract(m, target, gradients=True, cache_dir=CACHE, model_key=name, data_key="target")
        extract(m, source, cache_dir=CACHE, model_key=name, data_key="source")
        extract_s[name] = time.perf_counter() - t0
    first_extract = time.perf_counter() - t_all

    t_total = time.perf_counter()
    t0 = time.perf_counter()
    cached = {n: extract(m, target, gradients=True, cache_dir=CACHE, model_key=n, data_key="target") for n, m in zoo.items()}
    src = {n: extract(m, source, cache_dir=CACHE, model_key=n, data_key="source") for n, m in zoo.items()}
    load_s = time.perf_counter() - t0
    assert all(e.cached for e in cached.values())
    t0 = time.perf_counter()
    probe = probe_features(target[0], target[1], seed=SEED)
    probe_s = time.perf_counter() - t0
    per_score = {s: 0.0 for s in SCORE_NAMES}
    values = {}
    for name, ex in cached.items():
        res = score_features(ex.arrays(), ex.labels, probe=probe, source_features=src[name].features,
                             source_labels=src[name].labels, seed=SEED)
        values[name] = res["scores"]
        for s, sec in res["seconds"].items():
            per_score[s] += sec
    total = time.perf_counter() - t_total
    ex0 = next(iter(cached.values()))
    return {
        "models": models, "samples": int(ex0.features.shape[0]), "feature_dim": int(ex0.features.shape[1]),
        "gradient_dim": int(ex0.gradients.shape[1]), "logit_dim": int(ex0.logits.shape[1]),
        "first_extraction_seconds": first_extract, "cache_load_seconds": load_s, "probe_seconds": probe_s,
        "score_seconds_all_models": per_score, "total_from_cache_seconds": total, "values": values,
    }


#: the last commit with the extraction code before the fast path (issue 15, item 3)
BEFORE_REV = "3da5f7a"


def _load_before():
    """The extraction module as it was at ``BEFORE_REV``, read from git (for the side-by-side
    row); ``None`` outside a git checkout that has that commit."""
    import importlib.util
    import subprocess
    import tempfile

    try:
        src = subprocess.run(["git", "show", f"{BEFORE_REV}:src/zootune/select/features.py"],
                             cwd=HERE, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="zootune_features_before_")) / "_features_before.py"
    path.write_text(src)  # a scratch copy to import, not an output of the benchmark
    spec = importlib.util.spec_from_file_location("zootune.select._features_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while it executes
    spec.loader.exec_module(mod)
    return mod


def _tiny_cnn(seed: int) -> torch.nn.Module:
    """The kind of tiny model ``zootune select`` was first tried with (tests/test_select_command.py)."""
    nn = torch.nn
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 12))


def part_extract(models: int, per_class: int, repeats: int, kind: str = "resnet18") -> dict:
    import copy
    import shutil
    import tempfile

    import torchvision

    from zootune.select.features import extract

    before = _load_before()
    x, y = _digits(per_class, 0)
    if kind == "tiny":  # 1x16x16 digits, as in the note
        x = torch.nn.functional.interpolate(x[:, :1], size=16, mode="bilinear", align_corners=False)
    zoo = []
    for i in range(models):
        torch.manual_seed(SEED + i)
        m = (_tiny_cnn(SEED + i) if kind == "tiny" else torchvision.models.resnet18(num_classes=100)).eval()
        headless = copy.deepcopy(m)
        if kind == "tiny":
            headless[-1] = torch.nn.Identity()
        else:
            headless.fc = torch.nn.Identity()
        zoo.append((m, headless))
    batches = [x[s : s + 64] for s in range(0, len(x), 64)]

    def plain(m, _h):
        with torch.no_grad():
            for b in batches:
                m(b)

    cache = Path(tempfile.mkdtemp(prefix="select_speed_cache_"))
    variants = {
        "plain eval forward": plain,
        "features only (head stripped)": lambda m, h: extract(h, (x, y)),
        "features + logits": lambda m, h: extract(m, (x, y)),
        "features + logits + projected gradients": lambda m, h: extract(m, (x, y), gradients=True),
    }
    if before is not None:
        variants["features + logits + gradients, before (HEAD code)"] = (
            lambda m, h: before.extract(m, (x, y), gradients=True))
    for m, h in zoo:  # fill the cache (and warm up every kernel once)
        for f in variants.values():
            f(m, h)
        extract(m, (x, y), gradients=True, cache_dir=cache)
        extract(m, (x, y), gradients=True, cache_dir=cache, model_key=f"m{id(m)}")
    variants["cache hit (weights hashed)"] = lambda m, h: extract(m, (x, y), gradients=True, cache_dir=cache)
    variants["cache hit (model_key given)"] = (
        lambda m, h: extract(m, (x, y), gradients=True, cache_dir=cache, model_key=f"m{id(m)}"))
    runs = {k: [[] for _ in range(models)] for k in variants}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for j, (m, h) in enumerate(zoo):
            for k, f in variants.items():  # interleaved: every variant once per model per round
                t0 = time.perf_counter()
                f(m, h)
                runs[k][j].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    best = {k: [min(r) for r in v] for k, v in runs.items()}
    median = {k: [float(np.median(r)) for r in v] for k, v in runs.items()}
    shutil.rmtree(cache, ignore_errors=True)
    # exactness on the first model: features/logits identical to a plain forward
    m, h = zoo[0]
    ex = extract(m, (x, y), gradients=True)
    with torch.no_grad():
        logits = torch.cat([m(b) for b in batches]).numpy()
    same = {"logits_identical_to_plain_forward": bool(np.array_equal(ex.logits, logits))}
    if before is not None:
        old = before.extract(m, (x, y), gradients=True)
        same["features_identical_to_before"] = bool(np.array_equal(ex.features, old.features))
        same["gradients_max_rel_diff_to_before"] = float(
            np.abs(ex.gradients - old.gradients).max() / np.abs(old.gradients).max())
    seconds = {k: sum(v) for k, v in best.items()}
    med = {k: sum(v) for k, v in median.items()}
    base, mbase = seconds["plain eval forward"], med["plain eval forward"]
    return {
        "kind": kind, "models": models, "samples": len(x), "input": list(x.shape[1:]), "batch_size": 64,
        "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "seconds_all_models": seconds, "ratio_to_plain": {k: v / base for k, v in seconds.items()},
        "median_seconds_all_models": med, "median_ratio_to_plain": {k: v / mbase for k, v in med.items()},
        "load_average_1min": load, "checks": same,
    }


def write_md(res: dict) -> None:
    lines = ["# Transferability score speed", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']['processor']}, "
             f"{res['machine']['cpu_count']} CPUs (torch threads {res['machine']['torch_threads']}), "
             f"torch {res['machine']['torch']}, numpy {res['machine']['numpy']}, "
             f"GPU: {res['machine']['cuda'] or 'none'}. Seed {SEED}.", ""]
    lm = res.get("logme")
    if lm:
        lines += ["## LogME, N={N}, D={D}, C={C}".format(**lm), "",
                  "| implementation | seconds (best of {}) | LogME |".format(lm["repeats"]), "|---|---:|---:|",
                  f"| zootune.select.logme (torch float64, CPU) | {lm['fast_seconds']:.2f} | {lm['fast_value']:.6f} |",
                  f"| straightforward numpy (logme_reference) | {lm['reference_seconds']:.2f} | {lm['reference_value']:.6f} |"]
        if "cuda_seconds" in lm:
            lines.append(f"| zootune.select.logme (CUDA) | {lm['cuda_seconds']:.2f} | {lm['cuda_value']:.6f} |")
        lines += ["", f"Speed-up of zootune over the straightforward version: **{lm['speedup']:.1f}x** "
                  f"(values differ by {lm['abs_diff']:.1e}). The two ran back to back on a shared 2-core VM "
                  f"(1-min load average about {lm.get('load_average_1min', float('nan')):.1f} while measuring), "
                  "so absolute seconds are inflated; the ratio is the number to read.", ""]
    z = res.get("zoo")
    if z:
        lines += [f"## All scores for a {z['models']}-model zoo from cached features", "",
                  f"{z['models']} ResNet-18s (random weights), digits at 3x32x32, {z['samples']} target samples "
                  f"(50/class), {z['feature_dim']}-d features, {z['logit_dim']} source logits, "
                  f"{z['gradient_dim']}-d projected gradients; domain similarity against {z['samples']} "
                  "held-apart digits as 'source'.", "",
                  "| step | seconds |", "|---|---:|",
                  f"| first extraction (not cached, all models) | {z['first_extraction_seconds']:.2f} |",
                  f"| load features from cache (all models) | {z['cache_load_seconds']:.3f} |",
                  f"| RSA probe MLP (once) | {z['probe_seconds']:.2f} |"]
        for s, sec in z["score_seconds_all_models"].items():
            lines.append(f"| {s} (all models) | {sec:.3f} |")
        lines += [f"| **total from cache** | **{z['total_from_cache_seconds']:.2f}** |", ""]
    for e in (res.get("extract") or {}).values():
        la = e["load_average_1min"]
        what = ("ResNet-18s (random weights)" if e["kind"] == "resnet18" else
                "tiny CNNs (conv 1-8-16, pool, linear; as in tests/test_select_command.py)")
        lines += [f"## Extraction vs a plain eval forward: {e['kind']} (issue 15, item 3)", "",
                  f"Command: `{e.get('command', res['command'])}`  ",
                  f"{e['models']} {what}, {e['samples']} digits at "
                  f"{'x'.join(map(str, e['input']))}, batch {e['batch_size']}, torch threads "
                  f"{e['torch_threads']}; one process, every variant once per model per round "
                  f"(interleaved), {e['repeats']} rounds after a warm-up; best and median of the rounds per "
                  f"model, summed over the models. 1-min load average {min(la):.1f}-{max(la):.1f} while "
                  "measuring (shared 2-core VM).", "",
                  "| what | best: seconds (all models) | best / plain | median / plain |",
                  "|---|---:|---:|---:|"]
        for k, sec in e["seconds_all_models"].items():
            cell = f"{sec * 1000:.1f} ms" if sec < 1 else f"{sec:.2f} s"
            lines.append(f"| {k} | {cell} | {e['ratio_to_plain'][k]:.2f}x | {e['median_ratio_to_plain'][k]:.2f}x |")
        lines += ["", "Checks (first model): " + ", ".join(f"{k} = {v}" for k, v in e["checks"].items()), ""]
    MD_PATH.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quick", action="store_true", help="N=2000, D=512, C=20 for a smoke run")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--extract-only", action="store_true", help="only part 3 (extraction vs plain forward)")
    ap.add_argument("--repeats-extract", type=int, default=5, help="rounds of part 3 (best of)")
    ap.add_argument("--extract-models", type=int, default=3)
    ap.add_argument("--extract-zoos", default="tiny,resnet18", help="part 3 zoos: tiny, resnet18")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    res = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() and not args.force else {}
    res["machine"] = machine()
    if not args.extract_only:
        res["command"] = "python benchmarks/select_speed.py" + (" --quick" if args.quick else "")
    shape = (2000, 512, 20) if args.quick else (10000, 2048, 100)
    if not isinstance(res.get("extract"), dict) or "seconds_all_models" in res["extract"]:
        res["extract"] = {}  # older single-zoo layout
    for kind in args.extract_zoos.split(","):
        if kind in res["extract"] and not (args.force or args.extract_only):
            continue
        print(f"extraction vs plain forward: {kind} ...", flush=True)
        res["extract"][kind] = part_extract(args.extract_models, 50, args.repeats_extract, kind)
        res["extract"][kind]["command"] = " ".join(["python benchmarks/select_speed.py", *sys.argv[1:]])
        JSON_PATH.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["extract"][kind]["ratio_to_plain"], indent=2), flush=True)
    if args.extract_only:
        write_md(res)
        print(MD_PATH.read_text())
        return 0
    if "logme" not in res or tuple(res["logme"][k] for k in ("N", "D", "C")) != shape:
        print(f"LogME N={shape[0]} D={shape[1]} C={shape[2]} ...", flush=True)
        res["logme"] = part_logme(*shape, repeats=args.repeats)
        JSON_PATH.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["logme"], indent=2), flush=True)
    if "zoo" not in res:
        print("5-model zoo ...", flush=True)
        res["zoo"] = part_zoo(5, 50)
        JSON_PATH.write_text(json.dumps(res, indent=2))
    write_md(res)
    print(MD_PATH.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
