"""The trainer as a library: one loop for every supervised task and every model.

Python API (stable; the CLI ``zootune tune`` is a thin layer over it)::

    from zootune.config import load_config, build_config
    from zootune.train import build_run, fit, evaluate

    cfg = build_config({"preset": "adam", "method": "zoo_tuning_lite",
                        "zoo": {...}, "data": {"name": "digits", "labels_per_class": 10},
                        "train": {"steps": 400, "batch_size": 32}})   # or load_config("x.yaml", ["optim.lr=1e-3"])
    run = build_run(cfg)                     # zoo -> task head -> method model; data splits
    res = fit(run.model, run.task, run.data, cfg, out_dir="runs/x", run_info=run.info())
    res.metrics["test"]["accuracy"]; res.model  # trained model (ZooModel or plain), eval mode
    evaluate(res.model, run.task, run.data.test, batch_size=256)   # {"loss", "accuracy"}

Pieces usable on their own:

* ``fit(model, task, data, cfg, out_dir=None, *, resume=False, run_info=None, report=True,
  on_log=None) -> FitResult`` — ``model``: any ``nn.Module`` or ``zootune.ZooModel`` already
  carrying the task head (``task.prepare_zoo(models)`` adds one; ``task.head_name`` names it);
  ``task``: :class:`zootune.tasks.Task`; ``data``: :class:`zootune.data.DataSplits`; ``cfg``:
  :class:`zootune.config.Config` (its ``optim``, ``schedule``, ``train``, ``data.num_workers``
  are used). ``out_dir=None`` writes nothing (fast repeated runs); with a folder it writes
  ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``model.safetensors``,
  ``result.json``, ``report.md`` + PNGs.
* ``FitResult``: ``model``, ``metrics`` (``{"val": {...}, "test": {...}}``), ``steps``,
  ``wall_time_s``, ``history`` (logged events), ``best_step``, ``best_val``, ``interrupted``,
  ``out_dir``, ``checkpoint``.
* ``evaluate(model, task, dataset, *, batch_size=256, device=None) -> dict[str, float]``.
* ``build_run(cfg) -> Run(cfg, model, task, data, zoo)``; ``build_method_model(cfg, task, zoo)``
  applies ``cfg.method`` (zoo_tuning, zoo_tuning_lite, finetune, average_aggregation) to a
  :class:`Zoo` (``Zoo(models, names, preprocessing)``) you built yourself.
* ``zootune.train.restore.load_run(run_dir, weights="final"|"best"|"latest",
  data_overrides=[...]) -> (Run, weights_path)`` rebuilds a run's trained model from its
  folder without reading the source checkpoints again (what ``zootune eval``/``export`` use).
* Errors a user can fix are :class:`zootune.errors.ZootuneError` subclasses (``ConfigError``,
  ``DataError``, ``CheckpointError``, ``TrainingError`` for a diverged loss): one line in the CLI.

Reproducibility: ``build_method_model`` seeds the global RNG with ``train.seed`` before creating
new modules; ``fit`` reseeds, uses deterministic algorithms (``train.deterministic``), a fixed
per-sample kernel instead of ``kernel: auto`` timing, and batches that are a pure function of
``(seed, step)`` — so reruns, resumed runs and DDP runs (same global batch) agree.

Selection on validation only: ``train.select: best`` restores the best-on-val weights before the
test evaluation; ``last`` (default) keeps the final weights.
"""

from zootune.train.build import Run, Zoo, build_method_model, build_run, load_zoo_from_config
from zootune.train.loop import FitResult, evaluate, fit

__all__ = ["FitResult", "Run", "Zoo", "build_method_model", "build_run", "evaluate", "fit",
           "load_zoo_from_config"]
