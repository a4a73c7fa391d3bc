"""``zootune select``: rank a zoo for a target task with every transferability score.

    zootune select --zoo SPEC [SPEC ...] --data digits|DIR [--top-k K] [--out DIR]

Loads each zoo member (``zootune.zoo``), extracts its penultimate features, source logits and
projected last-conv gradients on at most ``--max-per-class`` training samples per class (each
model through its own preprocessing; cached on disk), computes every score of
:mod:`zootune.select`, prints a table and writes ``select.json``. With ``--top-k K`` it also
writes ``zoo_top{K}.yaml``, a config fragment (``zoo: {spec: [...]}``) that ``zootune tune``
accepts, so selection and tuning are two commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from zootune.select.scoring import SCORE_NAMES

RANK_CHOICES = ("mean_rank", *SCORE_NAMES)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="rank zoo models for a target task with transferability scores (LogME, LEEP, ...)",
        description=(
            "Rank the models of a zoo for a target data set before any training, with LogME, "
            "LEEP, NCE, H-score (plain and shrinkage), LFC, LGC, RSA and (given source data) "
            "domain similarity. Prints a table, writes select.json, and with --top-k a zoo "
            "spec for `zootune tune`."
        ),
    )
    p.add_argument("--zoo", nargs="+", required=True, metavar="SPEC", help="zoo member specs or a preset")
    p.add_argument("--data", required=True, help="target data: 'digits', an image folder, or a registered name")
    p.add_argument("--source-data", default=None, help="source-domain data (enables domain similarity)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="write a zoo spec of the best K")
    p.add_argument("--rank-by", default="mean_rank", choices=RANK_CHOICES, help="ordering for the table and --top-k")
    p.add_argument("--scores", default=None, help="comma-separated subset of scores (default: all)")
    p.add_argument("--max-per-class", type=int, default=50, help="samples per class used (paper: 50)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None,
                   help="override the input size of the models' preprocessing")
    p.add_argument("--projection", type=int, nargs=2, default=(16, 16), metavar=("K1", "K2"),
                   help="LGC gradient projection (K1*K2 dimensions)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/cache, or none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offline", action="store_true", help="never download (also ZOOTUNE_OFFLINE=1)")
    p.add_argument("--checkpoint-dir", default=None, help="directory of pre-downloaded checkpoints")
    p.add_argument("--out", default=None, help="directory for select.json and zoo_top{K}.yaml")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------- loading


def load_models(specs: list[str], *, offline: bool | None = None,
                checkpoint_dir: str | None = None) -> list[tuple[str, str, Any]]:
    """``[(name, spec text, nn.Module)]`` for the given specs / presets, via :mod:`zootune.zoo`.

    Members are loaded one by one (a zoo being *ranked* may mix architectures; ``zootune
    tune`` checks the chosen ones form one zoo). A member whose classification head is not in
    its checkpoint (e.g. a detection backbone) has the random head stripped, so it gives
    features only and LEEP/NCE are skipped for it instead of scoring a random head.
    """
    from zootune.zoo import load
    from zootune.zoo.load import expand_specs, strip_head, unique_names

    parsed, _ = expand_specs(specs)
    names = unique_names([p.label for p in parsed])
    out = []
    for p, n in zip(parsed, names):
        model = load(p, pretrained=True, offline=offline, checkpoint_dir=checkpoint_dir, name=n)
        report = getattr(model, "zootune_load_report", None)
        if report is not None and getattr(report, "head_missing", False):
            strip_head(model)
        out.append((n, getattr(model, "zootune_spec", p.text), model))
    return out


def build_splits(data: str, preprocessing: Any, seed: int, image_size: int | None = None):
    """Train split of ``data`` (no augmentation) under ``preprocessing``, via :mod:`zootune.data`."""
    from pathlib import Path

    from zootune.config import DataConfig
    from zootune.data import build_data, dataset_names

    if Path(data).expanduser().is_dir():
        cfg = DataConfig(name="image_folder", root=str(data), augment=False, seed=seed,
                         image_size=image_size)
    elif data in dataset_names():
        cfg = DataConfig(name=data, augment=False, seed=seed, image_size=image_size)
    else:
        from zootune.errors import ZootuneError

        raise ZootuneError(
            f"--data {data!r} is neither a directory nor a known data set ({', '.join(dataset_names())})"
        )
    return build_data(cfg, preprocessing)


def _preprocessing(model: Any) -> Any:
    try:
        from zootune.zoo.preprocess import preprocessing_of
    except ImportError:  # pragma: no cover
        return None
    return preprocessing_of(model)


def _pre_key(pre: Any) -> str:
    return repr(pre.to_dict() if hasattr(pre, "to_dict") else pre)


# -------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from zootune.errors import ZootuneError
    from zootune.select import SCORE_NAMES, probe_features, rank_table, score_features
    from zootune.select.features import cap_per_class, data_fingerprint, dataset_labels, extract

    scores = list(SCORE_NAMES) if args.scores is None else [s.strip() for s in args.scores.split(",") if s.strip()]
    unknown = [s for s in scores if s not in SCORE_NAMES]
    if unknown:
        raise ZootuneError(f"unknown score(s) {', '.join(unknown)}; choose from {', '.join(SCORE_NAMES)}")
    if args.top_k is not None and args.top_k < 1:
        raise ZootuneError("--top-k must be >= 1")
    if args.max_per_class < 1:
        raise ZootuneError("--max-per-class must be >= 1")
    if args.rank_by != "mean_rank" and args.rank_by not in scores:
        raise ZootuneError(f"--rank-by {args.rank_by} is not among the computed scores")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out = Path(args.out) if args.out else None
    cache_dir = args.cache_dir or (str(out / "cache") if out else None)

    models = load_models(list(args.zoo), offline=True if args.offline else None,
                         checkpoint_dir=args.checkpoint_dir)
    if args.top_k is not None and args.top_k > len(models):
        raise ZootuneError(f"--top-k {args.top_k} is larger than the zoo ({len(models)} models)")

    splits_by_pre: dict[str, Any] = {}
    source_by_pre: dict[str, Any] = {}
    results: dict[str, Any] = {}
    extracted_first = None
    for name, spec, model in models:
        pre = _preprocessing(model)
        key = _pre_key(pre)
        if key not in splits_by_pre:
            splits_by_pre[key] = build_splits(args.data, pre, args.seed, args.image_size).train
            if args.source_data and "domain_similarity" in scores:
                source_by_pre[key] = build_splits(args.source_data, pre, args.seed, args.image_size).train
        train = splits_by_pre[key]
        labels = dataset_labels(train)
        idx = cap_per_class(labels, args.max_per_class, seed=args.seed)
        model.to(device)
        common = dict(batch_size=args.batch_size, seed=args.seed, device=device, cache_dir=cache_dir)
        try:
            ex = extract(model, train, indices=idx, gradients="lgc" in scores,
                         projection=tuple(args.projection), data_key=data_fingerprint(train, idx),
                         **common)
            src = None
            if key in source_by_pre:
                s_ds = source_by_pre[key]
                s_idx = cap_per_class(dataset_labels(s_ds), args.max_per_class, seed=args.seed)
                src = extract(model, s_ds, indices=s_idx, data_key=data_fingerprint(s_ds, s_idx),
                              **common)
        except RuntimeError as exc:  # shape / dtype mismatch between the model and the data
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ZootuneError(
                f"model '{name}' ({spec}) failed on the data '{args.data}': {first}. "
                "Check the model's input channels/size against the data (--image-size)."
            ) from None
        model.to("cpu")
        if extracted_first is None:
            extracted_first = (train, idx, ex.labels)
        results[name] = {"spec": spec, "extracted": ex, "source": src}
        print(f"extracted {name}: {ex.features.shape[0]} samples, {ex.features.shape[1]}-d features"
              f"{' (cached)' if ex.cached else f' in {ex.seconds:.1f}s'}", file=sys.stderr)

    probe = None
    if "rsa" in scores and extracted_first is not None:
        train, idx, labels = extracted_first
        from zootune.data.sample import IMAGE, as_sample

        inputs = torch.stack([torch.as_tensor(as_sample(train[int(i)])[IMAGE]) for i in idx])
        probe = probe_features(inputs, labels, seed=args.seed)

    per_model: dict[str, dict[str, float]] = {}
    report: dict[str, Any] = {"data": args.data, "max_per_class": args.max_per_class, "seed": args.seed,
                              "rank_by": args.rank_by, "models": {}}
    for name, r in results.items():
        ex, src = r["extracted"], r["source"]
        res = score_features(
            ex.arrays(), ex.labels, scores=scores, probe=probe,
            source_features=src.features if src is not None else None,
            source_labels=src.labels if src is not None else None, seed=args.seed,
        )
        per_model[name] = res["scores"]
        report["models"][name] = {
            "spec": r["spec"], "scores": res["scores"], "seconds": res["seconds"], "skipped": res["skipped"],
            "samples": int(ex.features.shape[0]), "feature_dim": int(ex.features.shape[1]),
            "extract_seconds": ex.seconds, "cached": ex.cached, "notes": ex.notes,
        }
    ranks = rank_table(per_model)
    for name in per_model:
        report["models"][name]["ranks"] = ranks[name]
    if args.rank_by == "mean_rank":
        order = sorted(per_model, key=lambda m: ranks[m]["mean_rank"])
    else:
        order = sorted(per_model, key=lambda m: -per_model[m].get(args.rank_by, -np.inf))
    report["order"] = order
    _print_table(order, per_model, ranks, scores)

    from zootune.atomic import atomic_write_text

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "select.json", json.dumps(report, indent=2, default=float))
        print(f"wrote {out / 'select.json'}", file=sys.stderr)
    if args.top_k is not None:
        import yaml

        top = order[: args.top_k]
        text = (f"# zootune select --rank-by {args.rank_by}: top {args.top_k} of {len(order)} for data "
                f"{args.data!r}\n# use: zootune tune CONFIG.yaml with this zoo section, e.g. merged in\n")
        text += yaml.safe_dump({"zoo": {"spec": [results[m]["spec"] for m in top], "names": top}}, sort_keys=False)
        path = (out or Path(".")) / f"zoo_top{args.top_k}.yaml"
        atomic_write_text(path, text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _print_table(order: list[str], per_model: dict, ranks: dict, scores: list[str]) -> None:
    cols = [s for s in scores if any(s in per_model[m] for m in order)]
    width = max([5] + [len(m) for m in order])
    head = f"{'#':>2}  {'model':<{width}}  " + "  ".join(f"{c[:12]:>12}" for c in cols) + f"  {'mean rank':>9}"
    print(head)
    print("-" * len(head))
    for i, m in enumerate(order, 1):
        vals = "  ".join(
            f"{per_model[m][c]:>12.4f}" if c in per_model[m] else f"{'-':>12}" for c in cols
        )
        print(f"{i:>2}  {m:<{width}}  {vals}  {ranks[m]['mean_rank']:>9.2f}")
