"""Run a config end to end: every stage of its method, each trained by :func:`fit`.

:func:`run_config` is what ``zootune tune`` calls. A method with one stage (most) trains in the
run folder itself. A method with several stages (:meth:`zootune.methods.Method.stages`) trains
each earlier stage in ``RUN/stages/<name>/`` and hands its result to the later ones; a stage that
already finished (its ``result.json`` and ``model.safetensors`` exist) is loaded, not retrained,
so an interrupted multi-stage run resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from zootune.config import Config
from zootune.train.build import build_run
from zootune.train.loop import FitResult, fit


def _finished_stage(stage_dir: Path | None, name: str):
    from zootune.export import load
    from zootune.methods import StageResult

    if stage_dir is None or not (stage_dir / "result.json").is_file() \
            or not (stage_dir / "model.safetensors").is_file():
        return None
    result = json.loads((stage_dir / "result.json").read_text())
    model = load(stage_dir / "model.safetensors")
    return StageResult(name, model, result.get("metrics", {}), stage_dir)


def run_config(cfg: Config, out_dir: str | Path | None = None, *, resume: bool = False,
               base_dir: Path | None = None, report: bool = True, zoo: Any = None, data: Any = None,
               on_log: Callable[[dict[str, Any]], None] | None = None,
               on_stage: Callable[[str, Any], None] | None = None) -> FitResult:
    """Train every stage of ``cfg``'s method; return the last stage's :class:`FitResult`.

    ``zoo`` / ``data``: already loaded ones to reuse. ``on_stage(name, run)`` is called before
    each stage is trained (e.g. to print what is about to run).
    """
    from zootune.methods import StageResult, build_method

    out = Path(out_dir) if out_dir is not None else None
    stages = build_method(cfg.method).stages(cfg)
    previous: dict[str, StageResult] = {}
    result: FitResult | None = None
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        sdir = out if (out is None or last) else out / "stages" / stage.name
        if not last:
            done = _finished_stage(sdir, stage.name)
            if done is not None:
                previous[stage.name] = done
                continue
        same_data = stage.cfg.data == cfg.data
        # a zoo loaded for a method that drops differing heads is reused only by such methods
        share_zoo = stage.cfg.zoo == cfg.zoo and not build_method(stage.cfg.method).needs_source_heads
        run = build_run(stage.cfg, base_dir, stage=stage.name, previous=previous,
                        zoo=zoo if share_zoo else None, data=data if same_data else None)
        if zoo is None and share_zoo:
            zoo = run.zoo
        if data is None and same_data:
            data = run.data
        if on_stage is not None:
            on_stage(stage.name, run)
        result = fit(run.model, run.task, run.data, stage.cfg, sdir, method=run.method, resume=resume,
                     run_info=run.info(), record=run.record(), report=report and last, on_log=on_log)
        if result.interrupted:
            return result
        previous[stage.name] = StageResult(stage.name, result.model, result.metrics, sdir)
    assert result is not None
    return result
