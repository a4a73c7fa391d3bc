"""``report.md`` of a training run, with its pictures.

What it says: method and zoo, data, accuracy (val/test), wall time, the parameters and FLOPs of
the *training* model and of the *inference* model (for lite Zoo-Tuning the exported plain
model, which costs what one source model costs — the paper's Table 1 columns), the gate heatmap
(``gates.png``, from ``ZooModel.gate_values()``), learning curves (``curves.png``) and the full
resolved config. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
input sample (a multiply-add counts as 2 FLOPs; the paper's "GFLOPs" are multiply-adds).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not) of ``model``."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def count_flops(model: nn.Module, example: torch.Tensor, train: bool = False) -> int:
    """FLOPs of one forward pass of ``example``.

    A training-mode forward would update BatchNorm running statistics and a Zoo-Tuning model's
    gate statistics: it runs under :func:`zootune.batchnorm.frozen_statistics`, so the model's
    state is left untouched. Per-sample Zoo-Tuning convolutions are counted with the ``grouped``
    kernel (exactly one ordinary convolution's multiply-adds per sample, the algorithm's cost),
    whichever kernel a run times fastest: the count must not depend on a timing. Nor on what an
    earlier forward cached: in training mode the channel alignment ``T_i W_i`` (new parameters
    every step) is counted once per forward; at inference the aligned (or lite: merged) weights
    are data-independent, computed once before the counted forward and not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from zootune.batchnorm import frozen_statistics
    from zootune.layers import AdaAggBase, AdaAggConv2d

    was = model.training
    convs = [(m, m.kernel) for m in model.modules() if isinstance(m, AdaAggConv2d)]
    layers = [m for m in model.modules() if isinstance(m, AdaAggBase)]
    try:
        model.train(train)
        for m, _ in convs:
            m.kernel = "grouped"
        for m in layers:  # count what this forward computes, not what an earlier one cached
            m._forget_cache()
            if not train:  # at inference the data-independent weights are computed once
                kind, fn = ("merged", m.merged) if m.lite else ("aligned", m.aligned)
                with torch.no_grad():  # beforehand, not per batch (paper §3.4): not counted
                    m._cached(kind, fn)
        with torch.no_grad(), frozen_statistics(model), FlopCounterMode(display=False) as fc:
            model(example)
        return int(fc.get_total_flops())
    finally:
        for m, kernel in convs:
            m.kernel = kernel
        for m in layers:
            m._forget_cache()
        model.train(was)


def inference_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The model that would be deployed: lite -> its export; otherwise the model itself."""
    if getattr(model, "lite", False) and hasattr(model, "export"):
        return model.export(), "exported plain model (lite: merged weights, Eq. 5)"
    if hasattr(model, "gate_values"):
        return model, "ZooModel (per-sample aggregation needs every source at inference)"
    return model, "plain model"


def model_costs(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Parameters and per-sample FLOPs of the training and inference models."""
    device = next(model.parameters()).device
    x = example.to(device)
    per = x.shape[0]
    inf, kind = inference_model(model)
    out = {
        "train_params": count_params(model),
        "train_flops": count_flops(model, x, train=True) / per,
        "inference_params": count_params(inf),
        "inference_flops": count_flops(inf, x, train=False) / per,
        "inference_kind": kind,
    }
    return out


def example_batch(data: Any, field: str = "image", n: int = 2) -> torch.Tensor | None:
    """A few validation (or training) inputs (sample field ``field``), for counting FLOPs."""
    from zootune.data.sample import as_sample

    ds = data.val if data is not None and data.val is not None else getattr(data, "train", None)
    if ds is None or len(ds) == 0:
        return None
    xs = [as_sample(ds[i])[field] for i in range(min(n, len(ds)))]
    if len(xs) < 2:
        xs = xs * 2
    return torch.stack([torch.as_tensor(x) for x in xs])


