"""Saving and loading models: safetensors weights + JSON metadata, never pickle.

* ``save(zoo_model, path)`` writes the ZooModel's state dict (source weights, alignments, gates,
  temporal-ensemble buffers, norm layers, head) and, in the safetensors header, JSON metadata
  with everything ``zoo_tune`` needs to rebuild the same structure (layer names, alignment,
  lite, gate settings, number of sources).
* ``load(path, template=...)`` rebuilds that structure from ``template`` — a module of the source
  architecture (random weights are fine) or a zero-argument callable returning one — and loads
  the weights: the result computes exactly what the saved model computed.
* ``save(plain_module, path)`` writes a plain state dict (e.g. ``zm.export()``), loadable with
  ``model.load_state_dict(safetensors.torch.load_file(path))`` and no zootune at all.

Files are written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted save never leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_write
from .convert import ZooModel, zoo_tune
from .errors import CheckpointError

FORMAT_KEY = "zootune"
FORMAT_VERSION = 1


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, contiguous; tensors that share storage (tied weights) are
    copied, as safetensors stores every name as its own tensor."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in module.state_dict().items():
        t = v.detach().contiguous().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def save(module: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``module`` to ``path`` (safetensors). A :class:`ZooModel` keeps its structure in the
    metadata; any other module is written as a plain state dict."""
    info: dict[str, Any] = {"format_version": FORMAT_VERSION, "extra": metadata or {}}
    if isinstance(module, ZooModel):
        info["kind"] = "zoo_model"
        info["settings"] = module.settings
    else:
        info["kind"] = "plain"
        info["class"] = f"{type(module).__module__}.{type(module).__qualname__}"
    header = {FORMAT_KEY: json.dumps(info)}
    tensors = _tensors(module)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The zootune metadata of a saved file (``{}`` for a safetensors file zootune did not write)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    raw = meta.get(FORMAT_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt zootune metadata ({exc})") from None


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None


def run_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run`` record (config, task, method) that the trainer writes into its model files."""
    extra = read_metadata(path).get("extra") or {}
    run = extra.get("run")
    return run if isinstance(run, dict) else None


def load(
    path: str | os.PathLike,
    template: nn.Module | Callable[[], nn.Module] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load what :func:`save` wrote, or a training run's model.

    ``path``: a file written by :func:`save` (or by the trainer: a run's ``model.safetensors``,
    ``best.safetensors`` or a checkpoint's), or a run folder (its final weights).
    ``template`` gives the architecture (a module of the source architecture, or a callable that
    builds one; its weights are ignored). For a ZooModel file the ZooModel is rebuilt around it;
    a plain file is loaded into a copy of it. The template itself is not modified. Files the
    trainer wrote need no template: they carry their run's config, from which the structure is
    rebuilt (without reading the source checkpoints), in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        from zootune.train.restore import load_run

        return load_run(path)[0].model.to(device)
    info = read_metadata(path)
    if template is None:
        run = run_metadata(path)
        if run is None or "config" not in run:
            raise CheckpointError(
                f"{path}: pass template= (a module of the source architecture) to load it"
            )
        from zootune.train.restore import build_structure

        model = build_structure(run["config"], run.get("task")).model
        if isinstance(model, ZooModel) and info.get("settings", {}).get("kernel_plan"):
            model.set_kernels(info["settings"]["kernel_plan"])
        exported = run.get("exported") or {}
        if exported.get("plain") and isinstance(model, ZooModel):  # zootune export's plain file
            model = model.export(average_gates=not model.lite)
        load_state_into(model, path)
        return model.eval().to(device)
    tensors = _read_tensors(path, device)
    base = template() if callable(template) and not isinstance(template, nn.Module) else template
    if isinstance(base, ZooModel):
        base = base.model
    if not isinstance(base, nn.Module):
        raise CheckpointError(f"template must be an nn.Module or a callable returning one, got {type(base).__name__}")
    if info.get("kind") == "zoo_model":
        s = info["settings"]
        model = zoo_tune(
            [base] * int(s["num_sources"]),
            layers=list(s["layers"]),
            align=list(s["align"]) if s["align"] else False,
            lite=s["lite"],
            rest=0,
            gate=s["gate"],
            gate_init=s["gate_init"],
            gate_hidden=s["gate_hidden"],
            te_momentum=s["te_momentum"],
            kernel=s.get("kernel", "auto"),
            recompute=s.get("recompute", True),
        )
        model.settings["rest"] = s.get("rest", "average")
        if s.get("kernel_plan"):
            model.set_kernels(s["kernel_plan"])
    else:
        import copy

        model = copy.deepcopy(base)
    _load_state(model, tensors, path)
    return model.to(device)


def load_state_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the tensors of ``path`` into ``model`` (same structure; one clear error if not)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    p = next(iter(model.parameters()), None)
    tensors = _read_tensors(path, p.device if p is not None else "cpu")
    _load_state(model, tensors, path)
    return model


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the template: "
            + (f"missing '{missing[0]}' ({len(missing)} missing)" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected '{unexpected[0]}' ({len(unexpected)} unexpected)" if unexpected else "")
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: tensor '{k}' has shape {tuple(v.shape)} in the file but "
                f"{tuple(own[k].shape)} in the template"
            )
    model.load_state_dict(tensors, strict=True)


# ----------------------------------------------------------------------------------------------
# exporting a training run (``zootune export``)
# ----------------------------------------------------------------------------------------------


def export_run(path: str | os.PathLike, output: str | os.PathLike | None = None, *,
               weights: str = "final", average_gates: bool = False) -> tuple[Path, str, float | None]:
    """Write a run's trained model for deployment, with a Markdown model card beside it.

    Lite Zoo-Tuning and single models export as an ordinary model of the source architecture
    (lite: merged exactly, Eq. 5); per-sample Zoo-Tuning as a ZooModel file unless
    ``average_gates`` asks for the approximation merged with the mean observed gates. The file's
    metadata carries the run record (so :func:`load` rebuilds it with no template) and the exact
    evaluation preprocessing; the card shows it as torchvision code. Returns ``(file, kind,
    max |output difference| vs the trained model on a few validation inputs)``.
    """
    from zootune.atomic import atomic_write_text
    from zootune.data.sample import as_sample
    from zootune.train.restore import load_run

    run, wfile = load_run(path, weights=weights, with_data=True)
    run_dir = wfile.parent
    while not (run_dir / "config.yaml").is_file() and run_dir != run_dir.parent:
        run_dir = run_dir.parent
    out = Path(output) if output else run_dir / "export" / "model.safetensors"
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    model = run.model
    if isinstance(model, ZooModel):
        if model.lite or average_gates:
            target = model.export(average_gates=average_gates and not model.lite)
            kind = ("plain (lite Zoo-Tuning, merged exactly)" if model.lite else
                    "plain (per-sample Zoo-Tuning merged with mean gates: an approximation)")
        else:
            target, kind = model, "ZooModel (per-sample Zoo-Tuning: every source is kept)"
    else:
        target, kind = model, "plain (single model)"
    record = dict(run.record())
    record["exported"] = {"plain": not isinstance(target, ZooModel), "average_gates": bool(average_gates)}
    meta = {"run": record, "preprocessing": record.get("eval_preprocessing"),
            "task": run.task.describe(), "method": run.method.describe(), "zoo": list(run.zoo.names)}
    save(target, out, metadata=meta)

    diff = None
    ds = run.data.val or run.data.test
    if ds is not None and len(ds):
        field = run.task.input_field
        x = torch.stack([torch.as_tensor(as_sample(ds[i])[field]) for i in range(min(32, len(ds)))])
        with torch.no_grad():
            diff = float((target.eval()(x) - model.eval()(x)).abs().max())
    result: dict[str, Any] = {}
    rfile = run_dir / "result.json"
    if rfile.is_file():
        result = json.loads(rfile.read_text())
    atomic_write_text(out.with_suffix(".md"), model_card(run, out, kind, diff, result, wfile))
    return out, kind, diff


def model_card(run: Any, out: Path, kind: str, diff: float | None, result: dict[str, Any],
               wfile: Path) -> str:
    """The Markdown model card of an exported run."""
    from zootune.data.transforms import eval_transform_code
    from zootune.report import count_params

    cfg, task = run.cfg, run.task
    facts = task.describe()
    lines = [f"# Model card: {out.name}\n",
             f"- **Kind**: {kind}",
             f"- **Method**: {run.method.describe()}, trained with zootune (Zoo-Tuning, ICML 2021)",
             f"- **Zoo**: {', '.join(run.zoo.names)}",
             f"- **Task**: {task.name}" + "".join(
                 f"; {k} {v if not isinstance(v, list) else ', '.join(map(str, v[:20]))}"
                 for k, v in facts.items() if k != "task" and v not in (None, [])),
             f"- **Data**: {cfg.data.name}" + (f" ({cfg.data.root})" if cfg.data.root else ""),
             f"- **Source weights**: {wfile}",
             f"- **Parameters**: {count_params(run.model):,} (trained model)"]
    for split, v in (result.get("metrics") or {}).items():
        lines.append(f"- **{split}**: {task.summary_line(v)}")
    if diff is not None:
        lines.append(f"- **Export check**: max |output difference| vs the trained model on 32 "
                     f"validation inputs = {diff:.2e}")
    rec = run.data.info.get("eval_preprocessing") if run.data is not None else None
    if rec:
        lines.append(f"- **Input preprocessing** (also in the file's metadata, key "
                     f"`preprocessing`): `{json.dumps(rec)}`")
    lines.append("\n## Loading\n")
    lines.append("```python\nimport zootune\n"
                 f"model = zootune.load({out.name!r}).eval()   # the structure is in the file\n```")
    if kind.startswith("plain"):
        lines.append("\nWithout zootune: build the architecture (with the task's output size) and "
                     "`model.load_state_dict(safetensors.torch.load_file(...))`.")
    if rec:
        lines.append("\n## Preprocessing\n")
        lines.append("This is exactly what `zootune eval` feeds the model; the numbers above are "
                     "reproduced with it:\n")
        lines.append("```python\n" + eval_transform_code(rec) + "```")
    return "\n".join(lines) + "\n"
