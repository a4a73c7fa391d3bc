"""Permutation groups of a network, derived from its torch.fx graph.

Two networks trained from independent random starts compute similar features in different
channel orders. Permuting the hidden channels of a network — the rows of one layer's weight and,
consistently, the columns of every layer that reads them — leaves its function unchanged
(Ainsworth et al., *Git Re-Basin*, ICLR 2023, §2). Which axes must be permuted *together* is a
property of the graph: a residual addition ties the channels of both summands and of the sum;
BatchNorm, ReLU and pooling carry a channel through unchanged; ``flatten`` turns a channel of
``C x H x W`` features into ``H*W`` consecutive inputs of the next Linear; a convolution ties
its input channels to the columns of its weight and its output channels to the rows.

:func:`permutation_spec` traces a model with :func:`torch.fx.symbolic_trace`, runs it once on
an example input to learn every value's shape, and unites (value, axis) and (parameter, axis)
pairs in a union-find whose edges are those ties. Every axis an operation does not tie is
*fixed*: it may not be permuted (batch and spatial axes, the model's inputs and outputs, the
channels of a grouped convolution or a GroupNorm, a concatenation axis...). A class of tied axes
that holds at least one parameter axis and no fixed one is a permutation group. The ties carry an
integer *factor* (channel ``c`` of a ``C``-axis covers entries ``c*f .. c*f+f-1`` of an axis of
size ``C*f``), which is how ``flatten``/``reshape`` of ``C x H x W`` into a Linear is handled.

No per-architecture table: the rules are per operation. An operation with no rule raises
:class:`UnsupportedOpError` naming the node, so a permutation is never applied to a graph whose
equivariance was not checked. Rules exist for the operations of plain CNNs, torchvision ResNets,
and transformer blocks: ``nn.Linear``, ``nn.LayerNorm``, ``nn.MultiheadAttention`` (the
embedding axis, and within each head the query/key and value/output axes), element-wise
activations, ``matmul`` and ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from zootune.errors import ZootuneError


class AlignError(ZootuneError, ValueError):
    """A zoo cannot be aligned (bad arguments, a model that cannot be traced...)."""


class UnsupportedOpError(AlignError):
    """The model's graph has an operation whose channel behaviour align does not know."""


@dataclass(frozen=True)
class Member:
    """One parameter/buffer axis (or a slice of it) permuted by a group.

    Group channel ``c`` is entries ``offset + c*factor .. offset + c*factor + factor - 1`` of axis
    ``axis`` of the state-dict entry ``key``.
    """

    key: str
    axis: int
    factor: int = 1
    offset: int = 0


@dataclass
class Group:
    """A set of axes that one permutation of ``size`` channels acts on.

    ``blocks`` > 1: the permutation must map each of ``blocks`` consecutive equal blocks onto
    itself (attention heads). ``nodes``: ``(node name, tuple index, axis)`` of graph values that
    carry this group's channels with factor 1 (where activations are correlated).
    """

    name: str
    size: int
    members: list[Member]
    nodes: list[tuple[str, int | None, int]] = field(default_factory=list)
    blocks: int = 1


@dataclass
class PermutationSpec:
    """Every permutation group of a model (:func:`permutation_spec`)."""

    groups: list[Group]
    graph: fx.GraphModule
    #: parameter / buffer keys no group touches (kept as they are)
    untouched: list[str]

    def describe(self) -> str:
        n = sum(g.size for g in self.groups)
        return f"{len(self.groups)} permutation groups, {n} channels, {len(self.untouched)} tensors untouched"


# ---------------------------------------------------------------------------------------------
# weighted union-find over axes
# ---------------------------------------------------------------------------------------------