def _human(n: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{unit}"
    return f"{n:.0f}"


def write_report(out_dir: str | Path, result: Any, cfg: Any, *, task: Any = None, data: Any = None,
                 run_info: dict[str, Any] | None = None, costs: dict[str, Any] | None = None,
                 method: Any = None) -> Path:
    """Write ``report.md``, ``gates.png`` (ZooModels) and ``curves.png`` into ``out_dir``.

    ``costs``: precomputed :func:`model_costs` (the trainer computes them on every DDP rank,
    because a training-mode forward of a lite model all-reduces its gate means).
    ``method``: the run's method; its :meth:`~zootune.methods.Method.report_section` lines (and
    pictures) are added, like the task's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(run_info or {})
    model = result.model
    lines: list[str] = []
    title = cfg.name or out.name
    lines.append(f"# zootune run: {title}\n")
    lines.append(f"*Written {_dt.datetime.now().isoformat(timespec='seconds')}.*\n")

    lines.append("## Summary\n")
    lines.append("| | |\n|---|---|")
    lines.append(f"| method | `{info.get('method') or cfg.method.name}` |")
    if task is not None:
        lines.append(f"| task | {task.name} |")
    zoo_names = info.get("zoo")
    if zoo_names:
        lines.append(f"| zoo ({len(zoo_names)} sources) | {', '.join(map(str, zoo_names))} |")
    if cfg.zoo.spec is not None:
        lines.append(f"| zoo spec | `{cfg.zoo.spec}` |")
    elif cfg.zoo.builder:
        lines.append(f"| architecture | `{cfg.zoo.builder}` |")
    zoo_warnings = info.get("zoo_warnings") or []
    d = info.get("data") or (data.info if data is not None else {})
    if d:
        lines.append(f"| data | {d.get('name', cfg.data.name)}: train {d.get('train', '?')}, "
                     f"val {d.get('val', '?')}, test {d.get('test', '?')} |")
    lines.append(f"| steps | {result.steps} of {cfg.train.steps} (batch {cfg.train.batch_size}) |")
    lines.append(f"| wall time | {result.wall_time_s:.1f} s |")
    lines.append(f"| optimizer | {cfg.optim.name} lr {cfg.optim.lr} "
                 f"(head {cfg.optim.head_lr or cfg.optim.lr}, gates {cfg.optim.gate_lr or cfg.optim.lr}), "
                 f"schedule {cfg.schedule.name} |")
    lines.append(f"| weights selected | {cfg.train.select}"
                 + (f" (best val at step {result.best_step})" if result.best_step is not None else "") + " |")
    lines.append("")
    if zoo_warnings:
        lines.append("**Zoo warnings**:\n")
        lines += [f"- {w}" for w in zoo_warnings]
        lines.append("")

    lines.append("## Results\n")
    metric_names = sorted({k for m in result.metrics.values() for k in m})
    if metric_names:
        fmt = task.format_metric if task is not None else (lambda k, v: f"{v:.4g}")
        lines.append("| split | " + " | ".join(metric_names) + " |")
        lines.append("|---|" + "---|" * len(metric_names))
        for split, m in result.metrics.items():
            lines.append(f"| {split} | " + " | ".join(
                fmt(k, m[k]) if isinstance(m.get(k), (int, float)) else "-" for k in metric_names) + " |")
    else:
        lines.append("No evaluation (no val/test data, or the run was interrupted).")
    lines.append("")

    example = example_batch(data, getattr(task, "input_field", "image")) if costs is None else None
    if costs is not None or example is not None:
        try:
            c = costs if costs is not None else model_costs(model, example)
            lines.append("## Cost (per input sample)\n")
            lines.append("| model | parameters | FLOPs |\n|---|---|---|")
            lines.append(f"| training | {_human(c['train_params'])} | {_human(c['train_flops'])} |")
            lines.append(f"| inference: {c['inference_kind']} | {_human(c['inference_params'])} | "
                         f"{_human(c['inference_flops'])} |")
            lines.append("\nFLOPs from `torch.utils.flop_counter.FlopCounterMode` "
                         "(one multiply-add = 2 FLOPs).\n")
            info["costs"] = c
        except Exception as exc:  # noqa: BLE001 - costs are informative only
            lines.append(f"(cost counting failed: {exc.__class__.__name__}: {exc})\n")

    if hasattr(model, "gate_values"):
        from zootune.viz import gate_matrix, plot_gate_heatmap

        gates = model.gate_values()
        if gates:
            plot_gate_heatmap(gates, out / "gates.png", source_names=zoo_names,
                              title=f"gates ({'lite: abar' if getattr(model, 'lite', False) else 'mean per-sample gate'})")
            mat, layers = gate_matrix(gates)
            lines.append("## Gates\n")
            lines.append("![gate heatmap](gates.png)\n")
            names = zoo_names if zoo_names and len(zoo_names) == mat.shape[0] else [
                f"source {i}" for i in range(mat.shape[0])]
            lines.append("Mean gate per source over layers: " + ", ".join(
                f"{n} {mat[i].mean():.3f}" for i, n in enumerate(names)) + "\n")
    if method is not None:  # the method's own lines and pictures (Method.report_section)
        try:
            lines += method.report_section(model, data, out)
        except Exception as exc:  # noqa: BLE001 - a failed picture must not lose the report
            lines.append(f"({method.name} report section failed: {exc.__class__.__name__}: {exc})\n")
    if task is not None:
        try:
            lines += task.report_section(model, data, out)
        except Exception as exc:  # noqa: BLE001 - a failed picture must not lose the report
            lines.append(f"({task.name} report section failed: {exc.__class__.__name__}: {exc})\n")
    if result.history:
        from zootune.viz import plot_learning_curves

        plot_learning_curves(result.history, out / "curves.png", title=title)
        lines.append("## Learning curves\n")
        lines.append("![learning curves](curves.png)\n")

    lines.append("## Files\n")
    lines.append("`config.yaml` (resolved config), `metrics.jsonl` (events), `tb/` (TensorBoard), "
                 "`checkpoints/` (resume with `zootune tune config.yaml --resume` and the same "
                 "out_dir), `model.safetensors` (final weights; `zootune export` makes a deployable "
                 "file).\n")
    lines.append("## Config\n")
    lines.append("```yaml\n" + cfg.to_yaml() + "```\n")
    path = out / "report.md"
    from zootune.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines))
    return path
