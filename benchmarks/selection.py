"""Validate the transferability scores against brute-force fine-tuning (issue 6, point 4).

    python benchmarks/selection.py              # everything (resumes; about 30 min on 1 thread)
    python benchmarks/selection.py --smoke      # tiny budget, separate results file (plumbing)

Ground truth: for every (zoo, target task, source model), the source is fine-tuned alone with
ONE fixed recipe (:data:`RECIPE`: Adam, cosine schedule, same steps, batch and seeds for every
source; the weights are chosen on validation, accuracy is measured on test) through
:func:`zootune.train.fit`. Scores: every score of :mod:`zootune.select`, computed from the
target's *labelled training images only* (the same images fine-tuning gets, at most
``max_per_class`` per class, no augmentation), plus ``mean_rank`` (the consensus ranking that
``zootune select`` prints) and, with source-domain samples of each member, domain similarity.

Reported per score and (zoo, target): Spearman and weighted Kendall tau against test accuracy,
the trials to reach the best model (fine-tuning in score order), the best test accuracy among
the top-3 choices and its gain over three models picked at random, and the scoring time against
the brute-force fine-tuning time. Random selection is given by its exact expected values.

Zoos (MiniCNN, 16x16 grey images, 5 members each):

* ``demo`` - the demo's shipped mini zoo (:mod:`zootune.demo.zoo`): a broad base model and four
  specialists fine-tuned from it (the paper's kind of zoo);
* ``independent`` - five MiniCNNs trained from independent random starts, one per glyph domain
  (built here by :func:`build_independent_zoo`, cached under ``benchmarks/cache/``, loaded
  through zoo specs ``file:... arch=zootune.demo.model:MiniCNN``).

Target tasks (real or rendered offline; registered with :func:`zootune.data.register_dataset`):
scikit-learn's handwritten digits; the demo target (digits + ten held-apart Greek letters); and
glyph tasks rendered by :mod:`zootune.data.glyphs` - Cyrillic letters (a source domain of one
member of each zoo, rendered with other seeds), and Armenian and Georgian letters (scripts no
source model saw).

Resumable: every fine-tuning cell and every (zoo, target) score set is written to
``benchmarks/results/selection.json`` as soon as it finishes, and skipped on a re-run (the file
records the recipe; a different recipe needs another ``--results`` file). The Markdown summary
``selection.md`` is rewritten after each cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / "cache" / "selection"
SCORES = ("logme", "leep", "nce", "hscore", "hscore_shrinkage", "lfc", "lgc", "rsa",
          "domain_similarity")

#: The one fine-tuning recipe every source gets (fixed before any test number was seen).
RECIPE: dict[str, Any] = {
    "steps": 300, "batch_size": 32, "lr": 1e-3, "warmup_steps": 20, "eval_every": 50,
    "select": "best", "seeds": [0, 1, 2], "data_seed": 0, "max_per_class": 50,
    "source_samples_per_class": 10,
}

#: Target tasks: key -> data config (``name`` is a registered data set).
TARGETS: dict[str, dict[str, Any]] = {
    "digits": {"name": "digits", "labels_per_class": 10},
    "demo_target": {"name": "demo_target", "labels_per_class": 10},
    "cyrillic": {"name": "selection_glyphs", "labels_per_class": 5, "options": {"script": "cyrillic"}},
    "armenian": {"name": "selection_glyphs", "labels_per_class": 5, "options": {"script": "armenian"}},
    "georgian": {"name": "selection_glyphs", "labels_per_class": 5, "options": {"script": "georgian"}},
}

#: Scripts of the glyph target tasks (Armenian capitals and Georgian Mkhedruli: 8 fonts each).
GLYPH_SCRIPTS = {
    "armenian": "".join(chr(c) for c in range(0x0531, 0x0557)),
    "georgian": "".join(chr(c) for c in range(0x10D0, 0x10F1)),
}

#: The independently trained zoo: member -> glyph domain (``zootune.demo.data.domain_chars``).
INDEPENDENT_DOMAINS = {"latin": "latin", "greek": "greek", "cyrillic": "cyrillic",
                       "digits": "digits", "symbols": "symbols"}
INDEPENDENT_RECIPE = {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "n_train": 120}
PREPROCESSING = {"input_size": [1, 16, 16], "resize_size": None, "mean": [0.0], "std": [1.0]}


# ---------------------------------------------------------------------------- target data


def _build_glyph_target(cfg_data: Any, preprocessing: Any = None):
    """Glyphs of one script: ``labels_per_class`` training images, 10 val and 30 test per class.

    Rendered with seeds no zoo member was trained with (``910_000 + 10 * seed``), so even the
    Cyrillic task is new images of a familiar domain; Armenian and Georgian are new scripts.
    """
    from zootune.data import DataSplits, TransformedDataset
    from zootune.data.glyphs import SCRIPTS, render_glyphs
    from zootune.demo.data import TensorImages

    script = str(cfg_data.options.get("script", "cyrillic"))
    chars = GLYPH_SCRIPTS.get(script) or SCRIPTS[script]
    size = cfg_data.image_size or 16
    lpc = cfg_data.labels_per_class or 20
    base = 910_000 + 10 * int(cfg_data.seed)
    parts = [render_glyphs(chars, n, resolution=size, seed=base + k) for k, n in enumerate((lpc, 10, 30))]
    mk = lambda g: TransformedDataset(TensorImages(g.x, g.y.numpy()))  # noqa: E731
    return DataSplits(train=mk(parts[0]), val=mk(parts[1]), test=mk(parts[2]), classes=list(chars),
                      info={"name": "selection_glyphs", "script": script, "train": len(parts[0].y),
                            "val": len(parts[1].y), "test": len(parts[2].y), "seed": cfg_data.seed})


def register_targets() -> None:
    import zootune.demo.data  # noqa: F401  (registers demo_target and glyphs)
    from zootune.data import register_dataset

    register_dataset("selection_glyphs", _build_glyph_target)


def target_splits(target: str, preprocessing: Any, *, seed: int, augment: bool):
    from zootune.config import DataConfig
    from zootune.data import build_data

    return build_data(DataConfig(**{**TARGETS[target], "seed": seed, "augment": augment}), preprocessing)


# -------------------------------------------------------------------------------------- zoos


def build_independent_zoo(out: Path, log=print) -> list[Path]:
    """Five MiniCNNs, each trained from its own random start on one glyph domain (cached)."""
    from safetensors.torch import save_file

    from zootune.config import build_config
    from zootune.demo.data import domain_chars, glyph_splits
    from zootune.demo.model import MiniCNN
    from zootune.tasks import build_task
    from zootune.train import fit

    out.mkdir(parents=True, exist_ok=True)
    r = INDEPENDENT_RECIPE
    paths = []
    for k, (name, domain) in enumerate(INDEPENDENT_DOMAINS.items()):
        path = out / f"{name}.safetensors"
        paths.append(path)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        seed = 5000 + k
        data = glyph_splits(domain, r["n_train"], seed=seed)
        torch.manual_seed(seed)
        model = MiniCNN(len(domain_chars(domain)))
        task = build_task({"name": "classification", "head": "head"}, data=data, seed=seed)
        cfg = build_config({
            "recipe": "adam", "method": "finetune",
            "optim": {"name": "adam", "lr": r["lr"]},
            "schedule": {"name": "cosine", "warmup_steps": r["warmup_steps"]},
            "train": {"steps": r["steps"], "batch_size": r["batch_size"], "eval_every": 0,
                      "checkpoint_every": 0, "seed": seed, "select": "last", "tensorboard": False,
                      "progress": False, "threads": torch.get_num_threads()},
        })
        res = fit(model, task, data, cfg, out_dir=None, report=False)
        state = {key: v.detach().half().contiguous() if v.is_floating_point() else v.detach().contiguous()
                 for key, v in res.model.cpu().state_dict().items()}
        from zootune.atomic import atomic_write

        meta = {"format": "pt", "preprocessing": json.dumps(PREPROCESSING), "domain": domain,
                "seed": str(seed), "test_accuracy": f"{res.metrics['test']['accuracy']:.4f}"}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
        log(f"  built independent/{name} ({domain}): source test accuracy "
            f"{res.metrics['test']['accuracy']:.3f} in {time.perf_counter() - t0:.0f}s")
    return paths


def load_zoo(zoo: str, smoke: bool = False, demo_weights: str | None = None):
    """``(zootune.zoo.Zoo, {member: source domain})`` of a benchmark zoo. Every member keeps its
    own source head (LEEP and NCE read it), so the heads differ: the members are loaded one by
    one, not as one aggregatable zoo."""
    from zootune.zoo import Zoo

    if zoo == "demo":
        from zootune.demo.zoo import DEFAULT_ZOO, WEIGHTS_DIR, load_member, read_manifest

        wd = demo_weights or WEIGHTS_DIR
        members = {m["name"]: m for m in read_manifest(wd)["members"]}
        names = list(DEFAULT_ZOO)
        info = {"members": {n: {k: members[n][k] for k in ("domain", "init", "source_accuracy")
                                if k in members[n]} for n in names}}
        z = Zoo([load_member(members[n], wd) for n in names], names, info=info)
        domains = {n: z.info["members"][n]["domain"] for n in z.names}
        return z, domains
    if zoo == "independent":
        from zootune.zoo import load

        paths = build_independent_zoo(CACHE / ("independent_smoke" if smoke else "independent"))
        specs = [f"file:{p} arch=zootune.demo.model:MiniCNN name={p.stem}" for p in paths]
        models = [load(s) for s in specs]
        z = Zoo(models, [p.stem for p in paths], preprocessing=models[0].zootune_preprocessing,
                info={"spec": specs})
        return z, dict(INDEPENDENT_DOMAINS)
    raise SystemExit(f"unknown zoo {zoo!r}")


def zoo_fingerprint(z) -> str:
    h = hashlib.sha256()
    for m in z:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ ground truth


def finetune_cell(z, source: int, target: str, seed: int, recipe: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune zoo member ``source`` alone on ``target`` (the trainer's ``finetune`` method)."""
    from zootune.config import build_config
    from zootune.train import build_run, fit

    cfg = build_config({
        "recipe": "adam", "method": {"name": "finetune", "source": source},
        "data": {**TARGETS[target], "seed": recipe["data_seed"]},
        "optim": {"name": "adam", "lr": recipe["lr"]},
        "schedule": {"name": "cosine", "warmup_steps": recipe["warmup_steps"]},
        "train": {"steps": recipe["steps"], "batch_size": recipe["batch_size"], "seed": seed,
                  "select": recipe["select"], "eval_every": recipe["eval_every"],
                  "checkpoint_every": 0, "tensorboard": False, "progress": False, "device": "cpu",
                  "threads": torch.get_num_threads()},
    })
    t0 = time.perf_counter()
    data = target_splits(target, z.preprocessing, seed=recipe["data_seed"], augment=True)
    run = build_run(cfg, zoo=z, data=data)  # the head seed is train.seed = seed, as before
    res = fit(run.model, run.task, data, cfg, out_dir=None, method=run.method, report=False)
    if res.interrupted:
        raise KeyboardInterrupt
    return {"test_accuracy": float(res.metrics["test"]["accuracy"]),
            "val_accuracy": float(res.metrics["val"]["accuracy"]),
            "best_step": res.best_step, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------ scores


def score_cell(z, domains: dict[str, str], target: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """Every score for every member, from the target's labelled training images only."""
    from zootune.demo.data import domain_chars
    from zootune.data.glyphs import render_glyphs
    from zootune.select import probe_features, score_features
    from zootune.select.features import cap_per_class, dataset_labels, extract

    seed = recipe["data_seed"]
    t_all = time.perf_counter()
    train = target_splits(target, z.preprocessing, seed=seed, augment=False).train
    idx = cap_per_class(dataset_labels(train), recipe["max_per_class"], seed=seed)
    t0 = time.perf_counter()
    inputs = torch.stack([torch.as_tensor(train[int(i)][0]) for i in idx])
    probe = probe_features(inputs, dataset_labels(train)[idx], seed=seed)
    out: dict[str, Any] = {"samples": int(len(idx)), "probe_seconds": time.perf_counter() - t0,
                           "members": {}}
    for name, model in zip(z.names, z):
        t1 = time.perf_counter()
        ex = extract(model, train, indices=idx, gradients=True, seed=seed)
        t_ex = time.perf_counter() - t1
        # domain similarity needs samples of the member's own source domain (rendered here)
        t2 = time.perf_counter()
        chars = domain_chars(domains[name])
        g = render_glyphs(chars, recipe["source_samples_per_class"], seed=920_000 + seed)
        src = extract(model, (g.x, g.y.numpy()), seed=seed)
        t_src = time.perf_counter() - t2
        res = score_features(ex.arrays(), ex.labels, scores=SCORES, probe=probe,
                             source_features=src.features, source_labels=src.labels, seed=seed)
        out["members"][name] = {"scores": res["scores"], "score_seconds": res["seconds"],
                                "skipped": res["skipped"], "extract_seconds": t_ex,
                                "source_extract_seconds": t_src, "notes": ex.notes,
                                "feature_dim": int(ex.features.shape[1])}
    out["total_seconds"] = time.perf_counter() - t_all
    return out


# ---------------------------------------------------------------------------------- analysis


def with_mean_rank(per_model: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds ``mean_rank`` (negated, so larger = better, like every score) over the other scores."""
    from zootune.select import rank_table

    ranks = rank_table({m: {s: v for s, v in sc.items() if s != "domain_similarity"}
                        for m, sc in per_model.items()})
    return {m: {**sc, "mean_rank": -ranks[m]["mean_rank"]} for m, sc in per_model.items()}


def analyse(names: list[str], acc: dict[str, float], per_model: dict[str, dict[str, float]]) -> dict:
    from zootune.select.ranking import (random_top_k_accuracy, random_trials_to_best, spearman,
                                        top_k_accuracy, trials_to_best, weighted_kendall)

    a = np.array([acc[n] for n in names])
    rand3 = random_top_k_accuracy(a, 3)
    rows: dict[str, dict[str, float]] = {}
    for s in (*SCORES, "mean_rank"):
        if not all(s in per_model[n] for n in names):
            continue
        v = np.array([per_model[n][s] for n in names], dtype=float)
        top3 = top_k_accuracy(v, a, 3)
        rows[s] = {"spearman": spearman(v, a), "weighted_tau": weighted_kendall(v, a),
                   "trials_to_best": trials_to_best(v, a), "top1_accuracy": top_k_accuracy(v, a, 1),
                   "top3_accuracy": top3, "top3_gain_vs_random": top3 - rand3,
                   "top3_regret": float(a.max() - top3)}
    rows["random"] = {"spearman": 0.0, "weighted_tau": 0.0, "trials_to_best": random_trials_to_best(a),
                      "top1_accuracy": random_top_k_accuracy(a, 1), "top3_accuracy": rand3,
                      "top3_gain_vs_random": 0.0, "top3_regret": float(a.max() - rand3)}
    return rows


def summarise(res: dict) -> dict:
    """Per (zoo, target) analysis and the mean over every finished (zoo, target)."""
    cells: dict[str, Any] = {}
    for key, cell in res["cells"].items():
        names = cell.get("names", [])
        ft = cell.get("finetune", {})
        seeds = [str(s) for s in res["recipe"]["seeds"]]
        if "scores" not in cell or not names or any(f"{n}/{s}" not in ft for n in names for s in seeds):
            continue
        acc = {n: float(np.mean([ft[f"{n}/{s}"]["test_accuracy"] for s in seeds])) for n in names}
        # seed noise: std over fine-tuning seeds of each source's test accuracy, averaged
        noise = float(np.mean([np.std([ft[f"{n}/{s}"]["test_accuracy"] for s in seeds], ddof=1)
                               for n in names])) if len(seeds) > 1 else float("nan")
        per_model = with_mean_rank({n: cell["scores"]["members"][n]["scores"] for n in names})
        ft_seconds = sum(v["seconds"] for v in ft.values()) / len(seeds)
        sc = cell["scores"]
        score_seconds = sc["probe_seconds"] + sum(
            m["extract_seconds"] + sum(t for s, t in m["score_seconds"].items() if s != "domain_similarity")
            for m in sc["members"].values())
        parts = {"rsa probe": sc["probe_seconds"],
                 "extraction": sum(m["extract_seconds"] for m in sc["members"].values()),
                 "source-domain extraction": sum(m["source_extract_seconds"] for m in sc["members"].values())}
        for m in sc["members"].values():
            for name, t in m["score_seconds"].items():
                parts[name] = parts.get(name, 0.0) + t
        cells[key] = {"accuracy": acc, "seed_std": noise, "spread": max(acc.values()) - min(acc.values()),
                      "scores": per_model, "measures": analyse(names, acc, per_model),
                      "finetune_seconds_per_seed": ft_seconds, "score_seconds": score_seconds,
                      "time_parts": parts}
    informative = {k: c for k, c in cells.items() if c["spread"] > 2 * c["seed_std"]}
    return {"cells": cells, "overall": _overall(cells), "informative": sorted(informative),
            "overall_informative": _overall(informative)}


def _overall(cells: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Means of the measures over ``cells``; top-1 hits; p-value of the mean Spearman."""
    overall: dict[str, dict[str, float]] = {}
    if not cells:
        return overall
    null = _spearman_null(cells)
    keys = sorted({s for c in cells.values() for s in c["measures"]},
                  key=lambda s: ((*SCORES, "mean_rank", "random").index(s)))
    for s in keys:
        ms = [c["measures"][s] for c in cells.values() if s in c["measures"]]
        overall[s] = {m: float(np.nanmean([x[m] for x in ms])) for m in ms[0]}
        overall[s]["cells"] = len(ms)
        if s == "random":  # expected count: a random pick is the best with probability b/m
            overall[s]["top1_is_best"] = float(sum(
                (np.array(list(c["accuracy"].values())) >= max(c["accuracy"].values())).mean()
                for c in cells.values()))
        else:
            overall[s]["top1_is_best"] = int(sum(x["trials_to_best"] == 1 for x in ms))
            if len(ms) == len(cells):
                overall[s]["spearman_p"] = float((null >= overall[s]["spearman"] - 1e-12).mean())
    return overall


#: Reading of the recorded run (written after it; the tables above are regenerated by the script).
NOTES = """## Notes on the recorded run (3 fine-tuning seeds, 10 pairs, 150 fine-tuning runs)

* Small zoos: 5 sources per pair, so one pair's Spearman moves in steps of 0.1 and is mostly
  noise unless the sources really differ; the means over pairs (with their permutation p-values)
  are the numbers to quote, and even they rest on 10 (or 6) pairs of two small zoos.
* Over all pairs every score except domain similarity ranks better than random on average;
  LGC, LogME and shrinkage H-score are the best (mean Spearman 0.56-0.65, best model reached in
  1.6-1.7 trials against 3.0 at random, the best model within their top 3 in every pair for LGC,
  in all but one for the other two). On the 6 pairs where the sources differ beyond fine-tuning
  noise, LogME, shrinkage H-score, LEEP, LGC and the consensus `mean_rank` reach 0.68-0.72 and their top 3 always holds
  the best model. No score wins every pair (as in the seed paper and the LogME paper).
* The demo zoo's members share one base model, and fine-tuning erases most of their
  differences: on digits, digits + Greek, Armenian and Georgian the five fine-tuned accuracies
  lie within about two seed standard deviations of each other, and the scores' rankings there
  are noise (some negative). Only Cyrillic separates them (the Cyrillic specialist, +4.5 pt), and
  most scores put it first. The independently trained zoo differs much more (spreads 4-26 pt,
  except 1.2 pt on digits) and is where the scores are tested in earnest.
* Real handwritten digits: every source ends at 96.7-98.0 %, and the digit-glyph specialist
  (`digits` / `numerals`) is not the best start in either zoo; the scores' rankings there are
  mixed (Spearman from -1.0 to +0.7).
* LEEP and NCE prefer the demo zoo's `base` member, whose source head has 179 classes (the others 39-66): scores
  built on source-label statistics favour large source label spaces.
* Domain similarity (EMD between class means of source-domain and target features, unnormalised,
  gamma 0.01) is no better than random here: the EMD is measured in each model's own feature
  space, whose scale differs between models, and it puts the same member first on almost every
  task (`digits` in the independent zoo, `base` in the demo zoo). It needs source data; it is
  listed for completeness.
* RSA with the default cheap probe (a scikit-learn MLP on pixels) is weak (0.22) and its probe
  takes most of the scoring time; without it, extraction plus all other scores take about 8 s
  for all 10 pairs against about 6 minutes of brute-force fine-tuning (one seed).
"""


def _spearman_null(cells: dict[str, Any], draws: int = 200_000, seed: int = 0) -> np.ndarray:
    """Mean Spearman over the cells when every ranking is random (Monte Carlo over the exact
    per-cell permutation distributions; ties in accuracy kept as they are)."""
    import itertools

    from zootune.select.ranking import spearman

    if not cells:
        return np.zeros(1)
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for c in cells.values():
        a = np.array(list(c["accuracy"].values()))
        perms = list(itertools.permutations(range(len(a))))
        values = np.array([spearman(np.array(p, float), a) for p in perms])
        total += values[rng.integers(len(values), size=draws)]
    return total / len(cells)


def write_md(res: dict, summary: dict, path: Path) -> None:
    r = res["recipe"]
    lines = [
        "# Transferability scores against brute-force fine-tuning", "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['platform']}, {res['machine']['cpus']} CPUs, torch threads "
        f"{res['machine']['torch_threads']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".  ",
        f"Fine-tuning recipe (every source, every task): Adam lr {r['lr']}, cosine schedule with "
        f"{r['warmup_steps']} warm-up steps, {r['steps']} steps, batch {r['batch_size']}, weights chosen "
        f"on validation every {r['eval_every']} steps, test accuracy averaged over fine-tuning seeds "
        f"{r['seeds']}; data split seed {r['data_seed']}. Scores use only the labelled training "
        f"images (at most {r['max_per_class']} per class, no augmentation); domain similarity also "
        f"gets {r['source_samples_per_class']} rendered source-domain images per source class.",
        "",
        "Measures: Spearman and weighted Kendall tau (scipy `weightedtau`) between score and test "
        "accuracy; *trials* = models fine-tuned in score order until the best one is reached; "
        "*top-3* = best test accuracy among the 3 highest-scoring models; *gain* = top-3 minus "
        "the expected best of 3 random models; *regret* = best model minus top-3. `random` = "
        "exact expectations of random selection. `mean_rank` = the consensus ranking `zootune "
        "select` prints (mean rank over the scores, domain similarity excluded).", "",
    ]
    def table(ov: dict[str, dict[str, float]]) -> list[str]:
        out = ["| score | Spearman | p (random) | weighted tau | trials to best | top-1 is best | "
               "top-3 gain vs random | top-3 regret |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s, v in ov.items():
            t1 = f"{v['top1_is_best']:.1f}" if s == "random" else f"{int(v['top1_is_best'])}"
            pv = f"{v['spearman_p']:.3f}" if "spearman_p" in v else "-"
            out.append(f"| {s} | {v['spearman']:+.2f} | {pv} | {v['weighted_tau']:+.2f} | "
                       f"{v['trials_to_best']:.2f} | {t1}/{v['cells']} | "
                       f"{100 * v['top3_gain_vs_random']:+.2f} pt | {100 * v['top3_regret']:.2f} pt |")
        return out + [""]

    ov = summary["overall"]
    if ov:
        n = max(v["cells"] for v in ov.values())
        lines += [f"## Summary over all {n} (zoo, target) pairs", ""] + table(ov)
        lines += ["Means over the pairs. *p (random)*: probability that random rankings reach a mean "
                  "Spearman at least this high (Monte Carlo over the exact permutation distribution of "
                  "each pair). With 5 models one pair's Spearman is very noisy (only a perfect ranking "
                  "has two-sided p < 0.05), so read the per-pair tables with care.", ""]
        inf = summary["informative"]
        if summary["overall_informative"]:
            lines += [f"## Summary over the {len(inf)} pairs whose ground truth separates the sources", "",
                      "Pairs where the spread of the sources' fine-tuned accuracies is more than twice the "
                      "seed-to-seed standard deviation of one fine-tuning run: " + ", ".join(inf) + ". In the "
                      "other pairs the sources are within fine-tuning noise of each other, so no score can be "
                      "right or wrong there by much.", ""] + table(summary["overall_informative"])
        tot_ft = sum(c["finetune_seconds_per_seed"] for c in summary["cells"].values())
        tot_sc = sum(c["score_seconds"] for c in summary["cells"].values())
        parts: dict[str, float] = {}
        for c in summary["cells"].values():
            for k, t in c["time_parts"].items():
                parts[k] = parts.get(k, 0.0) + t
        lines += [f"Time, all pairs: every score for every model {tot_sc:.0f} s vs brute-force fine-tuning "
                  f"of every model once {tot_ft:.0f} s ({tot_ft / max(tot_sc, 1e-9):.1f}x), one thread, on "
                  "a machine shared with other jobs (timings are indicative). Scoring time = RSA probe + "
                  "feature/logit/gradient extraction + every score except domain similarity, whose "
                  "source-domain extraction is listed apart. Breakdown (s, summed over pairs): "
                  + ", ".join(f"{k} {t:.1f}" for k, t in sorted(parts.items(), key=lambda kv: -kv[1])) + ". "
                  "The fine-tuning here is tiny (300 steps of a 0.14M-parameter CNN, a few seconds per "
                  "model), so the ratio is small; scoring costs one pass over at most 50 images per class "
                  "per model whatever the fine-tuning budget, so the ratio grows with it.", ""]
    if ov and NOTES:
        lines += [NOTES]
    lines += ["## Per (zoo, target)", ""]
    for key, cell in res["cells"].items():
        c = summary["cells"].get(key)
        if c is None:
            done = len(cell.get("finetune", {}))
            want = len(cell.get("names", [])) * len(r["seeds"])
            lines += [f"### {key}: incomplete ({done}/{want} fine-tuning runs, scores "
                      f"{'done' if 'scores' in cell else 'not done'})", ""]
            continue
        accs = ", ".join(f"{n} {100 * a:.1f}" for n, a in c["accuracy"].items())
        lines += [f"### {key}", "",
                  f"Test accuracy (%) after fine-tuning: {accs}. Spread {100 * c['spread']:.1f} pt; "
                  f"seed-to-seed std of one source {100 * c['seed_std']:.1f} pt.", "",
                  "| score | Spearman | weighted tau | trials | top-1 acc | top-3 acc | gain vs random |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s, m in c["measures"].items():
            trials = f"{m['trials_to_best']:.2f}" if s == "random" else f"{m['trials_to_best']}"
            lines.append(f"| {s} | {m['spearman']:+.2f} | {m['weighted_tau']:+.2f} | {trials} | "
                         f"{100 * m['top1_accuracy']:.1f} | {100 * m['top3_accuracy']:.1f} | "
                         f"{100 * m['top3_gain_vs_random']:+.1f} |")
        lines += ["", f"Time: scores {c['score_seconds']:.1f} s vs fine-tuning every source "
                  f"{c['finetune_seconds_per_seed']:.0f} s (one seed).", ""]
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    import ot
    import scipy
    import sklearn

    import zootune

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "POT": ot.__version__,
            "zootune": getattr(zootune, "__version__", "?")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoos", nargs="+", default=["demo", "independent"], choices=["demo", "independent"])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help=f"fine-tuning seeds (default {RECIPE['seeds']}; finished seeds are kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    ap.add_argument("--smoke", action="store_true", help="tiny budget into selection_smoke.json")
    ap.add_argument("--demo-weights", default=None, help="demo zoo folder (default: the package's)")
    ap.add_argument("--results", default=None, help="results JSON (default results/selection.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = dict(RECIPE)
    if args.smoke:
        recipe.update(steps=4, eval_every=2, seeds=[0], max_per_class=5, source_samples_per_class=2)
        INDEPENDENT_RECIPE.update(steps=3, n_train=2)
    path = Path(args.results or RESULTS / ("selection_smoke.json" if args.smoke else "selection.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(path.read_text()) if path.exists() else {}
    if args.seeds:
        recipe["seeds"] = list(args.seeds)
    same = lambda a, b: {k: v for k, v in a.items() if k != "seeds"} == {k: v for k, v in b.items() if k != "seeds"}  # noqa: E731
    if res.get("recipe") is not None and not same(res["recipe"], recipe):
        sys.exit(f"{path} holds results of another recipe; move it away or pass --results")
    register_targets()
    res.update({
        "recipe": recipe, "independent_recipe": INDEPENDENT_RECIPE, "targets": TARGETS,
        "command": "python benchmarks/selection.py" + ("" if argv is None and len(sys.argv) == 1
                                                       else " " + " ".join(argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": versions(),
    })
    res.setdefault("cells", {})
    res.setdefault("zoos", {})

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(path)
        write_md(res, summarise(res), path.with_suffix(".md"))

    t_start = time.perf_counter()
    for zoo_name in args.zoos:
        print(f"[{zoo_name}] loading zoo", flush=True)
        z, domains = load_zoo(zoo_name, smoke=args.smoke, demo_weights=args.demo_weights)
        fp = zoo_fingerprint(z)
        old = res["zoos"].get(zoo_name)
        if old is not None and old["fingerprint"] != fp:
            sys.exit(f"zoo {zoo_name!r} changed since {path} was written (weights fingerprint "
                     f"{old['fingerprint']} -> {fp}); move the results away or pass --results")
        res["zoos"][zoo_name] = {"names": z.names, "fingerprint": fp, "domains": domains,
                                 "info": {k: v for k, v in z.info.items() if k != "warnings"}}
        for target in args.targets:
            key = f"{zoo_name}/{target}"
            cell = res["cells"].setdefault(key, {"names": z.names, "finetune": {}})
            if "scores" not in cell:
                print(f"[{key}] scores", flush=True)
                cell["scores"] = score_cell(z, domains, target, recipe)
                print(f"  {cell['scores']['total_seconds']:.1f}s", flush=True)
                save()
            for seed in recipe["seeds"]:
                for i, name in enumerate(z.names):
                    ck = f"{name}/{seed}"
                    if ck in cell["finetune"]:
                        continue
                    cell["finetune"][ck] = finetune_cell(z, i, target, seed, recipe)
                    r = cell["finetune"][ck]
                    print(f"[{key}] {ck}: test {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f}, "
                          f"{r['seconds']:.0f}s; {time.perf_counter() - t_start:.0f}s so far)", flush=True)
                    save()
    save()
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
