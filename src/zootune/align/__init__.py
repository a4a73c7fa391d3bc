"""Align an independently trained zoo before aggregating it (permutation matching + repair).

Summing the weights of a zoo (Zoo-Tuning's Eq. 2, average aggregation) assumes that channel
``c`` of one member computes what channel ``c`` of another computes. Members fine-tuned from one
shared initialisation satisfy that; members trained from independent random starts compute
similar features in different, arbitrary orders. Permuting a network's hidden channels
consistently does not change its function, so each member can be brought into the reference
member's channel order first (Ainsworth et al., *Git Re-Basin: Merging Models modulo Permutation
Symmetries*, ICLR 2023). Zoo-Tuning's own alignment ``T_i`` cannot do this: it starts at the
identity and mixes only a layer's output channels, not the next layer's inputs.

* :func:`align_zoo` - permuted copies of the members, each computing exactly what it computed
  before (checked on an example input);
* :mod:`.graph` - the permutation groups, derived from the torch.fx graph (no per-architecture
  tables; one clear :class:`UnsupportedOpError` for an operation without a rule);
* :mod:`.match` - weight matching (coordinate descent over exact linear assignments, no data)
  and activation matching (correlation of activations on a few batches);
* :mod:`.repair` - BatchNorm RESET / REPAIR of the merged model (Jordan et al., *REPAIR:
  REnormalizing Permuted Activations for Interpolation Repair*, ICLR 2023).

>>> aligned = zootune.align_zoo(models)                   # weight matching to models[0]
>>> zm = zootune.zoo_tune(models, align_zoo=True)         # the same, inside zoo_tune
>>> merged = aligned.merge(repair="repair", data=batches) # plain average + BatchNorm REPAIR
"""

from __future__ import annotations

import copy
import time
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from .graph import AlignError, Group, Member, PermutationSpec, UnsupportedOpError, permutation_spec, permute_state
from .match import activation_matching, weight_matching
from .repair import average_models, batchnorm_output_stats, repair_batchnorm

__all__ = [
    "AlignError", "AlignedZoo", "Group", "Member", "PermutationSpec", "UnsupportedOpError",
    "activation_matching", "align_zoo", "apply_permutations", "average_models",
    "batchnorm_output_stats", "permutation_spec", "repair_batchnorm", "weight_matching",
]

Method = Literal["weights", "activations"]


class AlignedZoo(list):
    """The aligned members (a list of modules, in the input's order) and how they were found.

    ``permutations[i]``: ``{group name: LongTensor}`` applied to member ``i`` (the reference's
    are identities); ``spec``: the permutation groups; ``info``: per member the matching's
    statistics, the seconds it took and the largest output difference from the original
    (``max_abs_diff``); ``names``: the input zoo's member names when it had them.
    """

    def __init__(self, models: Sequence[nn.Module], *, spec: PermutationSpec,
                 permutations: list[dict[str, torch.Tensor]], info: dict[str, Any],
                 names: Sequence[str] | None = None, repair: str | None = None,
                 data: Sequence[Any] | None = None) -> None:
        super().__init__(models)
        self.spec, self.permutations, self.info = spec, permutations, info
        if names is not None:
            self.names = list(names)
        self.repair, self.data = repair, data

    def merge(self, weights: Sequence[float] | None = None, *, repair: str | bool | None = None,
              data: Iterable[Any] | None = None) -> nn.Module:
        """The weighted average of the aligned members (a plain module of their class).

        ``repair``: ``"repair"``, ``"reset"`` or ``None`` (default: what :func:`align_zoo` was
        asked for); ``data``: the batches for it (default: :func:`align_zoo`'s ``data``).
        """
        merged = average_models(list(self), weights)
        mode = _repair_mode(self.repair if repair is None else repair)
        if mode:
            batches = data if data is not None else self.data
            if batches is None:
                raise AlignError("BatchNorm repair needs data: merge(repair=..., data=[batch, ...])")
            repair_batchnorm(merged, list(self), batches, mode=mode, weights=weights)
        return merged


def _repair_mode(repair: str | bool | None) -> str | None:
    if repair is None or repair is False:
        return None
    if repair is True:
        return "repair"
    if repair in ("repair", "reset"):
        return str(repair)
    raise AlignError(f"repair must be False, True, 'repair' or 'reset', got {repair!r}")


def _example(models: Sequence[nn.Module], example_input: Any, data: Sequence[Any] | None) -> Any:
    from .repair import _input

    if example_input is not None:
        return example_input
    if data:
        return _input(data[0])[:2]
    pre = getattr(models[0], "zootune_preprocessing", None)
    size = pre.get("input_size") if isinstance(pre, dict) else getattr(pre, "input_size", None)
    if size:
        g = torch.Generator().manual_seed(0)
        return torch.rand(2, *size, generator=g)
    raise AlignError("align_zoo needs an example input to learn the graph's shapes: pass "
                     "example_input=torch.randn(2, C, H, W) (or data=[batch, ...])")


