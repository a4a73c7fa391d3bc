"""The paper's Tables 1, 3, 4, 5 and 6 on the CPU-scale paper-like zoo (issue 10, item 4).

    python benchmarks/paper_tables.py                        # every target, seeds 0-4 (resumable)
    python benchmarks/paper_tables.py --targets mixture --seeds 0 1
    python benchmarks/paper_tables.py --tables               # rewrite the results from finished cells

A thin wrapper around ``zootune compare`` with ``benchmarks/configs/paper_tables.yaml`` (the zoo
``paper-mini``, one recipe for every method): the runner's resume (finished cells are skipped, an
interrupted run continues from its checkpoint) and sharing (each fine-tuned source is trained once
per seed and target, and reused by ensemble, distill, ced+finetuned, fe+finetuned) apply.

Targets (three kinds, few labels; ``TARGETS``): ``mixture`` (the config's own data: scikit-learn's
handwritten digits + ten held-apart printed Greek letters, 10 labels per class; it has a sub-domain
label, so the gates' mutual information with it is measured), ``georgian`` (33 printed Georgian
letters, a script no member saw, 10 rendered images per class) and ``shapes`` (ten geometric
shapes on textured backgrounds, 10 labels per class: not glyphs at all). Every entry of the config
runs on ``mixture``; the two others run the Table 1/3/6 entries (``TABLE1``), as the paper runs its
ablations (Tables 3-5) on one or two targets.

Cells run seed by seed (every target and method of seed 0 first), so an interrupted benchmark has
whole seeds. Runs live in ``benchmarks/cache/paper_tables/<target>/``; after every entry the
results are rewritten: ``results/paper_tables.json`` and ``results/paper_tables.md`` (each table,
the seed-paired comparison of every ordering the paper reports, the routing statistics of every
per-sample run, what is finished and what is still to run, machine, versions, wall time).
Hand-written notes below the marker of the Markdown file are kept.

Choices made on validation only: the best single source of each seed (and of each sub-zoo in
Table 5) is the fine-tuned member with the best validation accuracy of that seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import atomic_write, environment, keep_notes

RESULTS = HERE / "results"
CACHE = HERE / "cache" / "paper_tables"
CONFIG = HERE / "configs" / "paper_tables.yaml"
OUT_NAME = "paper_tables"

#: the entries of Tables 1, 3 and 6 (run on every target)
TABLE1 = ["scratch", "finetune", "ensemble", "distill", "knowledge_flow", "ced", "ced+finetuned", "fe",
          "fe+finetuned", "average_aggregation", "zoo_tuning w/o T", "zoo_tuning", "zoo_tuning lite"]

#: name -> (data section or None for the config's own, entries or None for all, description)
TARGETS: dict[str, tuple[dict[str, Any] | None, list[str] | None, str]] = {
    "mixture": (None, None, ("handwritten digits (scikit-learn) + 10 held-apart printed Greek letters, "
                            "20 classes, 10 labels per class")),
    "georgian": ({"name": "glyphs", "options": {"domain": "georgian", "n_train": 10, "n_eval": 20}},
                 TABLE1, ("33 printed Georgian letters (no member saw the script), 10 rendered images "
                         "per class")),
    "shapes": ({"name": "shapes", "labels_per_class": 10, "val_fraction": 0.2, "test_fraction": 0.2},
               TABLE1, "10 geometric shapes on textured backgrounds, 10 labels per class"),
}

#: Table 5: zoo size -> the entry of that size (5 models: the whole zoo)
SIZES = {2: "zoo_tuning 2 models", 3: "zoo_tuning 3 models", 4: "zoo_tuning 4 models", 5: "zoo_tuning"}
#: Table 5 members added in the paper's order (MoCo, Keypoint R-CNN, DeepLabV3, Mask R-CNN, ImageNet)
ORDER = ["contrastive", "keypoints", "dense", "script", "base"]

#: (better, worse, where the paper reports it): the orderings checked seed-paired on every target
CLAIMS: list[tuple[str, str, str]] = [
    ("zoo_tuning", "best single", "Tables 1, 5: Zoo-Tuning above the best single source"),
    ("zoo_tuning", "ensemble", "Table 1 (average 85.16 vs 84.50)"),
    ("zoo_tuning", "distill", "Table 1 (85.16 vs 83.82)"),
    ("zoo_tuning", "knowledge_flow", "Table 1 (85.16 vs 83.55)"),
    ("zoo_tuning", "zoo_tuning lite", "Tables 1, 4 (85.16 vs 84.51)"),
    ("zoo_tuning lite", "distill", "Table 1 (lite above distill on every task)"),
    ("zoo_tuning lite", "best single", "Tables 1, 4 (84.51 vs 83.41)"),
    ("zoo_tuning", "zoo_tuning w/o T", "Table 3 (84.91 vs 83.92 on COCO-70)"),
    ("zoo_tuning w/o T", "average_aggregation", "Table 3 (83.92 vs 80.53)"),
    ("zoo_tuning", "average_aggregation", "Table 3 (84.91 vs 80.53)"),
    ("zoo_tuning", "zoo_tuning 5x base", "Table 4 (84.91 vs 82.13 on COCO-70)"),
    ("zoo_tuning", "ced", "Table 6"),
    ("zoo_tuning", "ced+finetuned", "Table 6"),
    ("zoo_tuning", "fe", "Table 6"),
    ("zoo_tuning", "fe+finetuned", "Table 6"),
    ("fe+finetuned", "fe", "Table 6 (fine-tuning the sources first helps FE)"),
    ("zoo_tuning 2 models", "best single of 2", "Table 5"),
    ("zoo_tuning 3 models", "best single of 3", "Table 5"),
    ("zoo_tuning 4 models", "best single of 4", "Table 5"),
    ("zoo_tuning", "zoo_tuning 2 models", "Table 5 (more models, higher accuracy)"),
]


def target_spec(target: str, seeds: list[int], overrides: list[str] = ()) -> Any:
    """The comparison of one target over ``seeds`` (a :class:`zootune.compare.CompareSpec`)."""
    from zootune.compare import load_compare
    from zootune.config import read_yaml

    data, entries, _ = TARGETS[target]
    raw = read_yaml(CONFIG)
    raw["name"] = f"{OUT_NAME}_{target}"
    if data is not None:
        raw["data"] = dict(data)
    if entries is not None:
        keep = set(entries)
        raw["compare"]["methods"] = [m for m in raw["compare"]["methods"]
                                     if _label(m) in keep]
    raw["compare"]["seeds"] = list(seeds)
    return load_compare(raw=raw, overrides=list(overrides))


def _label(item: Any) -> str:
    if isinstance(item, str):
        return item
    return str(item.get("label", item["name"]))


def _cells(target: str) -> dict[str, Any]:
    f = CACHE / target / "cells.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _per_seed(summary: dict[str, Any], label: str) -> dict[int, float]:
    for r in summary["rows"]:
        if r["label"] == label:
            return {int(s): v for s, v in r["test"].items() if v is not None}
    return {}


def _best_single(cells: dict[str, Any], members: list[str], seeds: list[int]) -> dict[int, float]:
    """Per seed: test accuracy of the member (among ``members``) best on validation."""
    out = {}
    for s in seeds:
        cands = [(c["metrics"]["val"]["accuracy"], c["metrics"]["test"]["accuracy"])
                 for c in cells.values() if c.get("method") == "finetune" and c.get("seed") == s
                 and c.get("source") in members]
        if len(cands) == len(members):
            out[s] = max(cands)[1]
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    res: dict[str, Any] = {"n": len(d), "mean": statistics.fmean(d),
                           "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                           "wins": sum(x > 0 for x in d), "p": None}
    if len(d) > 1 and res["std"] > 0:
        from scipy.stats import ttest_rel

        res["p"] = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return res


def _verdict(p: dict[str, Any] | None) -> str:
    if p is None:
        return "not run yet"
    if p["p"] is None or p["p"] >= 0.05:
        return "level (p >= 0.05)" if p["n"] > 1 else "one seed"
    return "agrees" if p["mean"] > 0 else "**reversed**"


def _pm(v: float | None, s: float | None, k: float = 100.0, signed: bool = False) -> str:
    if v is None:
        return "-"
    return (f"{v * k:+.2f}" if signed else f"{v * k:.2f}") + (f" ± {s * k:.2f}" if s is not None else "")


def collect(seeds: list[int]) -> dict[str, Any]:
    """Every target's summary (finished cells only), the per-seed scores used by the tables."""
    from zootune.compare.spec import plan_cells
    from zootune.compare.table import summarize

    out: dict[str, Any] = {}
    for t in TARGETS:
        spec = target_spec(t, seeds)
        plan = plan_cells(spec)
        cells = _cells(t)
        summary = summarize(spec, plan, cells)
        scores = {r["label"]: _per_seed(summary, r["label"]) for r in summary["rows"]}
        scores["best single"] = scores.pop("finetune (best on validation)", {})
        for k in (2, 3, 4):
            scores[f"best single of {k}"] = _best_single(cells, ORDER[:k], seeds)
        scores["best single of 4r"] = _best_single(cells, ["base", "script", "dense", "keypoints"], seeds)
        out[t] = {"summary": summary, "scores": scores, "data": spec.base.get("data"),
                  "finished": [c.id for c in plan if c.id in cells],
                  "to_run": [c.id for c in plan if c.id not in cells],
                  "cells": {c.id: cells[c.id] for c in plan if c.id in cells}}
    return out


