"""The ``compare`` config: an ordinary ``zootune tune`` config plus a ``compare:`` section.

```yaml
recipe: adam
zoo: {spec: demo}
data: {name: demo_target, labels_per_class: 10}
train: {steps: 300, batch_size: 32}
compare:
  seeds: [0, 1, 2, 3, 4]
  methods:
    - finetune                      # one cell per zoo member: finetune[<member>]
    - ensemble
    - {name: ced, finetuned: true, label: ced+finetuned}
    - {name: zoo_tuning, align: false, label: "zoo_tuning w/o T"}
    - {name: distill, grid: {method.temperature: [1, 4]}}     # chosen on validation
    - {name: zoo_tuning, label: "5x base", overrides: {zoo.spec: [...]}}
```

Every method entry is a method name, or a mapping with the method's ``name`` and options plus
three keys of the comparison: ``label`` (its row in the table), ``overrides`` (dotted config keys
set for this entry only: another learning rate, another zoo...) and ``grid`` (dotted keys with
lists of values: one variant per combination; the variant with the best mean *validation*
score over the seeds is reported). Each seed sets every key of ``seed_keys`` (default
``train.seed`` and ``data.seed``: a new initialisation and a new draw of the few labels).
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from zootune.config import (
    Config,
    ConfigError,
    Section,
    build_config,
    read_yaml,
)

__all__ = ["Cell", "CompareOptions", "CompareSpec", "compare_examples", "load_compare", "plan_cells",
           "resolve_compare_path", "set_dotted"]

#: where the shipped compare configs live (package data: ``zootune/configs/compare/*.yaml``)
EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "compare"


def compare_examples() -> dict[str, Path]:
    """``{name: path}`` of the compare configs shipped in the package."""
    return {f.stem: f for f in sorted(EXAMPLES.glob("*.yaml"))}


def resolve_compare_path(path: str | Path) -> Path:
    """A compare config file, or the name of a shipped one (``digits_tiny``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = EXAMPLES / (p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml")
    if shipped.is_file() and len(p.parts) == 1:
        return shipped
    raise ConfigError(f"compare config {str(p)!r} does not exist (shipped examples: "
                      f"{', '.join(compare_examples()) or 'none'})")


class CompareOptions(Section):
    """The ``compare:`` section."""

    #: method entries (see the module docstring)
    methods: list[str | dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: config keys every seed sets
    seed_keys: list[str] = Field(default_factory=lambda: ["train.seed", "data.seed"])
    #: the entry whose cells are the single sources; the best on validation (per seed) is the
    #: reference of the paired differences
    reference: str = "finetune"
    #: write each cell's report.md (pictures included); off is faster
    reports: bool = True
    #: further test metrics of the task shown beside its primary one (mean ± std over seeds),
    #: e.g. ``[failure_rate, auc]`` for landmarks
    metrics: list[str] = Field(default_factory=list)
    #: folder of the comparison (default: runs/compare_<name>)
    out_dir: str | None = None


@dataclass
class Entry:
    """One method entry of the comparison, expanded into variants."""

    label: str
    name: str
    options: dict[str, Any]
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    source: str | None = None  # a finetune entry expanded per member

    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(variant label, {dotted key: value})]``: one per grid point (one if no grid)."""
        if not self.grid:
            return [("", {})]
        keys = sorted(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            tag = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))
            out.append((tag, dict(zip(keys, values))))
        return out


@dataclass
class Cell:
    """One (entry, variant, seed) of the comparison and its config."""

    entry: str
    variant: str
    seed: int
    cfg: Config
    source: str | None = None

    @property
    def id(self) -> str:
        return f"{self.entry}{'{' + self.variant + '}' if self.variant else ''}@seed{self.seed}"


@dataclass
class CompareSpec:
    """A loaded comparison: the base config (a plain dict), its options, its entries."""

    base: dict[str, Any]
    options: CompareOptions
    entries: list[Entry]
    name: str
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (sections created as needed; a bare method name is
    turned into ``{name: ...}`` first)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"compare: bad config key {key!r}")
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if isinstance(child, str) and p in ("method", "task"):
            child = node[p] = {"name": child}
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"compare: {p!r} in {key!r} is not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _entry(item: Any, i: int) -> Entry:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ConfigError(f"compare.methods[{i}] must be a method name or a mapping with 'name' "
                          f"(got {item!r})")
    item = dict(item)
    label = item.pop("label", None)
    overrides = item.pop("overrides", None) or {}
    grid = item.pop("grid", None) or {}
    if not isinstance(overrides, Mapping) or not isinstance(grid, Mapping):
        raise ConfigError(f"compare.methods[{i}]: 'overrides' and 'grid' must be mappings of "
                          "dotted config keys")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"compare.methods[{i}].grid.{k} must be a non-empty list")
    name = item["name"]
    if label is None:
        shown = {k: v for k, v in item.items() if k != "name"}
        label = name + ("(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else "")
    return Entry(str(label), name, item, dict(overrides), {k: list(v) for k, v in grid.items()})


def load_compare(path: str | Path | None = None, raw: Mapping[str, Any] | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> CompareSpec:
    """Read a compare config (a file, or ``raw``); ``key=value`` overrides apply to the base
    config (``compare.*`` keys to the compare section). Every cell's config is validated here."""
    from zootune.config import apply_overrides

    p = resolve_compare_path(path) if path is not None else None
    data = read_yaml(p) if p is not None else copy.deepcopy(dict(raw or {}))
    data = apply_overrides(data, list(overrides))
    section = data.pop("compare", None)
    if section is None:
        raise ConfigError("a compare config needs a 'compare:' section with 'methods' "
                          "(see zootune compare --help)")
    if not isinstance(section, Mapping):
        raise ConfigError("'compare' must be a mapping (methods, seeds, ...)")
    try:
        options = CompareOptions.model_validate(dict(section))
    except Exception as exc:  # pydantic.ValidationError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            from zootune.config import _format_validation_error

            raise ConfigError(_format_validation_error(exc, CompareOptions, prefix=["compare"])) from None
        raise
    entries = [_entry(item, i) for i, item in enumerate(options.methods)]
    labels = [e.label for e in entries]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ConfigError(f"compare.methods: two entries have the label {dup[0]!r}; give one a "
                          "'label'")
    name = options.out_dir and Path(options.out_dir).name or data.get("name") or (
        p.stem if p is not None else "compare")
    spec = CompareSpec(data, options, entries, re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)), p, data)
    plan_cells(spec)  # validates every cell's config now: one error line before any training
    return spec


