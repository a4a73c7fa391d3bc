"""``zootune zoo``: look at zoo members before training.

``zootune zoo inspect SPEC...`` loads each spec (or preset) and prints its architecture,
parameter count, preprocessing and what was mapped or dropped from its checkpoint; then whether
the specs can form one zoo (with or without their heads), whether their preprocessing agrees,
and how related their weights are (per layer, each member's cosine similarity to the others),
warning when members look independently trained. ``zootune zoo presets`` lists named zoos.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo",
        help="inspect zoo members: architecture, preprocessing, compatibility, relatedness",
        description="Inspect zoo specs and presets (see `zootune zoo inspect --help`).",
    )
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    ins = zsub.add_parser(
        "inspect",
        help="load specs and report architecture, preprocessing, zoo check, relatedness",
        description=(
            "Load zoo members and report: architecture, parameter count, preprocessing, "
            "key mapping, whether they can form one zoo, and per-layer weight relatedness. "
            "SPEC: timm:NAME, torchvision:MODEL[:WEIGHTS], "
            "torchvision-backbone:MODEL[:WEIGHTS], hf:ORG/REPO, 'file:PATH arch=ARCH', "
            "'url:URL arch=ARCH', or a preset (zootune zoo presets)."
        ),
    )
    ins.add_argument("specs", nargs="+", metavar="SPEC")
    ins.add_argument("--no-weights", action="store_true",
                     help="build the architectures with random weights (no files, no network)")
    ins.add_argument("--offline", action="store_true",
                     help="never download; fail at once if weights are not cached "
                          "(also: ZOOTUNE_OFFLINE=1)")
    ins.add_argument("--checkpoint-dir", default=None,
                     help="directory of pre-downloaded checkpoints (also: ZOOTUNE_CHECKPOINT_DIR)")
    ins.add_argument("--arch", default=None,
                     help="architecture for file:/url: specs that do not say arch=")
    ins.add_argument("--all-layers", action="store_true",
                     help="print every layer of the relatedness table (default: about 16 rows)")
    ins.add_argument("--json", dest="json_path", default=None,
                     help="also write the full report as JSON to this file")
    ins.set_defaults(func=run_inspect)
    pre = zsub.add_parser("presets", help="list named zoos and the specs they expand to")
    pre.set_defaults(func=run_presets)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_presets(args: argparse.Namespace) -> int:
    from zootune.zoo.presets import ZOO_PRESETS

    for name, members in sorted(ZOO_PRESETS.items()):
        print(f"{name}:")
        for n, spec in members:
            print(f"  {n:<14} {spec}")
    return 0


def _count(model: Any, head: str | None) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    head_n = 0
    if head:
        head_n = sum(p.numel() for n, p in model.named_parameters() if n.startswith(head + "."))
    return total, total - head_n


def run_inspect(args: argparse.Namespace) -> int:
    import copy
    import warnings

    from zootune.errors import ZootuneError
    from zootune.zoo import find_head
    from zootune.zoo.cache import Context
    from zootune.zoo.load import unique_names, check_same_architecture, expand_specs, load, strip_head
    from zootune.zoo.preprocess import disagreements, preprocessing_of
    from zootune.zoo.relatedness import relatedness

    parsed, _ = expand_specs(args.specs, args.arch)
    ctx = Context.make(True if args.offline else None, args.checkpoint_dir)
    models, names, report = [], [], {"members": [], "zoo": {}}
    failed = 0
    print(f"zoo of {len(parsed)} spec(s); weights: {'random' if args.no_weights else 'pretrained'}"
          f"{'; offline' if ctx.offline else ''}")
    for spec, label in zip(parsed, unique_names([p.label for p in parsed])):
        print(f"\n[{label}] {spec.text}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = load(spec, not args.no_weights, arch=args.arch, name=label, _ctx=ctx)
        except ZootuneError as exc:
            failed += 1
            print(f"  error: {exc}")
            report["members"].append({"name": label, "spec": spec.text, "error": str(exc)})
            continue
        head = find_head(m)
        total, trunk = _count(m, head)
        pre = preprocessing_of(m)
        rep = m.zootune_load_report
        cls = f"{type(m).__module__}.{type(m).__qualname__}"
        print(f"  architecture  {cls}")
        print(f"  parameters    {total:,} ({trunk:,} without head '{head}')")
        print(f"  preprocessing {pre.describe() if pre else 'unknown'}")
        for i, line in enumerate(rep.summary().splitlines()):
            print(("  weights       " if i == 0 else "                ") + line)
        report["members"].append({
            "name": label, "spec": spec.text, "class": cls, "parameters": total,
            "parameters_without_head": trunk, "head": head,
            "preprocessing": pre.to_dict() if pre else None, "load_report": rep.to_dict(),
        })
        models.append(m)
        names.append(label)

    print()
    verdict = _zoo_verdict(  # parameter names and shapes decide (timm and torchvision may mix)
        models, names, lambda ms, ns, hint_heads: check_same_architecture(
            ms, ns, hint_heads=hint_heads, modules=False), strip_head, copy)
    print(f"one zoo?        {verdict['text']}")
    report["zoo"]["compatible"] = verdict
    if len(models) >= 2:
        pres = [preprocessing_of(m) for m in models]
        diffs = disagreements([p for p in pres if p], [n for n, p in zip(names, pres) if p])
        print("preprocessing   " + ("members agree" if not diffs else "DIFFERS: " + "; ".join(diffs)))
        report["zoo"]["preprocessing_differences"] = diffs
    rel_models = verdict.get("models")
    if rel_models is not None and len(rel_models) >= 2:
        heads = [h for h in {find_head(m) for m in rel_models} if h]
        rel = relatedness(rel_models, names, exclude_prefixes=heads)
        print(f"\nweight relatedness: per layer, each member's mean cosine similarity to the "
              f"others ({len(rel.layers)} layers; last row: median similarity to the closest "
              f"member)")
        print(rel.table(max_rows=None if args.all_layers else 16))
        pm = rel.pairwise()
        print("\npairwise median similarity:")
        w = max(8, *(len(n) for n in names))
        print(" " * w + "  " + "  ".join(n.rjust(w) for n in names))
        for n, row in zip(names, pm):
            print(n.rjust(w) + "  " + "  ".join(f"{v:{w}.3f}" for v in row))
        text = rel.warning_text()
        if args.no_weights:
            print("\n(random weights: relatedness only means something with --no-weights off)")
        elif text:
            print(f"\nwarning: {text}")
        else:
            print(f"\nrelatedness: every member is related to another (>= {rel.threshold})")
        report["zoo"]["relatedness"] = rel.to_dict()
    verdict.pop("models", None)
    if args.json_path:
        from zootune.atomic import atomic_write_text

        atomic_write_text(args.json_path, json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json_path}")
    if failed:
        print(f"error: {failed} of {len(parsed)} spec(s) could not be loaded", file=sys.stderr)
        return 2
    return 0


def _zoo_verdict(models, names, check, strip, copy_mod) -> dict[str, Any]:
    from zootune.errors import ZootuneError

    if len(models) < 2:
        return {"ok": len(models) == 1, "text": "need at least two loaded members",
                "models": None}
    try:
        check(models, names, hint_heads=False)
        return {"ok": True, "strip_heads": False, "text": "yes, as loaded (heads included)",
                "models": models}
    except ZootuneError as exc:
        first = str(exc)
    stripped = [copy_mod.deepcopy(m) for m in models]
    for m in stripped:
        strip(m)
    try:
        check(stripped, names, hint_heads=False)
    except ZootuneError as exc:
        return {"ok": False, "text": f"no: {exc}", "models": None}
    return {"ok": True, "strip_heads": True,
            "text": f"yes, with strip_heads=True (heads differ: {first})", "models": stripped}
