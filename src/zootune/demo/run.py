"""The demo comparison: one target task, one budget, one seed, every method.

On the demo target (:func:`zootune.demo.data.target_splits`: real handwritten digits + held-apart
Greek letters, few labels per class) and the shipped mini zoo (:mod:`zootune.demo.zoo`), with the
same recipe for every method (:data:`RECIPE`: Adam, cosine schedule, the same steps, batch size
and seed; nothing tuned on test):

* ``finetune_<source>``: each source model fine-tuned alone with a fresh head;
  ``finetune_best`` is the one with the best *validation* accuracy, reported on test;
* ``average_aggregation``: the zoo's plain weight average (fixed equal gates, no alignment);
* ``zoo_tuning``: per-sample adaptive aggregation (paper Eq. 2);
* ``zoo_tuning_lite``: lite Zoo-Tuning (batch-mean gates + temporal ensemble, §3.3);
* ``exported_lite``: the single plain model exported from the lite model (Eq. 5).

Every model is built by :func:`zootune.train.build_run` (the method registry) and trained by
:func:`zootune.train.fit`, the same code ``zootune tune`` runs. :func:`run_demo` returns a
JSON-ready dict; :func:`write_outputs` writes ``results.json``, ``report.md``, the gate heatmap and
the exported model.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from zootune.demo.zoo import DEFAULT_ZOO, load_demo_zoo

__all__ = ["RECIPE", "METHODS", "demo_config", "run_demo", "routing", "write_outputs", "format_table"]

#: The one recipe every method gets (fixed before looking at any test number).
RECIPE: dict[str, Any] = {
    "labels_per_class": 10,
    "greek": True,
    "steps": 300,
    "batch_size": 32,
    "lr": 1e-3,
    "head_lr": None,  # None: same as lr
    "gate_lr": None,
    "warmup_steps": 20,
    "weight_decay": 0.0,
    "gate": "normalized",
    "gate_init": "uniform",
    "gate_hidden": None,
    "align": "default",  # every k>1 conv gets a channel alignment T_i (appendix A.2)
    "align_lr": None,  # None: same as lr
    "threads": 1,  # intra-op threads: tiny convs gain little from more; contention costs a lot
}

#: Aggregation methods (besides fine-tuning each source).
METHODS = ("average_aggregation", "zoo_tuning", "zoo_tuning_lite")


def demo_config(method: str, seed: int, recipe: dict[str, Any], source: int = 0):
    """The trainer config of one demo run (a :class:`zootune.config.Config`)."""
    from zootune.config import build_config

    options: dict[str, Any] = {"name": method}
    if method == "finetune":
        options["source"] = source
    elif method in ("zoo_tuning", "zoo_tuning_lite"):
        options.update(gate=recipe["gate"], gate_init=recipe["gate_init"],
                       gate_hidden=recipe["gate_hidden"], align=recipe["align"])
    return build_config({
        "recipe": "adam",
        "name": method,
        "method": options,
        "zoo": {"spec": "demo"},
        "data": {"name": "demo_target", "labels_per_class": recipe["labels_per_class"],
                 "val_fraction": 0.2, "test_fraction": 0.2, "seed": seed, "options": {"greek": recipe["greek"]}},
        "optim": {"name": "adam", "lr": recipe["lr"], "head_lr": recipe["head_lr"],
                  "gate_lr": recipe["gate_lr"], "align_lr": recipe["align_lr"],
                  "weight_decay": recipe["weight_decay"]},
        "schedule": {"name": "cosine", "warmup_steps": recipe["warmup_steps"]},
        "train": {"steps": recipe["steps"], "batch_size": recipe["batch_size"], "eval_every": 0,
                  "log_every": 25, "checkpoint_every": 0, "seed": seed, "select": "last",
                  "tensorboard": False, "progress": False, "threads": recipe["threads"]},
    })


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def routing(model: torch.nn.Module, dataset, groups: dict[str, Callable[[int], bool]],
            batch_size: int = 256) -> dict[str, dict[str, list[float]]]:
    """Mean per-sample gates of each aggregated layer over each group of samples.

    ``groups`` maps a name to a predicate on the label (e.g. digits vs Greek letters). Returns
    ``{group: {layer: [mean gate of each source]}}`` — how differently the zoo is used for
    different kinds of input (per-sample Zoo-Tuning only).
    """
    from torch.utils.data import DataLoader

    from zootune.data.sample import collate_samples

    layers = {n: m for n, m in model.named_modules() if hasattr(m, "gate") and hasattr(m, "te")}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [mod.gate.register_forward_hook(lambda _m, _i, out, n=n: seen[n].append(out.detach()))
             for n, mod in layers.items()]
    labels = []
    try:
        model.eval()
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples):
            model(batch["image"])
            labels.append(torch.as_tensor(batch["label"]))
    finally:
        for h in hooks:
            h.remove()
    y = torch.cat(labels)
    out: dict[str, dict[str, list[float]]] = {}
    for g, pred in groups.items():
        mask = torch.tensor([bool(pred(int(v))) for v in y])
        if mask.any():
            out[g] = {n: torch.cat(seen[n])[mask].mean(0).tolist() for n in layers}
    return out


def run_demo(seed: int = 0, recipe: dict[str, Any] | None = None,
             zoo_names: Sequence[str] = DEFAULT_ZOO, methods: Sequence[str] = METHODS,
             finetune: bool = True, log: Callable[[str], None] = print,
             keep_models: bool = False, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every method on the demo target with one recipe and seed; return the results dict.

    ``results["methods"]`` has ``finetune_<source>`` for every source, ``finetune_best`` (chosen
    on validation), the aggregation methods and ``exported_lite``; each entry has ``accuracy``
    (test), ``val_accuracy``, ``params`` and ``train_time_s``. With ``keep_models`` the trained
    models are returned under ``"_models"`` (not JSON). ``weights_dir``: another zoo build.
    """
    import zootune.demo.data  # noqa: F401 - registers the demo data sets
    from zootune.data import build_data
    from zootune.train import build_run, evaluate, fit

    rec = {**RECIPE, **(recipe or {})}
    t0 = time.time()
    zoo = load_demo_zoo(zoo_names, strip_heads="differing",  # the target replaces every head
                        **({"weights_dir": weights_dir} if weights_dir else {}))
    cfg0 = demo_config("finetune", seed, rec)
    data = build_data(cfg0.data)
    results: dict[str, Any] = {"methods": {}, "sources": {}, "seed": seed, "recipe": rec,
                               "zoo": list(zoo.names), "data": dict(data.info)}
    results["data"].pop("preprocessing", None)
    models: dict[str, torch.nn.Module] = {}
    groups = _groups(data.test) if rec["greek"] else {}

    def group_acc(model, task) -> dict[str, float]:
        return {g: evaluate(model, task, sub)["accuracy"] for g, sub in groups.items()}

    def train(method: str, source: int = 0) -> tuple[dict[str, Any], Any]:
        cfg = demo_config(method, seed, rec, source)
        run = build_run(cfg, zoo=zoo, data=data)  # the method copies the zoo's models
        task = run.task
        t = time.time()
        res = fit(run.model, task, data, cfg, out_dir=None, method=run.method, report=False)
        if res.interrupted:  # Ctrl-C / SIGTERM: stop the demo (the CLI prints "interrupted")
            raise KeyboardInterrupt
        entry = {"accuracy": res.metrics["test"]["accuracy"], "val_accuracy": res.metrics["val"]["accuracy"],
                 "test_loss": res.metrics["test"]["loss"], "params": _params(res.model),
                 "train_time_s": round(time.time() - t, 2)}
        if groups:
            entry["group_accuracy"] = group_acc(res.model, task)
        return entry, (res.model, task)

    if finetune:
        for i, name in enumerate(zoo.names):
            entry, (model, _) = train("finetune", i)
            entry["source"] = name
            results["methods"][f"finetune_{name}"] = entry
            results["sources"][name] = {**zoo.info["members"].get(name, {}),
                                        "finetune_accuracy": entry["accuracy"],
                                        "finetune_val_accuracy": entry["val_accuracy"]}
            if keep_models:
                models[f"finetune_{name}"] = model
            log(f"  finetune {name:10s} val {entry['val_accuracy']:.3f}  test {entry['accuracy']:.3f}"
                f"  ({entry['train_time_s']:.0f}s)")
        best = max(zoo.names, key=lambda n: results["methods"][f"finetune_{n}"]["val_accuracy"])
        results["methods"]["finetune_best"] = {**results["methods"][f"finetune_{best}"], "source": best}
    for method in methods:
        entry, (model, task) = train(method)
        entry["gates"] = {k: v.tolist() for k, v in model.gate_values().items()}
        results["methods"][method] = entry
        models[method] = model
        log(f"  {method:22s} val {entry['val_accuracy']:.3f}  test {entry['accuracy']:.3f}"
            f"  ({entry['train_time_s']:.0f}s)")
        if method == "zoo_tuning_lite":
            plain = model.export()
            ev_t = evaluate(plain, task, data.test)
            ev_v = evaluate(plain, task, data.val)
            results["methods"]["exported_lite"] = {
                "accuracy": ev_t["accuracy"], "val_accuracy": ev_v["accuracy"], "test_loss": ev_t["loss"],
                "params": _params(plain), "train_time_s": entry["train_time_s"],
                "max_abs_logit_diff_vs_lite": _max_diff(model, plain, data.test)}
            models["exported_lite"] = plain
            log(f"  {'exported_lite':22s} val {ev_v['accuracy']:.3f}  test {ev_t['accuracy']:.3f}"
                f"  ({results['methods']['exported_lite']['params']} params)")
        if method == "zoo_tuning" and rec["greek"]:
            results["methods"][method]["routing"] = routing(
                model, data.test, {"digits": lambda y: y < 10, "greek": lambda y: y >= 10})
    results["wall_time_s"] = round(time.time() - t0, 1)
    results["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "machine": platform.machine()}
    if keep_models:
        results["_models"] = models
    return results


def _groups(dataset) -> dict[str, Any]:
    """Test subsets by kind of input: handwritten digits (labels 0-9) and Greek letters (10-19)."""
    import numpy as np
    from torch.utils.data import Subset

    y = np.asarray(dataset.targets)
    return {"digits": Subset(dataset, np.flatnonzero(y < 10).tolist()),
            "greek": Subset(dataset, np.flatnonzero(y >= 10).tolist())}


@torch.no_grad()
def _max_diff(a: torch.nn.Module, b: torch.nn.Module, dataset, n: int = 256) -> float:
    from torch.utils.data import DataLoader

    from zootune.data.sample import collate_samples

    x = next(iter(DataLoader(dataset, batch_size=n, collate_fn=collate_samples)))["image"]
    a.eval()
    b.eval()
    return float((a(x) - b(x)).abs().max())


_ORDER = ("finetune_best", "average_aggregation", "zoo_tuning", "zoo_tuning_lite", "exported_lite")


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the methods: test / val accuracy (and per kind of input), parameters."""
    ms = results["methods"]
    groups = sorted({g for e in ms.values() for g in e.get("group_accuracy", {})})
    head = "| method | test acc | val acc | " + "".join(f"test {g} | " for g in groups) + "parameters |"
    rows = [head, "|---|---:|---:|" + "---:|" * len(groups) + "---:|"]
    names = [k for k in ms if k.startswith("finetune_") and k != "finetune_best"]
    for k in list(_ORDER) + names:
        if k not in ms:
            continue
        e = ms[k]
        label = f"finetune_best ({e.get('source')})" if k == "finetune_best" else k
        params = f"{e['params']:,}" + (" (zoo model)" if k in METHODS else "")
        ga = e.get("group_accuracy", {})
        cells = "".join(f"{100 * ga[g]:.1f}% | " if g in ga else "— | " for g in groups)
        rows.append(f"| {label} | {100 * e['accuracy']:.1f}% | {100 * e['val_accuracy']:.1f}% | {cells}{params} |")
    return "\n".join(rows)


def write_outputs(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``results.json``, ``report.md``, ``gates.png`` and ``exported_lite.safetensors`` in ``out``."""
    from zootune.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = results.get("_models", {})
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    paths: dict[str, Path] = {}
    paths["results"] = out / "results.json"
    atomic_write_text(paths["results"], json.dumps(public, indent=2, ensure_ascii=False) + "\n")
    from zootune.viz.gates import plot_gate_heatmap

    for method, fname in (("zoo_tuning_lite", "gates_lite.png"), ("zoo_tuning", "gates.png")):
        if method in results["methods"]:
            gates = {k: torch.tensor(v) for k, v in results["methods"][method]["gates"].items()}
            paths[fname] = plot_gate_heatmap(gates, out / fname, source_names=results["zoo"],
                                             title=f"{method}: gates per layer and source")
    if "exported_lite" in models:
        from zootune.export import save

        paths["model"] = save(models["exported_lite"], out / "exported_lite.safetensors",
                              metadata={"architecture": "zootune.demo.model:MiniCNN",
                                        "num_classes": len(_classes(results))})
    paths["report"] = atomic_write_text(out / "report.md", _report(public, paths))
    return paths


def _classes(results: dict[str, Any]) -> list[str]:
    from zootune.data.glyphs import GREEK_HELD_APART

    return [str(c) for c in range(10)] + (list(GREEK_HELD_APART) if results["recipe"]["greek"] else [])


def _report(results: dict[str, Any], paths: dict[str, Path]) -> str:
    rec = results["recipe"]
    d = results["data"]
    lines = [
        "# zootune demo",
        "",
        "Target: scikit-learn handwritten digits" + (" + 10 held-apart Greek letters" if rec["greek"] else "")
        + f", {rec['labels_per_class']} labels per class ({d['train']} train, {d['val']} val, "
        f"{d['test']} test images, 16x16).",
        f"Zoo: {', '.join(results['zoo'])} (MiniCNN; `base` pretrained on all scripts, the others "
        "fine-tuned from it on their own glyph domain).",
        f"Recipe (every method): Adam lr {rec['lr']}, cosine schedule, {rec['steps']} steps, batch "
        f"{rec['batch_size']}, seed {results['seed']}; gates `{rec['gate']}`, init `{rec['gate_init']}`.",
        "`finetune_best` is the source with the best validation accuracy.",
        "",
        format_table(results),
        "",
    ]
    r = results["methods"].get("zoo_tuning", {}).get("routing")
    if r:
        lines += ["## Per-sample routing (zoo_tuning, mean gate on test samples, last aggregated layer)", "",
                  "| samples | " + " | ".join(results["zoo"]) + " |",
                  "|---|" + "---:|" * len(results["zoo"])]
        for g, layers in r.items():
            last = list(layers)[-1]
            lines.append(f"| {g} | " + " | ".join(f"{v:.3f}" for v in layers[last]) + " |")
        lines.append("")
    for key in ("gates.png", "gates_lite.png", "model"):
        if key in paths:
            lines.append(f"- `{paths[key].name}`")
    lines += ["", f"Wall time: {results['wall_time_s']:.0f} s (torch {results['environment']['torch']}, "
              f"{results['environment']['threads']} threads)."]
    return "\n".join(lines) + "\n"
