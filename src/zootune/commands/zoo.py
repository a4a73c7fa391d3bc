"""``zootune zoo``: look at zoo members before training.

``zootune zoo inspect SPEC...`` loads each spec (or preset) and prints its architecture,
parameter count, preprocessing and what was mapped or dropped from its checkpoint; then whether
the specs can form one zoo (with or without their heads), whether their preprocessing agrees,
and how related their weights are (per layer, each member's cosine similarity to the others),
warning when members look independently trained. ``zootune zoo align SPEC... -o DIR`` permutes
the members into one member's channel order (:func:`zootune.align_zoo`) and writes aligned
checkpoints. ``zootune zoo presets`` lists named zoos.
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
    al = zsub.add_parser(
        "align",
        help="permute zoo members into one member's channel order; write aligned checkpoints",
        description=(
            "Align a zoo whose members were trained from independent random starts: permute "
            "each member's channels into the reference member's order (weight matching, Git "
            "Re-Basin; no data needed) without changing what it computes, and write one "
            "checkpoint per member to DIR (load them with 'file:DIR/NAME.safetensors arch=...'). "
            "Members whose heads differ are aligned without their heads (the trunk's output "
            "features are then permuted too)."
        ),
    )
    al.add_argument("specs", nargs="+", metavar="SPEC")
    al.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the aligned checkpoints")
    al.add_argument("--reference", type=int, default=0, help="index of the member the others are aligned to")
    al.add_argument("--max-sweeps", type=int, default=100, help="weight matching's limit on sweeps")
    al.add_argument("--input-size", default=None, metavar="C,H,W",
                    help="example input size for tracing (default: the zoo's preprocessing)")
    al.add_argument("--no-weights", action="store_true",
                    help="build the architectures with random weights (no files, no network)")
    al.add_argument("--offline", action="store_true", help="never download (also: ZOOTUNE_OFFLINE=1)")
    al.add_argument("--checkpoint-dir", default=None, help="directory of pre-downloaded checkpoints")
    al.add_argument("--arch", default=None, help="architecture for file:/url: specs that do not say arch=")
    al.set_defaults(func=run_align)
    pre = zsub.add_parser("presets", help="list named zoos and the specs they expand to")
    pre.set_defaults(func=run_presets)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_align(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from zootune.align import align_zoo
    from zootune.atomic import atomic_write_text
    from zootune.errors import ZootuneError
    from zootune.export import save
    from zootune.zoo import load_zoo
    from zootune.zoo.relatedness import relatedness

    kwargs: dict[str, Any] = {"pretrained": not args.no_weights, "strip_heads": "differing",
                              "arch": args.arch, "check_related": False}
    if args.offline:
        kwargs["offline"] = True
    if args.checkpoint_dir:
        kwargs["checkpoint_dir"] = args.checkpoint_dir
    zoo = load_zoo(args.specs, **kwargs)
    from zootune.zoo.heads import STRIPPED_ATTR

    stripped = any(getattr(m, STRIPPED_ATTR, None) for m in zoo)
    size = getattr(zoo.preprocessing, "input_size", None)
    if args.input_size:
        try:
            size = tuple(int(v) for v in args.input_size.split(","))
        except ValueError:
            raise ZootuneError(f"--input-size must be C,H,W (integers), got {args.input_size!r}") from None
    example = torch.rand(2, *size, generator=torch.Generator().manual_seed(0)) if size else None
    names = list(zoo.names)
    print(f"aligning {len(names)} members to '{names[args.reference] if 0 <= args.reference < len(names) else args.reference}'"
          f" (weight matching{'; heads differ: aligned without them' if stripped else ''})")
    aligned = align_zoo(list(zoo), reference=args.reference, example_input=example,
                        permute_outputs=stripped, max_sweeps=args.max_sweeps)
    before = relatedness(list(zoo), names).pairwise()[args.reference]
    after = relatedness(list(aligned), names).pairwise()[args.reference]
    print(f"{aligned.info['groups']} permutation groups ({aligned.info['channels']} channels)")
    print(f"{'member':<14} {'moved':>7} {'sweeps':>6} {'seconds':>8} {'max |diff|':>10} "
          f"{'cos before':>10} {'cos after':>10}")
    out = Path(args.output)
    files = []
    for i, (name, m, info) in enumerate(zip(names, aligned, aligned.info["members"])):
        diff = info.get("max_abs_diff")
        print(f"{name:<14} {info['moved_channels']:>7} {info.get('sweeps', 0):>6} "
              f"{info['seconds']:>8.1f} {'-' if diff is None else f'{diff:.2e}':>10} "
              f"{before[i]:>10.3f} {after[i]:>10.3f}")
        path = save(m, out / f"{name}.safetensors",
                    metadata={"aligned_to": names[args.reference], "member": name,
                              "spec": str(getattr(m, "zootune_spec", "")),
                              "method": "weights", "head_stripped": bool(stripped)})
        files.append(str(path))
    report = {"members": names, "reference": args.reference, "files": files,
              "info": aligned.info, "cosine_to_reference_before": before.round(4).tolist(),
              "cosine_to_reference_after": after.round(4).tolist()}
    atomic_write_text(out / "align.json", json.dumps(report, indent=2, default=str))
    print(f"wrote {len(files)} checkpoints and align.json to {out}")
    return 0


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
