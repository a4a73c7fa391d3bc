"""Find the permutations that bring one model's channels into another's order.

Weight matching (Ainsworth et al., *Git Re-Basin*, ICLR 2023, §3.2): maximise
``sum_W <W_ref, pi(W)>`` over the permutations ``pi`` of every group, where the sum runs over
every parameter and buffer a group touches. With all other groups held fixed the objective is
linear in one group's permutation, so the problem is solved by coordinate descent: for each
group in turn, sum the ``n x n`` matrices ``A B^T`` of every touched tensor (``A``: the reference
tensor with the group's axis first and everything else flattened, ``B``: the other model's,
already permuted by the other groups) and solve that linear assignment exactly with
:func:`scipy.optimize.linear_sum_assignment`; repeat over the groups in a random order until a
full sweep changes nothing. It needs no data.

Activation matching (same paper, §3.1): run both models on the same inputs and, for each group,
match channels by the correlation of their activations at the graph values that carry the
group's channels (the outputs of non-linearities and their inputs, summed; the last value of the
group where it has no non-linearity), again one linear assignment per group. Groups without such a value (inside an
attention module) fall back to weight matching with the other groups fixed.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.fx as fx
from scipy.optimize import linear_sum_assignment

from .graph import AlignError, Group, Member, PermutationSpec, permute_state


def _assign(score: torch.Tensor, blocks: int) -> torch.Tensor:
    """The permutation ``p`` maximising ``sum_c score[c, p[c]]``, within ``blocks`` blocks."""
    n = score.shape[0]
    s = score.double().cpu().numpy()
    perm = np.empty(n, dtype=np.int64)
    size = n // blocks
    for b in range(blocks):
        lo = b * size
        rows, cols = linear_sum_assignment(s[lo:lo + size, lo:lo + size], maximize=True)
        perm[lo + rows] = lo + cols
    return torch.from_numpy(perm)


def _as_matrix(t: torch.Tensor, m: Member, n: int) -> torch.Tensor:
    t = t.narrow(m.axis, m.offset, n * m.factor).movedim(m.axis, 0)
    return t.reshape(n, -1).float()


def _group_score(g: Group, ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
                 spec: PermutationSpec, perms: list[torch.Tensor]) -> torch.Tensor:
    score = torch.zeros(g.size, g.size)
    for m in g.members:
        b = permute_state({m.key: other[m.key]}, _only(spec, m.key), _perms_for(spec, perms, m.key),
                          skip=m)[m.key]
        score += _as_matrix(ref[m.key], m, g.size) @ _as_matrix(b, m, g.size).T
    return score


def _only(spec: PermutationSpec, key: str) -> PermutationSpec:
    return PermutationSpec([g for g in spec.groups if any(m.key == key for m in g.members)],
                           spec.graph, [])


def _perms_for(spec: PermutationSpec, perms: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [p for g, p in zip(spec.groups, perms) if any(m.key == key for m in g.members)]


def weight_matching(
    spec: PermutationSpec,
    ref: dict[str, torch.Tensor],
    other: dict[str, torch.Tensor],
    *,
    max_sweeps: int = 100,
    seed: int = 0,
    init: Sequence[torch.Tensor] | None = None,
    only: Sequence[int] | None = None,
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Permutations of ``other`` maximising its summed inner products with ``ref``.

    Returns ``(perms, info)``: ``perms[g][c]`` is the channel of ``other`` that becomes channel
    ``c``; ``info`` has ``sweeps`` and the objective before and after. ``only``: indices of the
    groups to optimise (the others stay at ``init``).
    """
    groups = spec.groups
    perms = [p.clone() for p in init] if init is not None else [torch.arange(g.size) for g in groups]
    todo = list(range(len(groups))) if only is None else list(only)
    rng = np.random.default_rng(seed)

    def objective() -> float:
        b = permute_state(other, spec, perms)
        keys = {m.key for g in groups for m in g.members}
        return float(sum((ref[k].double() * b[k].double()).sum() for k in keys))

    before = objective()
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        changed = False
        for gi in rng.permutation(todo):
            g = groups[gi]
            score = _group_score(g, ref, other, spec, perms)
            new = _assign(score, g.blocks)
            old = perms[gi]
            if float(score[torch.arange(g.size), new].sum()) > float(score[torch.arange(g.size), old].sum()) + 1e-9 * max(1.0, float(score.abs().max())):
                perms[gi] = new
                changed = True
        if not changed:
            break
    return perms, {"sweeps": sweeps, "objective_before": before, "objective_after": objective()}


