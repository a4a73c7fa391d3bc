"""Do the gates route? How much per-sample Zoo-Tuning gates vary between inputs and between
known sub-domains of the target (issue 10, item 5).

Per-sample Zoo-Tuning (paper Eq. 2) computes one gate vector ``a`` (m sources) per input at every
aggregated layer. If the gates were (nearly) the same for every input, the model would be a
fixed weighted average per layer, i.e. lite Zoo-Tuning with extra inference cost. So, for every
aggregated layer, over the samples of an evaluation split:

* ``mean``: the mean gate of each source (what the per-layer heat maps show);
* ``spread``: the spread of gates across samples, the mean over sources of the per-source
  standard deviation, and ``relative_spread`` = spread / mean gate (scale-free: sigmoid gates
  live near 0.5, normalised ones near 1/m);
* ``argmax_share``: how often each source has the largest gate;
* with a sub-domain label per sample (below): ``mi_argmax``, the mutual information (bits)
  between the arg-max source and the sub-domain; ``mi_binned``, the largest over sources of the
  mutual information between that source's gate, cut into ``bins`` equal-count bins, and the
  sub-domain; ``domain_entropy`` H(domain), the most either can be (perfect routing gives
  MI = H(domain), identical gates give 0); ``*_chance``: the same statistic with the domain
  labels shuffled (mean of ``shuffles`` seeded permutations): the plug-in estimator's bias on
  this many samples, which an MI must clearly exceed to mean anything; ``domain_gap``: the largest
  total-variation distance, 0.5 * sum_i |mean_a(g_i) - mean_b(g_i)|, between the mean gates of
  two sub-domains (on normalised gates: the share of the aggregate that moves).

Sub-domains are generic, never a demo special case. A sample's domain is, in order:
its ``"domain"`` field (any hashable value) when the data set's samples have one; else
``DataSplits.info["class_domains"]``, a list giving the domain of each class index (the demo
target says ``digits`` for classes 0-9 and ``greek`` for 10-19); else there is none and only the
spread is reported.

Only models with per-sample gates are analysed (AdaAgg layers built with ``lite=False``); lite
Zoo-Tuning and average aggregation use one gate vector per layer at inference, so there is
nothing to route (:func:`routing_report` returns ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["collect_gates", "entropy_bits", "mutual_information_bits", "per_sample_gate_layers",
           "routing_report", "routing_stats", "sample_domains"]

DOMAIN_FIELD = "domain"


def per_sample_gate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: AdaAgg layer}`` of the layers of ``model`` that gate per sample (``lite=False``);
    names as :meth:`zootune.ZooModel.layer_names` has them (relative to ``zm.model``)."""
    from zootune.layers import AdaAggBase

    if hasattr(model, "adaagg_layers"):
        layers = model.adaagg_layers()
    else:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaAggBase)}
    return {n: m for n, m in layers.items() if not m.lite}


# ---- information ------------------------------------------------------------------------------


