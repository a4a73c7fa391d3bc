"""Run a comparison: every cell trained once, fine-tuned sources shared, resumable.

Runs are stored by content: ``OUT/runs/<method>[-<source>]-s<seed>-<hash>/``, where the hash is
that of the run's config without the settings that do not change the result (name, folders,
logging, progress, threads, device). A method's earlier stages (e.g. ``finetune_<member>`` of
``ensemble``, ``distill``, ``ced``/``fe`` +finetuned) are run first into their own content
folder, which is exactly the folder of the ``finetune`` baseline for that member and seed, and
linked into the method's run as ``stages/<name>`` (where :func:`zootune.train.run_config` finds
them finished). So each fine-tuned source is trained once per (source, seed, recipe), whatever
the number of methods that use it.

A run is finished when its folder holds ``compare.json`` (metrics, measured costs, wall time,
and for a model with per-sample gates the routing statistics of :mod:`zootune.compare.routing`
on its test split);
``OUT/cells.json`` records every finished cell. Running a comparison again skips finished cells
and resumes an unfinished run from its latest checkpoint (``train.checkpoint_every``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zootune.atomic import atomic_write_text, exclusive_lock
from zootune.compare.spec import CompareSpec, plan_cells
from zootune.config import Config

__all__ = ["CompareResult", "gate_record", "measure_costs", "recount_costs", "run_compare", "run_dir_name",
           "run_key"]

#: settings that do not change what a run computes (left out of its content hash)
_COSMETIC = {
    "": ("name", "out_dir"),
    "train": ("progress", "tensorboard", "log_every", "checkpoint_every", "keep_checkpoints",
              "threads", "device", "eval_batch_size"),
    "data": ("num_workers",),
}

RUN_RECORD = "compare.json"


def run_key(cfg: Config) -> str:
    """12 hex digits identifying what ``cfg`` computes (see the module docstring)."""
    d = cfg.to_dict()
    for section, keys in _COSMETIC.items():
        node = d if not section else d.get(section, {})
        for k in keys:
            node.pop(k, None)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_dir_name(cfg: Config) -> str:
    """``<method>[-<source>]-s<seed>-<key>``."""
    m = cfg.method
    src = getattr(m, "source", None)
    base = m.name + (f"-{src}" if src is not None and m.name == "finetune" else "")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)
    return f"{base}-s{cfg.train.seed}-{run_key(cfg)}"


class _LossForward(nn.Module):
    """``forward(x)`` = the method's training loss on a batch with input ``x`` (for counting
    the FLOPs of one training step's forward: the model, teachers and extra modules)."""

    def __init__(self, method: Any, model: nn.Module, task: Any, batch: dict[str, Any],
                 extras: dict[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.extras = nn.ModuleDict(extras)
        self._method, self._task, self._batch = method, task, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = dict(self._batch)
        batch[self._task.input_field] = x
        return self._method.loss(self.model, batch, self._task)[0]


def _teacher_params(method: Any) -> int:
    from zootune.report import count_params

    n = 0
    for attr in ("teachers",):
        t = getattr(method, attr, None)
        if isinstance(t, nn.Module):
            n += count_params(t)
    return n


def measure_costs(run: Any, n: int | None = None) -> dict[str, Any]:
    """Per-sample costs of a built run (before training), counted by
    :func:`zootune.report.count_flops` (2 FLOPs per multiply-add) on a batch of ``n`` training
    samples (default: the run's ``train.batch_size``, so that per-batch work such as Zoo-Tuning's
    channel alignment ``T_i W_i``, computed once per step, is shared by the samples of one real
    step, as in training):

    * ``train_flops``: one training step's forward as the method computes it (its loss: the
      model, plus teachers and extra modules where the method uses them); for Knowledge Flow
      this is the phase with teachers attached;
    * ``train_params``: the model, extra modules and teachers the step uses;
    * ``inference_flops`` / ``inference_params``: the deployed model
      (:func:`zootune.report.model_costs`: lite Zoo-Tuning's export, an ensemble's m members).
    """
    from zootune.data.sample import collate_samples
    from zootune.report import count_flops, count_params, model_costs

    model, task, method = run.model, run.task, run.method
    ds = run.data.train
    n = int(n or run.cfg.train.batch_size)
    batch = collate_samples([ds[i] for i in range(min(n, len(ds)))] * (2 if len(ds) < 2 else 1))
    device = next(model.parameters()).device
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    x = batch[task.input_field]
    extras = dict(method.extra_modules(model))
    saved = {k: copy.deepcopy(m.state_dict()) for k, m in extras.items()}
    rng = torch.random.get_rng_state()
    try:
        probe = _LossForward(method, model, task, batch, extras)
        train_flops = count_flops(probe, x, train=True) / x.shape[0]
        model.train()  # count_flops restores the probe's mode, not the model's own
        inf = model_costs(model, x)
    finally:
        for k, m in extras.items():
            m.load_state_dict(saved[k])
        torch.random.set_rng_state(rng)
    extra_params = sum(count_params(m) for m in extras.values())
    return {"train_flops": train_flops,
            "train_params": count_params(model) + extra_params + _teacher_params(method),
            "inference_flops": inf["inference_flops"], "inference_params": inf["inference_params"],
            "inference_kind": inf["inference_kind"]}


def gate_record(model: nn.Module) -> dict[str, Any] | None:
    """``{"layers": [L names], "values": m x L}``: a Zoo-Tuning model's gate per source and
    aggregated layer (``gate_values()``: lite's temporal ensemble, else the running mean of the
    per-sample gates; the paper's Fig. 5/6), or ``None`` for a model without gates."""
    fn = getattr(model, "gate_values", None)
    gates = fn() if callable(fn) else None
    if not gates:
        return None
    from zootune.viz.gates import gate_matrix

    mat, layers = gate_matrix(gates)
    return {"layers": layers, "values": mat.tolist()}


def _finished(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / RUN_RECORD
    if not f.is_file():
        return None
    return json.loads(f.read_text())


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (a relative symlink; a copy where links are not possible)."""
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        if link.is_symlink():
            link.unlink()
        else:
            shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    except OSError:  # pragma: no cover - e.g. Windows without the privilege
        shutil.copytree(target, link)


class _Loaded:
    """Zoos and data sets already loaded, reused by the next runs that configure the same."""

    def __init__(self) -> None:
        self.zoos: dict[str, Any] = {}
        self.data: dict[str, Any] = {}

    @staticmethod
    def zoo_key(cfg: Config) -> str:
        return json.dumps(cfg.zoo.model_dump(mode="json"), sort_keys=True)

    def data_key(self, cfg: Config) -> str:
        return self.zoo_key(cfg) + json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)


def train_run(cfg: Config, run_dir: Path, *, stage_dirs: dict[str, Path] | None = None,
              report: bool = True, loaded: _Loaded | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Train ``cfg`` into ``run_dir`` (resuming it) unless finished; its record, or ``None``
    when interrupted. ``stage_dirs``: finished earlier stages to link in."""
    done = _finished(run_dir)
    if done is not None:
        return done
    with _run_lock(run_dir, log):
        return _train_run_locked(cfg, run_dir, stage_dirs=stage_dirs, report=report, loaded=loaded,
                                 log=log)


def _run_lock(run_dir: Path, log: Callable[[str], None]):
    """An exclusive lock on ``run_dir`` (two comparisons sharing a folder never train the same
    run at once: the second waits, then finds the run finished)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(run_dir / ".lock",
                          on_wait=lambda: log(f"{run_dir.name}: another process is training it; waiting"))


def _train_run_locked(cfg: Config, run_dir: Path, *, stage_dirs: dict[str, Path] | None,
                      report: bool, loaded: _Loaded | None,
                      log: Callable[[str], None]) -> dict[str, Any] | None:
    from zootune.methods import build_method
    from zootune.train import run_config

    done = _finished(run_dir)
    if done is not None:
        return done
    for name, d in (stage_dirs or {}).items():
        _link(d, run_dir / "stages" / name)
    loaded = loaded or _Loaded()
    needs_heads = build_method(cfg.method).needs_source_heads
    zk, dk = loaded.zoo_key(cfg), loaded.data_key(cfg)
    zoo = None if needs_heads else loaded.zoos.get(zk)
    data = loaded.data.get(dk)
    costs: dict[str, Any] = {}
    last: dict[str, Any] = {}

    def on_stage(name: str, run: Any) -> None:
        last["run"] = run
        if not needs_heads:
            loaded.zoos.setdefault(zk, run.zoo)
        loaded.data.setdefault(dk, run.data)
        if name == "main" or not costs:
            costs.clear()
            costs.update(measure_costs(run))
            costs["method"] = run.method.describe()

    t0 = time.time()
    resume = (run_dir / "checkpoints" / "latest.json").is_file()
    res = run_config(cfg, run_dir, resume=resume, report=report, zoo=zoo, data=data, on_stage=on_stage)
    if res.interrupted:
        return None
    wall = time.time() - t0
    record = {"config_key": run_key(cfg), "method": cfg.method.model_dump(mode="json"),
              "seed": cfg.train.seed, "steps": res.steps, "metrics": res.metrics,
              "wall_time_s": wall, "best_step": res.best_step, "costs": costs}
    if "run" in last:  # per-sample gates only (not timed: an analysis, not training)
        from zootune.compare.routing import routing_report

        run = last["run"]
        rep = routing_report(res.model, run.data, input_field=run.task.input_field)
        if rep is not None:
            record["routing"] = rep
    gates = gate_record(res.model)
    if gates is not None:
        record["gates"] = gates
    atomic_write_text(run_dir / RUN_RECORD, json.dumps(record, indent=2, default=str))
    return record


class CompareResult(dict):
    """What :func:`run_compare` returns: ``cells`` (id -> record), ``summary`` (rows),
    ``interrupted``, and the paths of ``results.json`` / ``results.md``."""


def run_compare(spec: CompareSpec, out_dir: str | Path | None = None, *,
                log: Callable[[str], None] = print, only: list[str] | None = None) -> CompareResult:
    """Run every unfinished cell of ``spec`` into ``out_dir`` and write the tables.

    ``only``: entry labels to run now (the others are still summarised if finished).
    """
    from zootune.compare.table import summarize, write_tables
    from zootune.methods import build_method

    out = Path(out_dir or spec.options.out_dir or Path("runs") / f"compare_{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    cells_file = out / "cells.json"
    cells: dict[str, Any] = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    plan = plan_cells(spec)
    loaded = _Loaded()
    interrupted = False
    trained = skipped = 0
    for i, cell in enumerate(plan, 1):
        if only and cell.entry not in only:
            continue
        prev = cells.get(cell.id)
        if prev is not None and (out / prev["run"] / RUN_RECORD).is_file():
            skipped += 1
            continue
        cfg = copy.deepcopy(cell.cfg)
        stages = build_method(cfg.method).stages(cfg)
        # every folder is named before anything runs (a run binds its task, which may fill
        # in options such as the number of classes)
        stage_dirs = {s.name: out / "runs" / run_dir_name(s.cfg) for s in stages[:-1]}
        main_dir = out / "runs" / run_dir_name(stages[-1].cfg)
        log(f"[{i}/{len(plan)}] {cell.id} -> {main_dir.name}")
        stage_records = {}
        for s in stages[:-1]:
            rec = train_run(s.cfg, stage_dirs[s.name], report=False, loaded=loaded, log=log)
            if rec is None:
                interrupted = True
                break
            stage_records[s.name] = rec
        if interrupted:
            break
        existed = _finished(main_dir) is not None
        rec = train_run(cfg, main_dir, stage_dirs=stage_dirs, report=spec.options.reports,
                        loaded=loaded, log=log)
        if rec is None:
            interrupted = True
            break
        trained += 0 if existed else 1
        cells[cell.id] = {
            "entry": cell.entry, "variant": cell.variant, "seed": cell.seed,
            "method": cfg.method.name, "source": cell.source,
            "run": str(main_dir.relative_to(out)), "steps": rec["steps"],
            "metrics": rec["metrics"], "costs": rec["costs"], "wall_time_s": rec["wall_time_s"],
            "routing": rec.get("routing"), "gates": rec.get("gates"),
            "stages": {n: {"run": str(stage_dirs[n].relative_to(out)), "costs": r.get("costs", {}),
                           "wall_time_s": r["wall_time_s"], "metrics": r["metrics"]}
                       for n, r in stage_records.items()},
        }
        # merge with the file as it is now: another process may be running other entries of
        # this comparison into the same folder (``--only``); neither loses the other's cells
        on_disk = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
        cells = {**cells, **on_disk, cell.id: cells[cell.id]}
        atomic_write_text(cells_file, json.dumps(cells, indent=2, default=str))
    if cells_file.is_file():
        cells = {**cells, **json.loads(cells_file.read_text())}
    summary = summarize(spec, plan, cells)
    files = write_tables(spec, summary, cells, out)
    log(f"{trained} cell(s) trained, {skipped} already finished; results: {files[1]}")
    return CompareResult(cells=cells, summary=summary, interrupted=interrupted,
                         results_json=files[0], results_md=files[1], out_dir=out)


def recount_costs(spec: CompareSpec, out_dir: str | Path | None = None, *,
                  log: Callable[[str], None] = print) -> int:
    """Measure the costs of the finished cells again (after a change of how costs are counted)
    and rewrite them in ``cells.json``, each run's record and the tables; returns how many.

    FLOPs and parameters depend on a model's structure, not on its trained weights, so each
    cell's model is rebuilt from its config (zoo and data loaded as for training) and counted by
    :func:`measure_costs`. A method with earlier stages (ensemble, distill...) needs their
    results to be built: those cells are left as they are.
    """
    from zootune.compare.table import summarize, write_tables
    from zootune.methods import build_method
    from zootune.train.build import build_run

    out = Path(out_dir or spec.options.out_dir or Path("runs") / f"compare_{spec.name}")
    cells_file = out / "cells.json"
    cells: dict[str, Any] = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    plan = plan_cells(spec)
    loaded = _Loaded()
    n = 0
    for cell in plan:
        rec = cells.get(cell.id)
        record_file = out / rec["run"] / RUN_RECORD if rec else None
        if record_file is None or not record_file.is_file():
            continue
        method = build_method(cell.cfg.method)
        if len(method.stages(cell.cfg)) > 1:
            continue
        zk, dk = loaded.zoo_key(cell.cfg), loaded.data_key(cell.cfg)
        run = build_run(cell.cfg, zoo=None if method.needs_source_heads else loaded.zoos.get(zk),
                        data=loaded.data.get(dk))
        if not method.needs_source_heads:
            loaded.zoos.setdefault(zk, run.zoo)
        loaded.data.setdefault(dk, run.data)
        costs = {**measure_costs(run), "method": run.method.describe()}
        if {k: rec["costs"].get(k) for k in costs} != costs:
            log(f"{cell.id}: costs recounted (train FLOPs {rec['costs'].get('train_flops')} -> "
                f"{costs['train_flops']})")
        rec["costs"] = costs
        record = json.loads(record_file.read_text())
        record["costs"] = costs
        atomic_write_text(record_file, json.dumps(record, indent=2, default=str))
        n += 1
    on_disk = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    cells = {**on_disk, **{k: v for k, v in cells.items() if k in on_disk}}
    atomic_write_text(cells_file, json.dumps(cells, indent=2, default=str))
    write_tables(spec, summarize(spec, plan, cells), cells, out)
    return n