def _row(summary: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((r for r in summary["rows"] if r["label"] == label), None)


def _score_cell(res: dict[str, Any], t: str, label: str, ref: str = "best single") -> str:
    sc = res[t]["scores"].get(label) or {}
    if not sc:
        return "-"
    vals = list(sc.values())
    m = statistics.fmean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    p = _paired(sc, res[t]["scores"].get(ref) or {}) if label != ref else None
    d = f" ({p['mean'] * 100:+.2f})" if p else ""
    return f"{m * 100:.2f} ± {s * 100:.2f}{d}"


def format_tables(res: dict[str, Any], seeds: list[int], wall: float, command: str) -> str:
    targets = list(TARGETS)
    mix = res["mixture"]["summary"]
    L = ["# The paper's tables on the paper-like zoo at CPU scale (`paper-mini`)", "",
         (f"`{command}` — zoo `paper-mini` (benchmarks/results/paper_zoo.md), config "
         "`benchmarks/configs/paper_tables.yaml` (one recipe for every method: Adam 1e-3, cosine, "
         f"300 steps of 32; nothing tuned on these targets), seeds {seeds}. Test accuracy (%) mean ± "
         "std over the finished seeds; in brackets the mean seed-paired difference to the best single "
         "source chosen on validation (per seed). Targets:"), ""]
    for t, (_, _, desc) in TARGETS.items():
        n = len(res[t]["finished"])
        L.append(f"- `{t}`: {desc} ({n} of {n + len(res[t]['to_run'])} cells finished)")
    L += ["", "## Table 1: every method, accuracy and measured cost", "",
          ("Costs measured on `mixture` with torch's FLOP counter (2 FLOPs per multiply-add; the "
           "paper's GFLOPs are multiply-adds) on a batch of the training size: training GFLOPs of one "
           "step's forward per sample, summed over the method's stages (teachers, extra modules and the "
           "fine-tuning of the sources it needs included), inference GFLOPs per sample, parameters at "
           "training / inference, mean wall time of a cell on one thread (earlier stages included; "
           "shared fine-tuned sources counted for every method that uses them)."), "",
          "| method | " + " | ".join(targets) + " | train GFLOPs | train params | infer GFLOPs | infer params | wall s |",
          "|---|" + "---|" * (len(targets) + 5)]
    labels = [r["label"] for r in mix["rows"]]
    for lab in labels:
        r = _row(mix, lab)
        key = "best single" if lab == "finetune (best on validation)" else lab
        cells = [_score_cell(res, t, key) if key in res[t]["scores"] else "" for t in targets]
        cost = [f"{r['train_flops'] / 1e9:.4f}" if r.get("train_flops") else "-",
                f"{r['train_params'] / 1e6:.3f}M" if r.get("train_params") else "-",
                f"{r['inference_flops'] / 1e9:.4f}" if r.get("inference_flops") else "-",
                f"{r['inference_params'] / 1e6:.3f}M" if r.get("inference_params") else "-",
                f"{r['wall_time_s']:.0f}" if r.get("wall_time_s") else "-"]
        L.append(f"| {lab} | " + " | ".join(cells) + " | " + " | ".join(cost) + " |")

    def small(title: str, rows: list[str], tgts: list[str], note: str = "") -> None:
        L.extend(["", f"## {title}", ""] + ([note, ""] if note else []))
        L.append("| method | " + " | ".join(tgts) + " |")
        L.append("|---|" + "---|" * len(tgts))
        for lab in rows:
            L.append(f"| {lab} | " + " | ".join(_score_cell(res, t, lab) for t in tgts) + " |")

    small("Table 3: variants of Zoo-Tuning", ["average_aggregation", "zoo_tuning w/o T", "zoo_tuning"],
          targets)
    small("Table 4: a diverse zoo vs five copies of one model", ["finetune[base]", "zoo_tuning 5x base",
          "zoo_tuning lite", "zoo_tuning"], ["mixture"],
          "`finetune[base]` plays the paper's ImageNet model; `5x base` is Zoo-Tuning from five copies of "
          "it (5x parameters, as Zoo-Tuning); lite has one model's parameters at inference.")
    L += ["", "## Table 5: zoos of 2..5 models (members added in the paper's order)", "",
          ("Sizes 2-5 add `contrastive` (MoCo), `keypoints` (Keypoint R-CNN), `dense` (DeepLabV3), "
          "`script` (Mask R-CNN), `base` (ImageNet). Best single: the member of that zoo best on "
          "validation, per seed. Target `mixture`."), "",
          "| # of models | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|"]
    sc = res["mixture"]["scores"]

    def ms(d: dict[int, float]) -> str:
        if not d:
            return "-"
        v = list(d.values())
        return f"{statistics.fmean(v) * 100:.2f} ± {(statistics.stdev(v) if len(v) > 1 else 0) * 100:.2f}"

    L.append("| single best | " + " | ".join(ms(sc.get(f"best single of {k}", {}) if k < 5 else sc.get("best single", {}))
                                           for k in (2, 3, 4, 5)) + " |")
    L.append("| Zoo-Tuning | " + " | ".join(ms(sc.get(SIZES[k], {})) for k in (2, 3, 4, 5)) + " |")
    small("Table 6: the appendix baselines", ["ced", "ced+finetuned", "fe", "fe+finetuned", "zoo_tuning"],
          targets)
    L += ["", "## Alignment of the independently trained member (issue 14)", "",
          "`aligned`: `align_zoo: true` (weight matching, every member permuted into `base`'s channel "
          "order before aggregation; `contrastive` is the one trained from its own start). Target "
          "`mixture`; differences in points, mean ± std (seeds); gap recovered = (aligned - unaligned) "
          "/ (best single - unaligned), where the unaligned method is below the best single source.", "",
          "| method | test acc | vs best single (paired) | aligned - unaligned (paired) | gap recovered |",
          "|---|---|---|---|---|"]
    for base_label in ("average_aggregation", "zoo_tuning", "zoo_tuning lite"):
        for lab in (base_label, base_label + " aligned"):
            vs = _paired(sc.get(lab) or {}, sc.get("best single") or {})
            eff = _paired(sc.get(lab) or {}, sc.get(base_label) or {}) if lab != base_label else None
            gap = _paired(sc.get("best single") or {}, sc.get(base_label) or {})
            rec = (f"{eff['mean'] / gap['mean'] * 100:.0f}%" if eff and gap and gap["mean"] > 0 else "-")

            def pm(p: dict[str, Any] | None) -> str:
                return "-" if p is None else f"{p['mean'] * 100:+.2f} ± {p['std'] * 100:.2f} ({p['n']})"

            L.append(f"| {lab} | {ms(sc.get(lab) or {})} | {pm(vs)} | {pm(eff)} | "
                     f"{rec if lab != base_label else '-'} |")

    L += ["", "## The paper's orderings, seed-paired", "",
          ("Difference (points) = first minus second, mean ± std over the seeds both finished; wins = "
          "seeds where the first is higher; p = paired t-test. `agrees`: the paper's order with p < "
          "0.05; `reversed`: the opposite order with p < 0.05; `level`: no difference we can tell "
          "apart with these seeds."), "",
          "| ordering (paper) | where | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    claims = CLAIMS + [("zoo_tuning w/o contrastive", "zoo_tuning", "diagnosis: the unrelated member hurts"),
                       ("zoo_tuning w/o contrastive", "best single of 4r", "diagnosis: the related four vs their best"),
                       ("average_aggregation aligned", "average_aggregation", "issue 14: alignment helps"),
                       ("zoo_tuning aligned", "zoo_tuning", "issue 14: alignment helps"),
                       ("zoo_tuning lite aligned", "zoo_tuning lite", "issue 14: alignment helps")]
    res["claims"] = {}
    for a, b, where in claims:
        row = []
        for t in targets:
            s = res[t]["scores"]
            if a not in s or b not in s:
                row.append("")
                continue
            p = _paired(s.get(a) or {}, s.get(b) or {})
            res["claims"][f"{a} > {b} @ {t}"] = p
            row.append("-" if p is None else
                       f"{p['mean'] * 100:+.2f} ± {p['std'] * 100:.2f}, {p['wins']}/{p['n']}"
                       + (f", p={p['p']:.3f}" if p["p"] is not None else "") + f": {_verdict(p)}")
        L.append(f"| {a} > {b} | {where} | " + " | ".join(row) + " |")

    L += ["", "## Do the gates route? (per-sample runs, test split)", "",
          ("Spread: mean over layers and sources of the std of a source's gate across test inputs "
           "(relative: over its mean gate). MI: mutual information (bits) between the sub-domain label "
           "(`mixture` only: digit vs Greek; at most 1 bit) and the arg-max source of a layer's gates, "
           "averaged over layers, beside the same statistic with shuffled labels (chance). Domain gap: "
           "the largest total-variation distance between the two sub-domains' mean gates "
           "(`zootune.compare.routing`). Gate remedies (noise, balance, wider gates, gate learning "
           "rate): `gate_remedies.md`."), "",
          "| target | run | spread | relative spread | MI argmax (chance) | domain gap |", "|---|---|---|---|---|---|"]
    for t in targets:
        for r in res[t]["summary"]["rows"]:
            rt = r.get("routing")
            if not rt:
                continue

            def g(k: str, d: int = 3, rt: dict[str, Any] = rt) -> str:
                v = rt.get(k)
                return "-" if v is None else f"{v:.{d}f}"

            L.append(f"| {t} | {r['label']} | {g('spread')} | {g('relative_spread')} | "
                     f"{g('mi_argmax')} ({g('mi_argmax_chance')}) | {g('domain_gap')} |")
    todo = {t: res[t]["to_run"] for t in targets}
    n_todo = sum(map(len, todo.values()))
    L += ["", "## Status", "", "all cells finished." if not n_todo else
          f"{n_todo} cells still to run (continue: `nice -n 10 python benchmarks/paper_tables.py`; "
          "finished cells are skipped): " + "; ".join(f"{t}: {len(v)}" for t, v in todo.items()) + ".",
          "", f"Wall time of this invocation: {wall:.0f} s; cells (one thread each, earlier stages "
          "included): " + ", ".join(
              f"{t} {sum(c.get('wall_time_s', 0) + sum(s.get('wall_time_s', 0) for s in (c.get('stages') or {}).values()) for c in res[t]['cells'].values() if c.get('entry') != 'finetune'):.0f} s"
              for t in targets) + ".", "", f"Environment: {json.dumps(environment())}", ""]
    return "\n".join(L)


def write_results(seeds: list[int], wall: float, command: str) -> None:
    res = collect(seeds)
    md = format_tables(res, seeds, wall, command)
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"name": OUT_NAME, "command": command, "seeds": seeds, "environment": environment(),
           "targets": {t: {k: v for k, v in r.items() if k != "cells"} for t, r in res.items()
                       if t in TARGETS},
           "claims": res.get("claims"), "cells": {t: res[t]["cells"] for t in TARGETS}}
    atomic_write(RESULTS / f"{OUT_NAME}.json", json.dumps(doc, indent=2, default=str))
    path = RESULTS / f"{OUT_NAME}.md"
    atomic_write(path, keep_notes(path, md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--only", nargs="+", default=None, help="entry labels to run now")
    ap.add_argument("--tables", action="store_true", help="only rewrite the results")
    ap.add_argument("--recount-costs", action="store_true",
                    help="measure the finished cells' costs again (zootune compare --recount-costs)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from zootune.compare import run_compare
    from zootune.compare.spec import plan_cells

    command = "python benchmarks/paper_tables.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    interrupted = False
    if a.recount_costs:
        from zootune.compare.runner import recount_costs

        for t in a.targets:
            n = recount_costs(target_spec(t, a.seeds), CACHE / t)
            print(f"{t}: costs of {n} cells measured again")
    elif not a.tables:
        for s in a.seeds:
            for t in a.targets:
                one = target_spec(t, [s])
                for entry in dict.fromkeys(c.entry for c in plan_cells(one)):
                    if a.only and entry not in a.only:
                        continue
                    res = run_compare(one, CACHE / t, only=[entry])
                    write_results(a.seeds, time.time() - t0, command)
                    if res["interrupted"]:
                        interrupted = True
                        break
                if interrupted:
                    break
            if interrupted:
                break
    write_results(a.seeds, time.time() - t0, command)
    print(f"results: {RESULTS / (OUT_NAME + '.md')}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