def _codes(values: Sequence[Any]) -> np.ndarray:
    """Integer codes of arbitrary hashable values (in order of first appearance)."""
    index: dict[Any, int] = {}
    return np.asarray([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def entropy_bits(labels: Sequence[Any]) -> float:
    """Plug-in entropy (bits) of a discrete sample."""
    codes = _codes(list(labels))
    if len(codes) == 0:
        return 0.0
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Plug-in mutual information (bits) between two discrete samples of equal length,
    ``H(a) + H(b) - H(a, b)`` (clipped at 0 against rounding)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"mutual information of samples of different lengths ({len(a)} vs {len(b)})")
    if not a:
        return 0.0
    joint = list(zip(_codes(a).tolist(), _codes(b).tolist()))
    return max(0.0, entropy_bits(a) + entropy_bits(b) - entropy_bits(joint))


def _quantile_bins(x: np.ndarray, bins: int) -> np.ndarray:
    """Equal-count bins of ``x`` (ties share a bin, so a constant gate is one bin)."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right")


# ---- statistics -------------------------------------------------------------------------------


def routing_stats(gates: Mapping[str, np.ndarray | torch.Tensor], domains: Sequence[Any] | None = None,
                  *, bins: int = 8, shuffles: int = 20, seed: int = 0) -> dict[str, Any]:
    """Routing statistics of per-sample gates (see the module docstring).

    ``gates``: ``{layer: (N, m)}`` gates of N samples; ``domains``: N sub-domain labels or
    ``None``. Returns ``{"samples", "domains": {name: count} | None, "domain_entropy",
    "layers": {layer: {...}}, "overall": {...}}``; ``overall`` averages each statistic over the
    layers and names the layer where it is largest. Deterministic (``seed`` draws the shuffles).
    """
    layers: dict[str, dict[str, Any]] = {}
    n = None
    dom = None
    if domains is not None:
        dom = _codes(list(domains))
    h_dom = entropy_bits(dom.tolist()) if dom is not None else None
    rng = np.random.default_rng(seed)
    for name, g in gates.items():
        g = g.detach().cpu().numpy() if torch.is_tensor(g) else np.asarray(g)
        g = g.astype(np.float64)
        if g.ndim != 2:
            raise ValueError(f"gates of layer {name!r} must be (samples, sources), got shape {g.shape}")
        if n is None:
            n = g.shape[0]
        elif g.shape[0] != n:
            raise ValueError(f"layer {name!r} has {g.shape[0]} samples, the others {n}")
        if dom is not None and len(dom) != n:
            raise ValueError(f"{len(dom)} domain labels for {n} samples")
        mean = g.mean(0)
        std = g.std(0)
        amax = g.argmax(1)
        st: dict[str, Any] = {
            "mean": mean.tolist(), "std": std.tolist(),
            "spread": float(std.mean()),
            "relative_spread": float(std.mean() / max(abs(mean.mean()), 1e-12)),
            "argmax_share": (np.bincount(amax, minlength=g.shape[1]) / n).tolist(),
        }
        if dom is not None and h_dom:
            binned = [_quantile_bins(g[:, i], bins) for i in range(g.shape[1])]
            perms = [rng.permutation(dom) for _ in range(shuffles)]
            st["mi_argmax"] = mutual_information_bits(amax.tolist(), dom.tolist())
            st["mi_argmax_chance"] = float(np.mean([mutual_information_bits(amax.tolist(), p.tolist())
                                                    for p in perms])) if perms else 0.0
            st["mi_binned"] = max(mutual_information_bits(b.tolist(), dom.tolist()) for b in binned)
            st["mi_binned_chance"] = float(np.mean([max(mutual_information_bits(b.tolist(), p.tolist())
                                                        for b in binned) for p in perms])) if perms else 0.0
            means = {int(d): g[dom == d].mean(0) for d in np.unique(dom)}
            keys = sorted(means)
            st["domain_gap"] = max((0.5 * float(np.abs(means[a] - means[b]).sum())
                                    for i, a in enumerate(keys) for b in keys[i + 1:]), default=0.0)
        layers[name] = st
    names_of = {}
    if domains is not None:
        for v in domains:
            names_of[str(v)] = names_of.get(str(v), 0) + 1
    overall: dict[str, Any] = {}
    for key in ("spread", "relative_spread", "mi_argmax", "mi_argmax_chance", "mi_binned",
                "mi_binned_chance", "domain_gap"):
        vals = {ln: st[key] for ln, st in layers.items() if key in st}
        if vals:
            top = max(vals, key=vals.get)
            overall[key] = float(np.mean(list(vals.values())))
            overall[f"{key}_max"] = float(vals[top])
            overall[f"{key}_max_layer"] = top
    return {"samples": int(n or 0), "domains": names_of or None, "domain_entropy": h_dom,
            "bins": bins, "shuffles": shuffles, "layers": layers, "overall": overall}


# ---- collecting gates from a model --------------------------------------------------------------


def sample_domains(dataset: Any, info: Mapping[str, Any] | None, indices: Sequence[int],
                   samples: Sequence[Mapping[str, Any]] | None = None) -> list[Any] | None:
    """The sub-domain of each of ``dataset[indices]``: its ``"domain"`` field, else
    ``info["class_domains"][label]``, else ``None`` (see the module docstring)."""
    if samples is not None and samples and all(DOMAIN_FIELD in s for s in samples):
        return [_plain(s[DOMAIN_FIELD]) for s in samples]
    class_domains = (info or {}).get("class_domains")
    if class_domains is None:
        return None
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        labels = np.asarray(targets)[np.asarray(indices, dtype=np.int64)]
    else:
        labels = [int(dataset[int(i)]["label"]) for i in indices]
    return [class_domains[int(y)] for y in labels]


def _plain(v: Any) -> Any:
    return v.item() if torch.is_tensor(v) and v.numel() == 1 else v


@torch.no_grad()
def collect_gates(model: nn.Module, dataset: Any, *, input_field: str = "image",
                  batch_size: int = 128, max_samples: int | None = 4096,
                  device: torch.device | str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-sample gates ``{layer: (N, m)}`` of every per-sample AdaAgg layer on ``dataset``
    (eval mode; the model's mode and gate statistics are left as they were), and the indices
    used: all samples, or ``max_samples`` evenly spaced ones."""
    from zootune.data.sample import collate_samples

    layers = per_sample_gate_layers(model)
    n = len(dataset)
    idx = np.arange(n) if max_samples is None or n <= max_samples else \
        np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
    hooks = [m.gate.register_forward_hook(lambda _m, _i, out, k=k: seen[k].append(out.detach().float().cpu()))
             for k, m in layers.items()]
    if device is None:
        device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for start in range(0, len(idx), batch_size):
            batch = collate_samples([dataset[int(i)] for i in idx[start:start + batch_size]])
            model(batch[input_field].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: torch.cat(v).numpy() for k, v in seen.items() if v}, idx


def routing_report(model: nn.Module, data: Any, *, split: str = "test", input_field: str = "image",
                   max_samples: int | None = 4096, bins: int = 8, shuffles: int = 20) -> dict[str, Any] | None:
    """:func:`routing_stats` of ``model``'s per-sample gates on ``data.<split>`` (a
    :class:`~zootune.data.DataSplits`; val when there is no such split), with the sub-domains
    :func:`sample_domains` finds. ``None`` for a model without per-sample gates."""
    if not per_sample_gate_layers(model):
        return None
    ds = getattr(data, split, None) or data.val
    if ds is None or len(ds) == 0:
        return None
    gates, idx = collect_gates(model, ds, input_field=input_field, max_samples=max_samples)
    info = getattr(data, "info", {}) or {}
    first = [ds[int(i)] for i in idx[:1]]
    samples = [ds[int(i)] for i in idx] if first and DOMAIN_FIELD in first[0] else None
    domains = sample_domains(ds, info, idx, samples)
    out = routing_stats(gates, domains, bins=bins, shuffles=shuffles)
    out["split"] = split if getattr(data, split, None) is not None else "val"
    return out