class _Recorder(fx.Interpreter):
    """Runs a traced model and keeps the values of the wanted nodes."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:  # a copy: an in-place op later in the graph (ReLU) mutates it
            self.values[n.name] = out.clone() if isinstance(out, torch.Tensor) else out
        return out


_NONLINEAR = ("relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "elu", "mish", "softplus")


def _activation_nodes(spec: PermutationSpec, g: Group) -> list[tuple[str, int | None, int]]:
    nodes = {n.name: n for n in spec.graph.graph.nodes}
    modules = dict(spec.graph.named_modules())

    def nonlinear(name: str) -> bool:
        n = nodes[name]
        t = modules.get(str(n.target)) if n.op == "call_module" else n.target
        label = type(t).__name__ if n.op == "call_module" else str(getattr(t, "__name__", t))
        return any(k in label.lower() for k in _NONLINEAR)

    # the features the next layer sees (after non-linearities) and the values before them: a
    # unit that a ReLU silences on every input is still identified by its pre-activation
    chosen = [v for v in g.nodes if nonlinear(v[0])]
    pre = {a.name for v in chosen for a in nodes[v[0]].all_input_nodes}
    chosen += [v for v in g.nodes if v[0] in pre]
    return chosen or g.nodes[-1:]


def _channels(v: Any, idx: int | None, axis: int) -> torch.Tensor:
    t = v[idx] if idx is not None else v
    return t.detach().movedim(axis, 0).reshape(t.shape[axis], -1).double()


@torch.no_grad()
def activation_matching(
    spec: PermutationSpec,
    ref_model: torch.nn.Module,
    other_model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    seed: int = 0,
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Permutations of ``other_model`` that maximise the correlation of its activations with
    ``ref_model``'s on ``batches`` (inputs, or tuples whose first element is the input)."""
    from .graph import trace

    gsel = {gi: _activation_nodes(spec, g) for gi, g in enumerate(spec.groups) if g.nodes}
    wanted = {v[0] for vs in gsel.values() for v in vs}
    gm_ref, gm_other = trace(ref_model), trace(other_model)
    stats = {gi: None for gi in gsel}
    seen = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        ra, rb = _Recorder(gm_ref, wanted), _Recorder(gm_other, wanted)
        ra.run(x)
        rb.run(x)
        seen += 1
        for gi, vs in gsel.items():
            n = spec.groups[gi].size
            acc = stats[gi] or {"per": {}}
            for name, idx, axis in vs:
                a = _channels(ra.values[name], idx, axis)
                b = _channels(rb.values[name], idx, axis)
                # one correlation matrix per value (moments accumulated over batches), summed
                z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
                p = acc["per"].setdefault(name, [0, z(n), z(n), z(n), z(n), z(n, n)])
                p[0] += a.shape[1]
                p[1] += a.sum(1)
                p[2] += b.sum(1)
                p[3] += (a * a).sum(1)
                p[4] += (b * b).sum(1)
                p[5] += a @ b.T
            stats[gi] = acc
    if seen == 0:
        raise AlignError("activation matching got no batches: pass data=[batch, ...]")
    perms = [torch.arange(g.size) for g in spec.groups]
    for gi, acc in stats.items():
        n = spec.groups[gi].size
        corr = torch.zeros(n, n, dtype=torch.float64)
        for cnt, sa, sb, saa, sbb, sab in acc["per"].values():
            ma, mb = sa / cnt, sb / cnt
            cov = sab / cnt - ma[:, None] * mb[None, :]
            sda = (saa / cnt - ma**2).clamp_min(0).sqrt() + 1e-8
            sdb = (sbb / cnt - mb**2).clamp_min(0).sqrt() + 1e-8
            corr += cov / (sda[:, None] * sdb[None, :])
        perms[gi] = _assign(corr, spec.groups[gi].blocks)
    rest = [gi for gi, g in enumerate(spec.groups) if gi not in gsel]
    info: dict[str, Any] = {"batches": seen, "groups_by_activation": len(gsel),
                            "groups_by_weights": len(rest)}
    if rest:
        perms, winfo = weight_matching(spec, dict(ref_model.state_dict()), dict(other_model.state_dict()),
                                       init=perms, only=rest, seed=seed)
        info["weight_matching"] = winfo
    return perms, info