def apply_permutations(model: nn.Module, spec: PermutationSpec, perms: Sequence[torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with ``perms`` (one per group of ``spec``) applied."""
    out = copy.deepcopy(model)
    state = permute_state(dict(model.state_dict()), spec, list(perms))
    out.load_state_dict(state)
    return out


def _first_tensor(y: Any) -> torch.Tensor | None:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (tuple, list)) and y:
        return _first_tensor(y[0])
    if isinstance(y, dict) and y:
        return _first_tensor(next(iter(y.values())))
    return None


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module, x: Any) -> float:
    args = x if isinstance(x, tuple) else (x,)
    wa, wb = a.training, b.training
    a.eval(), b.eval()
    try:
        ya, yb = _first_tensor(a(*args)), _first_tensor(b(*args))
    finally:
        a.train(wa), b.train(wb)
    if ya is None or yb is None:
        return 0.0
    return float((ya.double() - yb.double()).abs().max())


def align_zoo(
    models: Sequence[nn.Module],
    reference: int = 0,
    *,
    method: Method = "weights",
    data: Iterable[Any] | None = None,
    repair: bool | Literal["repair", "reset"] = False,
    example_input: Any = None,
    permute_outputs: bool = False,
    max_sweeps: int = 100,
    max_batches: int | None = 8,
    seed: int = 0,
    check: bool = True,
    atol: float = 1e-4,
) -> AlignedZoo:
    """Permuted copies of ``models`` in the channel order of ``models[reference]``.

    Args:
        models: a zoo (two or more modules of one architecture); not modified.
        reference: the member the others are aligned to (it is copied unchanged).
        method: ``"weights"`` (weight matching: no data, Git Re-Basin §3.2) or
            ``"activations"`` (correlation of activations on ``data``, §3.1).
        data: a few batches (tensors, ``(input, ...)`` tuples or ``{"image": ...}`` dicts):
            needed by ``method="activations"`` and by ``repair``; at most ``max_batches`` are read.
        repair: BatchNorm repair for the *merged* model (``True``/``"repair"``: REPAIR,
            ``"reset"``: RESET): recorded on the result, applied by :meth:`AlignedZoo.merge`
            and by ``zoo_tune(..., align_zoo=...)``. Each aligned member is exact as it is.
        example_input: one input batch used to trace shapes (default: two samples of ``data``,
            or random values of the ``input_size`` the model declares).
        permute_outputs: let the model's outputs be permuted too (when the head is replaced
            afterwards: the features of a head-less trunk then align as well).
        max_sweeps: weight matching's limit on sweeps over the groups.
        check: compare every aligned member's eval-mode output with its original's on the
            example input and raise :class:`AlignError` if they differ by more than ``atol``
            (with ``permute_outputs`` they may legitimately differ: the check is skipped).

    Returns:
        an :class:`AlignedZoo` (a list of modules in the input order).
    """
    from zootune.convert import validate_zoo

    validate_zoo(list(models) if not isinstance(models, (list, tuple)) else models)
    if method not in ("weights", "activations"):
        raise AlignError(f"method must be 'weights' or 'activations', got {method!r}")
    if not isinstance(reference, int) or not 0 <= reference < len(models):
        raise AlignError(f"reference must be a member index in [0, {len(models)}), got {reference!r}")
    mode = _repair_mode(repair)
    batches: list[Any] | None = None
    if data is not None:
        batches = []
        for b in data:
            batches.append(b)
            if max_batches is not None and len(batches) >= max_batches:
                break
    if (method == "activations" or mode) and not batches:
        raise AlignError(f"{'method=activations' if method == 'activations' else 'repair'} "
                         "needs data=[batch, ...] (a few batches of inputs)")
    ref = models[reference]
    x = _example(models, example_input, batches)
    t0 = time.perf_counter()
    spec = permutation_spec(ref, x, permute_outputs=permute_outputs)
    info: dict[str, Any] = {"method": method, "reference": reference, "groups": len(spec.groups),
                            "channels": sum(g.size for g in spec.groups),
                            "trace_seconds": time.perf_counter() - t0, "members": []}
    ref_state = {k: v.detach() for k, v in ref.state_dict().items()}
    out, perms_out = [], []
    for i, m in enumerate(models):
        t = time.perf_counter()
        if i == reference:
            perms = [torch.arange(g.size) for g in spec.groups]
            minfo: dict[str, Any] = {}
            aligned = copy.deepcopy(m)
        else:
            if method == "weights":
                perms, minfo = weight_matching(spec, ref_state, {k: v.detach() for k, v in m.state_dict().items()},
                                               max_sweeps=max_sweeps, seed=seed)
            else:
                wr, wm = ref.training, m.training
                ref.eval(), m.eval()
                try:
                    from .repair import _input

                    perms, minfo = activation_matching(spec, ref, m, [_input(b) for b in batches], seed=seed)
                finally:
                    ref.train(wr), m.train(wm)
            aligned = apply_permutations(m, spec, perms)
        minfo["seconds"] = time.perf_counter() - t
        minfo["moved_channels"] = int(sum(int((p != torch.arange(len(p))).sum()) for p in perms))
        if check and not permute_outputs:
            diff = _max_diff(m, aligned, x)
            minfo["max_abs_diff"] = diff
            if not diff <= atol:
                raise AlignError(f"aligned member {i} differs from the original by {diff:.3g} "
                                 f"(> {atol}): a graph rule is wrong for this model; please report it")
        info["members"].append(minfo)
        out.append(aligned)
        perms_out.append({g.name: p for g, p in zip(spec.groups, perms)})
    info["seconds"] = time.perf_counter() - t0
    names = getattr(models, "names", None)
    return AlignedZoo(out, spec=spec, permutations=perms_out, info=info, names=names,
                      repair=mode, data=batches)
