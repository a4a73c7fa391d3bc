"""A resumable grid runner: games x methods x seeds, two single-thread runs side by side.

A grid config (YAML, e.g. ``zootune/configs/rl/grid_paper.yaml``)::

    base: der                      # the RL config every run starts from (file or shipped name)
    overrides: [run.steps=100000]  # applied to every run
    sources: {Seaquest: [0], Riverraid: [0]}   # source games and their seeds (train-source)
    targets: [Alien, Gopher, Jamesbond]
    methods: [scratch, finetune:Seaquest, finetune:Riverraid, knowledge_flow, zoo_tuning, zoo_tuning_lite]
    seeds: [0, 1, 2, 3, 4]
    workers: 2                     # runs at once, each with run.threads=1

Layout under the output folder: ``sources/<Game>/seed<S>/`` and
``<Target>/<method>/seed<S>/`` (``finetune:Seaquest`` -> ``finetune-Seaquest``); each is a
run folder of :func:`zootune.rl.loop.train_agent`. Sources run first (the target runs need
them; each target run uses the seed-0 source of every source game), then the targets seed by
seed (every method's seed 0, then seed 1, ...). A run whose
``result.json`` exists is skipped; a run that has checkpoints resumes from them — so the
runner can be killed at any time and started again, and ``--max-runs`` lets a long grid be
done over several invocations. A run holds a lock on its folder while it trains
(:func:`zootune.rl.loop.train_agent`), and the runner skips runs whose lock is held, so two
invocations at once (one per free core) never train the same run. Each run is a subprocess (``python -m zootune rl run``) with
``OMP_NUM_THREADS=1``: on a 2-core machine two single-thread runs give the best throughput.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from zootune.atomic import is_locked
from zootune.config import ConfigError, Section, _format_validation_error, read_yaml
from zootune.rl.config import RL_METHODS, resolve_rl_config, shipped_rl_configs


class GridConfig(Section):
    """See the module docstring."""

    base: str = "der"
    overrides: list[str] = Field(default_factory=list)
    sources: dict[str, list[int]] = Field(default_factory=lambda: {"Seaquest": [0], "Riverraid": [0]})
    source_seed: int = 0  # which seed of each source game the target runs transfer from
    targets: list[str] = Field(default_factory=lambda: ["Alien", "Gopher", "Jamesbond"])
    methods: list[str] = Field(default_factory=lambda: ["scratch", "finetune:Seaquest", "finetune:Riverraid",
                                                        "knowledge_flow", "zoo_tuning", "zoo_tuning_lite"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = Field(default=2, ge=1)


@dataclass
class GridRun:
    """One run of a grid: its folder and its ``zootune rl run`` overrides."""

    name: str
    out: Path
    overrides: list[str]
    needs: list[Path]

    @property
    def finished(self) -> bool:
        return (self.out / "result.json").is_file()


def load_grid(path: str | Path) -> GridConfig:
    p = Path(path)
    if not p.is_file():
        shipped = shipped_rl_configs()
        if p.stem in shipped and len(p.parts) == 1:
            p = shipped[p.stem]
    raw = read_yaml(p)
    try:
        g = GridConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, GridConfig)) from None
    for m in g.methods:
        name, _, src = m.partition(":")
        if name not in RL_METHODS:
            raise ConfigError(f"grid method {m!r}: valid methods are {', '.join(RL_METHODS)} "
                              "(finetune:<SourceGame> picks the source)")
        if src and src not in g.sources:
            raise ConfigError(f"grid method {m!r}: {src!r} is not a source game ({', '.join(g.sources)})")
    resolve_rl_config(g.base)
    return g


def plan(grid: GridConfig, root: str | Path) -> list[GridRun]:
    """Every run of the grid, sources first, in the order they are started."""
    root = Path(root)
    runs: list[GridRun] = []
    src_files: dict[str, Path] = {}
    for game, seeds in grid.sources.items():
        for s in seeds:
            out = root / "sources" / game / f"seed{s}"
            runs.append(GridRun(f"source {game} seed {s}", out,
                                [f"env.game={game}", "method.name=scratch", f"run.seed={s}"], []))
        src_files[game] = root / "sources" / game / f"seed{grid.source_seed}" / "model.safetensors"
    sources = list(src_files)
    # seed-major: every method's seed 0 before any seed 1, so a grid stopped part-way holds
    # whole seeds (paired comparisons) rather than all seeds of the first methods
    for target in grid.targets:
        for s in grid.seeds:
            for m in grid.methods:
                name, _, src = m.partition(":")
                ov = [f"env.game={target}", f"method.name={name}", f"run.seed={s}"]
                needs: list[Path] = []
                if name != "scratch":
                    needs = [src_files[g] for g in sources]
                    ov.append("method.sources=[" + ",".join(str(p) for p in needs) + "]")
                    if src:
                        ov.append(f"method.source={sources.index(src)}")
                folder = m.replace(":", "-")
                runs.append(GridRun(f"{target} {m} seed {s}", root / target / folder / f"seed{s}", ov, needs))
    return runs


def run_grid(grid: GridConfig, root: str | Path, *, max_runs: int | None = None,
             workers: int | None = None, dry_run: bool = False,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run what is not finished yet (see the module docstring); returns counts."""
    from zootune.rl.loop import LOCK_FILE

    runs = plan(grid, root)
    todo = [r for r in runs if not r.finished]
    say(f"grid: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to do")
    busy = [r for r in todo if is_locked(r.out / LOCK_FILE)]
    for r in busy:  # another process (e.g. a second grid invocation) trains it now
        say(f"skip (being trained by another process): {r.name}")
    todo = [r for r in todo if r not in busy]
    if max_runs is not None:  # counts runs this invocation starts, not the busy ones
        todo = todo[:max_runs]
    if dry_run:
        for r in todo:
            say(f"  would run {r.name} -> {r.out}")
        return {"total": len(runs), "done": sum(r.finished for r in runs), "started": 0, "failed": 0}
    workers = workers or grid.workers
    base = str(resolve_rl_config(grid.base))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    active: list[tuple[GridRun, subprocess.Popen]] = []
    started = failed = 0
    pending = list(todo)
    while pending or active:
        for r, proc in list(active):
            if proc.poll() is not None:
                active.remove((r, proc))
                if proc.returncode != 0:
                    failed += 1
                    say(f"FAILED ({proc.returncode}): {r.name}; see {r.out / 'run.log'}")
                else:
                    say(f"done: {r.name}")
        for r in [r for r in pending if is_locked(r.out / LOCK_FILE)]:
            pending.remove(r)  # taken by another process since this invocation started
            say(f"skip (being trained by another process): {r.name}")
        ready = [r for r in pending if all(p.is_file() for p in r.needs)]
        blocked = [r for r in pending if r not in ready]
        while ready and len(active) < workers:
            r = ready.pop(0)
            pending.remove(r)
            r.out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "zootune", "rl", "run", base, "--out", str(r.out), "--quiet",
                   *grid.overrides, *r.overrides, "run.threads=1"]
            with open(r.out / "run.log", "a") as log:  # the child keeps its own descriptor
                active.append((r, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
            started += 1
            say(f"start: {r.name}")
        if not active and blocked and not ready:
            for r in blocked:
                say(f"skipped (a source it needs did not finish): {r.name}")
            break
        time.sleep(1.0)
    return {"total": len(runs), "done": sum(r.finished for r in runs), "started": started, "failed": failed}