class _Axes:
    """Union-find of axes with an integer factor relative to the root (size = factor * root)."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.factor: dict[Hashable, int] = {}
        self.size: dict[Hashable, int] = {}
        self.fixed: set[Hashable] = set()  # roots
        self.blocks: dict[Hashable, int] = {}  # roots

    def add(self, e: Hashable, size: int) -> None:
        if e not in self.parent:
            self.parent[e], self.factor[e], self.size[e] = e, 1, int(size)

    def find(self, e: Hashable) -> tuple[Hashable, int]:
        f = 1
        path = []
        while self.parent[e] != e:
            path.append(e)
            f *= self.factor[e]
            e = self.parent[e]
        root, acc = e, f
        for p in path:  # path compression keeping factors exact
            fp = acc
            acc //= self.factor[p]
            self.parent[p], self.factor[p] = root, fp
        return root, f

    def fix(self, e: Hashable) -> None:
        self.fixed.add(self.find(e)[0])

    def set_blocks(self, e: Hashable, blocks: int) -> None:
        r = self.find(e)[0]
        self.blocks[r] = math.lcm(self.blocks.get(r, 1), blocks)

    def tie(self, a: Hashable, b: Hashable, k: int = 1) -> None:
        """``a`` has ``k`` entries per channel of ``b`` (``size(a) == k * size(b)``)."""
        ra, fa = self.find(a)
        rb, fb = self.find(b)
        if self.size[a] != k * self.size[b]:
            self.fixed.update((ra, rb))
            return
        if ra == rb:
            if fa != k * fb:
                self.fixed.add(ra)
            return
        num, den = k * fb, fa  # size(ra) / size(rb) = num / den
        fixed = ra in self.fixed or rb in self.fixed
        blocks = math.lcm(self.blocks.pop(ra, 1), self.blocks.pop(rb, 1))
        self.fixed.discard(ra)
        self.fixed.discard(rb)
        if num % den == 0:
            self.parent[ra], self.factor[ra], root = rb, num // den, rb
        elif den % num == 0:
            self.parent[rb], self.factor[rb], root = ra, den // num, ra
        else:  # channels do not nest: refuse to permute either
            self.fixed.update((ra, rb))
            self.blocks[ra] = self.blocks[rb] = blocks
            return
        if fixed:
            self.fixed.add(root)
        if blocks > 1:
            self.blocks[root] = blocks


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


def _shape_of(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)):
        return tuple(_shape_of(x) for x in v)
    return None


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n.name] = _shape_of(out)
        return out


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, with one clear error when the model cannot be traced."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AlignError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {first}); "
            "align needs a graph without data-dependent control flow"
        ) from None


# ---------------------------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------------------------

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.Softmax, nn.LogSoftmax,
)
_POOL_MODULES: dict[type, int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}
_ELEMENTWISE_FUNCS = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
    torch.tanh, F.tanh, F.hardswish, F.leaky_relu, F.elu, F.mish, F.softplus, F.dropout,
    torch.exp, torch.neg, torch.abs, F.softmax, torch.softmax, F.log_softmax, operator.neg,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "exp", "neg", "abs", "contiguous", "clone", "detach",
    "softmax", "log_softmax", "float", "type_as", "to",
}
_BINARY_FUNCS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub,
                 operator.isub, operator.truediv, torch.add, torch.mul, torch.sub, torch.div}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_POOL_FUNCS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2,
               F.max_pool1d: 1, F.max_pool2d: 2, F.avg_pool1d: 1, F.avg_pool2d: 2,
               torch.max_pool2d: 2, torch.avg_pool1d: 1}
_NON_TENSOR_METHODS = {"size", "dim"}


class _Builder:
    def __init__(self, gm: fx.GraphModule, shapes: dict[str, Any], state: dict[str, torch.Tensor],
                 permute_outputs: bool) -> None:
        self.gm, self.shapes, self.state = gm, shapes, state
        self.permute_outputs = permute_outputs
        self.ax = _Axes()
        self.touched: set[tuple] = set()  # value axes some rule tied
        self.modules = dict(gm.named_modules())

    # -- elements -----------------------------------------------------------------------------
    def shape(self, v: tuple[str, int | None]) -> tuple[int, ...] | None:
        s = self.shapes.get(v[0])
        if v[1] is not None:
            s = s[v[1]] if isinstance(s, tuple) and len(s) > v[1] else None
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return s

    def val(self, v: tuple[str, int | None], axis: int) -> tuple:
        s = self.shape(v)
        axis = axis % len(s)
        e = ("v", v[0], v[1], axis)
        self.ax.add(e, s[axis])
        self.touched.add(e)
        return e

    def par(self, key: str, axis: int, offset: int = 0, length: int | None = None) -> tuple | None:
        t = self.state.get(key)
        if t is None or t.dim() == 0:
            return None
        length = t.shape[axis] if length is None else length
        e = ("p", key, axis, offset)
        self.ax.add(e, length)
        return e

    def tie_vv(self, a, ai, b, bi, k: int = 1) -> None:
        if self.shape(a) is None or self.shape(b) is None:
            return
        self.ax.tie(self.val(a, ai), self.val(b, bi), k)

    def tie_pv(self, key: str, pa: int, v, vi: int, offset: int = 0, length: int | None = None) -> None:
        e = self.par(key, pa, offset, length)
        if e is not None and self.shape(v) is not None:
            self.ax.tie(e, self.val(v, vi))

    # -- helpers over node args ---------------------------------------------------------------
    @staticmethod
    def ref(a: Any) -> tuple[str, int | None] | None:
        return (a.name, None) if isinstance(a, fx.Node) else None

    def ndim(self, v) -> int:
        s = self.shape(v)
        return -1 if s is None else len(s)

    def tie_all(self, a, b) -> None:
        if self.ndim(a) == self.ndim(b) and self.ndim(a) >= 0 and self.shape(a) == self.shape(b):
            for i in range(self.ndim(a)):
                self.tie_vv(a, i, b, i)

    def tie_broadcast(self, out, inputs) -> None:
        so = self.shape(out)
        if so is None:
            return
        for v in inputs:
            s = self.shape(v)
            if s is None:
                continue
            for k in range(1, len(s) + 1):
                if s[-k] == so[-k] and s[-k] != 1:
                    self.tie_vv(v, len(s) - k, out, len(so) - k)

    def tie_reshape(self, a, b) -> None:
        """Tie the axes of ``b = a.reshape(...)`` that carry whole channels of ``a`` (or back)."""
        sa, sb = self.shape(a), self.shape(b)
        if sa is None or sb is None:
            return
        ia = [i for i, d in enumerate(sa) if d != 1]
        ib = [i for i, d in enumerate(sb) if d != 1]
        i = j = 0
        while i < len(ia) and j < len(ib):
            seg_a, seg_b = [ia[i]], [ib[j]]
            pa, pb = sa[ia[i]], sb[ib[j]]
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb and i < len(ia):
                    pa *= sa[ia[i]]
                    seg_a.append(ia[i])
                    i += 1
                elif pb < pa and j < len(ib):
                    pb *= sb[ib[j]]
                    seg_b.append(ib[j])
                    j += 1
                else:
                    return
            if len(seg_a) == 1 and len(seg_b) == 1:
                self.tie_vv(a, seg_a[0], b, seg_b[0])
            elif len(seg_b) == 1:  # merged: a's major axis covers k entries of b's axis each
                self.tie_vv(b, seg_b[0], a, seg_a[0], pb // sa[seg_a[0]])
            elif len(seg_a) == 1:  # split: b's major axis
                self.tie_vv(a, seg_a[0], b, seg_b[0], pa // sb[seg_b[0]])

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.node(node)
            # every axis of this node's output and inputs that no rule tied is fixed
            for v in self._values_of(node):
                s = self.shape(v)
                if s is None:
                    continue
                for i in range(len(s)):
                    e = ("v", v[0], v[1], i)
                    if e not in self.touched:
                        self.ax.add(e, s[i])
                        self.ax.fix(e)
            self.touched = set()

    def _values_of(self, node: fx.Node):
        sh = self.shapes.get(node.name)
        if isinstance(sh, tuple) and sh and isinstance(sh[0], tuple):
            vals = [(node.name, i) for i in range(len(sh))]
        else:
            vals = [(node.name, None)]
        for a in node.all_input_nodes:
            vals.append((a.name, None))
        return vals

    def node(self, node: fx.Node) -> None:
        out = (node.name, None)
        op = node.op
        if op == "placeholder":
            return  # untied -> fixed
        if op == "output":
            if self.permute_outputs:
                for a in node.all_input_nodes:
                    for i in range(max(self.ndim((a.name, None)), 0)):
                        self.val((a.name, None), i)  # mark as tied (free)
            return
        if op == "get_attr":
            key = str(node.target)
            if key in self.state:
                for i in range(max(self.ndim(out), 0)):
                    self.tie_pv(key, i, out, i)
            return
        if op == "call_module":
            return self.module(node, self.modules[str(node.target)], str(node.target))
        if op in ("call_function", "call_method"):
            return self.function(node)
        raise UnsupportedOpError(f"node '{node.name}': op {op!r} is not supported by align")

    def unsupported(self, node: fx.Node, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"cannot align through node '{node.name}' ({what}): its effect on channel order is "
            "unknown to zootune.align; align supports convs, Linear, BatchNorm, LayerNorm, "
            "MultiheadAttention, element-wise ops, pooling, flatten/reshape, residual additions")

    def module(self, node: fx.Node, mod: nn.Module, name: str) -> None:
        x = self.ref(node.args[0]) if node.args else None
        out = (node.name, None)
        p = (name + ".") if name else ""
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nd = self.ndim(out)
            batched = nd == len(mod.kernel_size) + 2
            ch = 1 if batched else 0
            if batched:
                self.tie_vv(x, 0, out, 0)
            if mod.groups == 1:
                self.tie_pv(p + "weight", 0, out, ch)
                self.tie_pv(p + "weight", 1, x, ch)
                if mod.bias is not None:
                    self.tie_pv(p + "bias", 0, out, ch)
            elif mod.groups == mod.in_channels == mod.out_channels:  # depthwise
                self.tie_vv(x, ch, out, ch)
                self.tie_pv(p + "weight", 0, out, ch)
                if mod.bias is not None:
                    self.tie_pv(p + "bias", 0, out, ch)
            return
        if isinstance(mod, nn.Linear):
            nd = self.ndim(out)
            for i in range(nd - 1):
                self.tie_vv(x, i, out, i)
            self.tie_pv(p + "weight", 0, out, -1)
            self.tie_pv(p + "weight", 1, x, -1)
            if mod.bias is not None:
                self.tie_pv(p + "bias", 0, out, -1)
            return
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            self.tie_all(x, out)
            for t in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, t, None) is not None:
                    self.tie_pv(p + t, 0, out, 1)
            return
        if isinstance(mod, nn.LayerNorm):
            nd = self.ndim(out)
            k = len(mod.normalized_shape)
            for i in range(nd - k):
                self.tie_vv(x, i, out, i)
            if k == 1:
                self.tie_vv(x, nd - 1, out, nd - 1)
                for t in ("weight", "bias"):
                    if getattr(mod, t, None) is not None:
                        self.tie_pv(p + t, 0, out, -1)
            return
        if isinstance(mod, nn.GroupNorm):
            return  # channels are normalised in groups: permuting across groups is not allowed
        if isinstance(mod, nn.PReLU):
            self.tie_all(x, out)
            if mod.num_parameters > 1:
                self.tie_pv(p + "weight", 0, out, 1)
            return
        if isinstance(mod, _ELEMENTWISE_MODULES):
            self.tie_all(x, out)
            return
        if type(mod) in _POOL_MODULES:
            if getattr(mod, "return_indices", False):
                raise self.unsupported(node, f"{type(mod).__name__} with return_indices")
            k = _POOL_MODULES[type(mod)]
            for i in range(self.ndim(out) - k):
                self.tie_vv(x, i, out, i)
            return
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            self.tie_reshape(x, out)
            return
        if isinstance(mod, nn.Embedding):
            self.tie_pv(p + "weight", 1, out, -1)
            return
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(node, mod, p)
        raise self.unsupported(node, f"module '{name}' of type {type(mod).__name__}")

    def attention(self, node: fx.Node, mod: nn.MultiheadAttention, p: str) -> None:
        if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
            raise self.unsupported(node, "nn.MultiheadAttention with kdim/vdim, add_bias_kv or "
                                         "add_zero_attn")
        names = ("query", "key", "value")
        ins = [self.ref(node.args[i]) if len(node.args) > i else self.ref(node.kwargs.get(names[i]))
               for i in range(3)]
        out = (node.name, 0)
        E, H = mod.embed_dim, mod.num_heads
        for v in ins:
            self.tie_pv(p + "in_proj_weight", 1, v, -1)
        self.tie_pv(p + "out_proj.weight", 0, out, -1)
        if mod.out_proj.bias is not None:
            self.tie_pv(p + "out_proj.bias", 0, out, -1)
        # within each head: queries and keys share one permutation, values and the output
        # projection's columns another (q.k and softmax(.)v are unchanged)
        qk = [self.par(p + "in_proj_weight", 0, 0, E), self.par(p + "in_proj_weight", 0, E, E)]
        v = [self.par(p + "in_proj_weight", 0, 2 * E, E), self.par(p + "out_proj.weight", 1)]
        if mod.in_proj_bias is not None:
            qk += [self.par(p + "in_proj_bias", 0, 0, E), self.par(p + "in_proj_bias", 0, E, E)]
            v.append(self.par(p + "in_proj_bias", 0, 2 * E, E))
        for grp in (qk, v):
            for e in grp[1:]:
                self.ax.tie(grp[0], e)
            self.ax.set_blocks(grp[0], H)
        # the batch axis carries through; tokens are left fixed
        nd = self.ndim(out)
        if nd == 3 and ins[0] is not None:
            b = 0 if mod.batch_first else 1
            self.tie_vv(ins[0], b, out, b)

    def function(self, node: fx.Node) -> None:
        t = node.target
        out = (node.name, None)
        args = node.args
        x = self.ref(args[0]) if args else None
        method = node.op == "call_method"
        if (not method and t is getattr) or (method and t in _NON_TENSOR_METHODS):
            return
        if self.shapes.get(node.name) is None and not method and t is not operator.getitem:
            return  # a non-tensor computation (sizes, ints)
        if (method and t in _ELEMENTWISE_METHODS) or (not method and t in _ELEMENTWISE_FUNCS):
            self.tie_all(x, out)
            return
        if (method and t in _BINARY_METHODS) or (not method and t in _BINARY_FUNCS):
            self.tie_broadcast(out, [self.ref(a) for a in args[:2] if isinstance(a, fx.Node)])
            return
        if (method and t in _RESHAPE_METHODS) or (not method and t in _RESHAPE_FUNCS):
            self.tie_reshape(x, out)
            return
        if (method and t in ("transpose", "permute")) or (not method and t in (torch.transpose, torch.permute)):
            nd = self.ndim(x)
            if t in ("transpose", torch.transpose):
                d0, d1 = args[1] % nd, args[2] % nd
                order = list(range(nd))
                order[d0], order[d1] = order[d1], order[d0]
            else:
                dims = args[1:] if method and not isinstance(args[1], (list, tuple)) else args[1]
                order = [d % nd for d in dims]
            for j, i in enumerate(order):
                self.tie_vv(x, i, out, j)
            return
        if (method and t in _REDUCE_METHODS) or (not method and t in _REDUCE_FUNCS):
            dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            nd = self.ndim(x)
            if dims is None:
                return
            dims = {d % nd for d in ((dims,) if isinstance(dims, int) else dims)}
            j = 0
            for i in range(nd):
                if i in dims:
                    j += 1 if keep else 0
                    continue
                self.tie_vv(x, i, out, j)
                j += 1
            return
        if not method and t in _POOL_FUNCS:
            for i in range(self.ndim(out) - _POOL_FUNCS[t]):
                self.tie_vv(x, i, out, i)
            return
        if not method and t is torch.cat:
            tensors = [self.ref(a) for a in args[0]]
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            nd = self.ndim(out)
            for v in tensors:
                for i in range(nd):
                    if i != dim % nd:
                        self.tie_vv(v, i, out, i)
            return
        if not method and t is operator.getitem:
            return self.getitem(node)
        if not method and t is F.linear:
            w = self.ref(args[1] if len(args) > 1 else node.kwargs.get("weight"))
            b = self.ref(args[2] if len(args) > 2 else node.kwargs.get("bias"))
            for i in range(self.ndim(out) - 1):
                self.tie_vv(x, i, out, i)
            self.tie_vv(w, 0, out, -1)
            self.tie_vv(w, 1, x, -1)
            if b is not None:
                self.tie_vv(b, 0, out, -1)
            return
        if not method and t is F.layer_norm:
            shape = args[1]
            nd = self.ndim(out)
            for i in range(nd - len(shape)):
                self.tie_vv(x, i, out, i)
            if len(shape) == 1:
                self.tie_vv(x, nd - 1, out, nd - 1)
                for a in list(args[2:4]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]:
                    if isinstance(a, fx.Node):
                        self.tie_vv(self.ref(a), 0, out, -1)
            return
        if (not method and t in (torch.matmul, operator.matmul, torch.bmm)) or (method and t in ("matmul", "bmm")):
            a, b = x, self.ref(args[1])
            na, nb, no = self.ndim(a), self.ndim(b), self.ndim(out)
            if na >= 2 and nb >= 2:
                self.tie_vv(a, na - 1, b, nb - 2)
                self.tie_vv(a, na - 2, out, no - 2)
                self.tie_vv(b, nb - 1, out, no - 1)
                sa, sb, so = self.shape(a), self.shape(b), self.shape(out)
                for k in range(3, no + 1):
                    for v, s, n in ((a, sa, na), (b, sb, nb)):
                        if n >= k and s[-k] == so[-k] and s[-k] != 1:
                            self.tie_vv(v, n - k, out, no - k)
            return
        if not method and t is F.scaled_dot_product_attention:
            q, k, v = (self.ref(a) for a in args[:3])
            n = self.ndim(q)
            self.tie_vv(q, n - 1, k, n - 1)
            self.tie_vv(v, n - 1, out, n - 1)
            for i in range(n - 2):  # batch and head axes
                for other in (k, v, out):
                    self.tie_vv(q, i, other, i)
            return
        what = f"method .{t}()" if method else f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}"
        raise self.unsupported(node, what)

    def getitem(self, node: fx.Node) -> None:
        src, idx = node.args[0], node.args[1]
        out = (node.name, None)
        sh = self.shapes.get(src.name) if isinstance(src, fx.Node) else None
        if isinstance(sh, tuple) and sh and isinstance(sh[0], tuple) and isinstance(idx, int):
            v = (src.name, idx)
            for i in range(max(self.ndim(v), 0)):
                self.tie_vv(v, i, out, i)
            return
        if self.shape((src.name, None)) is None:
            return
        # tensor indexing: full slices keep an axis, ints drop it, anything else fixes it
        idx = idx if isinstance(idx, tuple) else (idx,)
        nd = self.ndim((src.name, None))
        if any(i is Ellipsis for i in idx):
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (nd - len(idx) + 1) + idx[k + 1:]
        i = j = 0
        for it in idx:
            if it is None:
                j += 1
                continue
            if isinstance(it, slice) and it == slice(None):
                self.tie_vv((src.name, None), i, out, j)
                i, j = i + 1, j + 1
            elif isinstance(it, int):
                i += 1
            elif isinstance(it, slice):
                i, j = i + 1, j + 1
            else:
                return
        while i < nd:
            self.tie_vv((src.name, None), i, out, j)
            i, j = i + 1, j + 1


def permutation_spec(
    model: nn.Module, example_input: Any, *, permute_outputs: bool = False,
) -> PermutationSpec:
    """The permutation groups of ``model`` (see the module docstring).

    ``example_input``: one input batch (or a tuple of positional inputs) used once to learn the
    shapes of every value. ``permute_outputs``: the model's outputs may be permuted too (useful
    when the head will be replaced: the features of a head-less trunk become a group).
    """
    gm = trace(model)
    rec = _ShapeRecorder(gm)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            rec.run(*args)
    except Exception as exc:  # noqa: BLE001
        raise AlignError(f"running {type(model).__name__} on the example input failed: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        model.train(was)
    state = dict(model.state_dict())
    b = _Builder(gm, rec.shapes, state, permute_outputs)
    b.run()
    ax = b.ax
    classes: dict[Hashable, dict[str, Any]] = {}
    for e in list(ax.parent):
        root, f = ax.find(e)
        c = classes.setdefault(root, {"members": [], "nodes": [], "factors": []})
        c["factors"].append((e, f))
    groups: list[Group] = []
    touched: set[str] = set()
    for root, c in classes.items():
        if root in ax.fixed:
            continue
        members, nodes = [], []
        base = min(ax.size[e] // f for e, f in c["factors"])
        for e, f in c["factors"]:
            unit = ax.size[e] // base
            if e[0] == "p":
                members.append(Member(e[1], e[2], unit, e[3]))
            elif unit == 1:
                nodes.append((e[1], e[2], e[3]))
        if not members:
            continue
        blocks = ax.blocks.get(root, 1)
        if base % blocks:
            continue
        members.sort(key=lambda m: (list(state).index(m.key), m.axis, m.offset))
        touched.update(m.key for m in members)
        groups.append(Group(f"{members[0].key}:{members[0].axis}", base, members, nodes, blocks))
    groups.sort(key=lambda g: (list(state).index(g.members[0].key), g.members[0].axis, g.members[0].offset))
    for i, g in enumerate(groups):
        g.name = f"P{i}[{g.members[0].key}:{g.members[0].axis}]"
    untouched = [k for k, v in state.items() if k not in touched and v.dim() > 0]
    return PermutationSpec(groups, gm, untouched)


def permute_state(state: dict[str, torch.Tensor], spec: PermutationSpec,
                  perms: Sequence[torch.Tensor], skip: Member | None = None) -> dict[str, torch.Tensor]:
    """``state`` with every group's permutation applied (new tensors for the touched keys).

    ``perms[g][c]`` is the channel of the input model that becomes channel ``c``. ``skip``: a
    member left unpermuted (used by weight matching).
    """
    index: dict[tuple[str, int], torch.Tensor] = {}
    for g, perm in zip(spec.groups, perms):
        for m in g.members:
            if m == skip or m.key not in state:
                continue
            t = state[m.key]
            idx = index.get((m.key, m.axis))
            if idx is None:
                idx = index[(m.key, m.axis)] = torch.arange(t.shape[m.axis])
            span = (perm[:, None] * m.factor + torch.arange(m.factor)).reshape(-1) + m.offset
            idx[m.offset:m.offset + g.size * m.factor] = span
    out = dict(state)
    for (key, axis), idx in index.items():
        out[key] = out[key].index_select(axis, idx)
    return out