def _cell_raw(spec: CompareSpec, entry: Entry, assign: dict[str, Any], seed: int) -> dict[str, Any]:
    raw = copy.deepcopy(spec.base)
    raw["method"] = dict(entry.options)
    for k, v in entry.overrides.items():
        set_dotted(raw, k, v)
    for k, v in assign.items():
        set_dotted(raw, k, v)
    for k in spec.options.seed_keys:
        set_dotted(raw, k, seed)
    return raw


def plan_cells(spec: CompareSpec) -> list[Cell]:
    """Every cell of the comparison, in order; a ``finetune`` entry without ``source`` becomes
    one entry per zoo member (``finetune[<member>]``)."""
    from zootune.methods._sources import zoo_member_names

    cells: list[Cell] = []
    expanded: list[Entry] = []
    for e in spec.entries:
        if e.name == "finetune" and "source" not in e.options and e.source is None:
            probe = build_config(_cell_raw(spec, e, {}, spec.options.seeds[0]))
            for member in zoo_member_names(probe):
                expanded.append(Entry(f"{e.label}[{member}]", e.name, {**e.options, "source": member},
                                      e.overrides, e.grid, source=member))
        else:
            expanded.append(e)
    spec.expanded = expanded  # type: ignore[attr-defined]
    for e in expanded:
        for tag, assign in e.variants():
            for seed in spec.options.seeds:
                cfg = build_config(_cell_raw(spec, e, assign, seed))
                cells.append(Cell(e.label, tag, seed, cfg, e.source))
    return cells
