"""``contrastive``: SimCLR-style self-supervised training (Chen et al., ICML 2020).

What the paper's zoo has and a zoo fine-tuned from one base lacks: a member trained by another
algorithm from its *own* random start (MoCo in Zoo-Tuning §4.2). This method trains such a
model with no use of the labels by the backbone:

* every training image is turned into **two augmented views** (:func:`augment_views`, batched
  torch ops, drawn from the global RNG the trainer seeds and checkpoints): a random resized
  crop + rotation + shear (one affine resampling), stroke-width change, contrast and
  brightness jitter, Gaussian noise and a random erased square; ``strength`` scales every range
  (0: identical views);
* both views go through the model in **one batch** (BatchNorm sees the 2B images together) and
  the features entering the task head (captured by a hook on ``task.head_name``, so any
  architecture works) go through a **projection MLP** ``Linear(d, d) - ReLU - Linear(d,
  proj_dim)`` (an extra module: trained and checkpointed, never exported);
* the loss is **NT-Xent** (:func:`nt_xent`): for each of the 2B projections, cross-entropy of
  its cosine similarities / ``temperature`` to the 2B-1 others, the other view of the same image
  being the right answer.

``probe: true`` (default) also trains the task head as an **online linear probe** on the
*detached* features of the first view (cross-entropy on the labels; no gradient reaches the
backbone), so the run's validation/test accuracy is a linear-probe accuracy of the
self-supervised features, and the exported model is an ordinary classifier. ``probe: false``
trains the backbone alone (the head stays as initialised; its metrics are then meaningless).

``init: random`` (default) re-initialises the zoo member (``source``) before training, seeded
by ``train.seed``: a model from its own start, like MoCo; ``init: source`` continues from it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zootune.methods.base import BuildContext, Method, MethodError, MethodOptions, register
from zootune.methods.single import _source_index, reset_parameters

__all__ = ["Contrastive", "ProjectionHead", "augment_views", "nt_xent", "pair_similarities"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of two batches of projections ``(B, D)`` (row ``i`` of each: views of image ``i``).

    The 2B rows are L2-normalised; row ``k``'s logits are its cosine similarities to the other
    2B-1 rows divided by ``temperature``; the target is its partner (``k +- B``). Mean over the
    2B rows.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (B, D) batches of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


def pair_similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """``(mean cosine of matching rows, mean cosine of non-matching rows)`` of ``z1`` vs ``z2``."""
    s = F.normalize(z1.float(), dim=1) @ F.normalize(z2.float(), dim=1).t()
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return float(s[eye].mean()), float(s[~eye].mean())


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def augment_views(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """One random view of every image of ``x`` ``(N, C, H, W)`` in ``[0, 1]`` (see module doc).

    Ranges at ``strength`` 1: crop scale 0.6-1 of the side (i.e. zoom 1-1.67x), rotation
    +-20 degrees, shear +-0.2, translation +-15% (of the image), stroke change with probability
    0.5, contrast 0.5-1, brightness +-0.1, noise std 0-0.1, an erased square of 1/4 of the side
    with probability 0.5. Draws from the global torch RNG.
    """
    s = float(strength)
    if s <= 0:
        return x.clone()
    n, dev = x.shape[0], x.device
    zoom = 1.0 / _uniform(n, 1.0 - min(0.4 * s, 0.8), 1.0, dev)  # crop scale -> magnification
    ang = torch.deg2rad(_uniform(n, -20 * s, 20 * s, dev))
    sh = _uniform(n, -0.2 * s, 0.2 * s, dev)
    tx = _uniform(n, -0.15 * s, 0.15 * s, dev) * 2.0
    ty = _uniform(n, -0.15 * s, 0.15 * s, dev) * 2.0
    cos, sin = torch.cos(ang), torch.sin(ang)
    a = torch.stack([torch.stack([cos, -sin + sh * cos], -1), torch.stack([sin, cos + sh * sin], -1)], -2)
    a = torch.linalg.inv(a * zoom.view(n, 1, 1))
    theta = torch.cat([a, torch.stack([tx, ty], -1).unsqueeze(-1)], -1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # stroke width: a quarter thicker (3x3 max), a quarter thinner (half an erosion)
    u = torch.rand(n, device=dev).view(n, 1, 1, 1)
    p = min(0.5 * s, 1.0)
    dil = F.max_pool2d(v, 3, stride=1, padding=1)
    ero = 0.5 * (v - F.max_pool2d(-v, 3, stride=1, padding=1))
    v = torch.where(u < p / 2, dil, torch.where(u < p, ero, v))
    # photometric: contrast, brightness, noise
    c = _uniform(n, max(1.0 - 0.5 * s, 0.05), 1.0, dev).view(n, 1, 1, 1)
    br = _uniform(n, -0.1 * s, 0.1 * s, dev).view(n, 1, 1, 1)
    sd = _uniform(n, 0.0, 0.1 * s, dev).view(n, 1, 1, 1)
    v = v * c + br + sd * torch.randn_like(v)
    # random erasing of a square of a quarter of the side
    h, w = x.shape[-2:]
    k = max(1, int(round(h / 4)))
    erase = torch.rand(n, device=dev) < min(0.5 * s, 1.0)
    y0 = (torch.rand(n, device=dev) * (h - k + 1)).long().view(n, 1, 1)
    x0 = (torch.rand(n, device=dev) * (w - k + 1)).long().view(n, 1, 1)
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    box = (yy >= y0) & (yy < y0 + k) & (xx >= x0) & (xx < x0 + k) & erase.view(n, 1, 1)
    v = v.masked_fill(box.unsqueeze(1), 0.0)
    return v.clamp(0.0, 1.0)


class ProjectionHead(nn.Sequential):
    """SimCLR's projection MLP: ``Linear(d, hidden) - ReLU - Linear(hidden, out)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        hidden = hidden or in_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class _Capture:
    """Forward pre-hook keeping the input of one module (the features entering the head)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.value = inputs[0]


@register("contrastive")
class Contrastive(Method):
    """Self-supervised SimCLR training (NT-Xent of two augmented views); see the module doc."""

    class Options(MethodOptions):
        #: which zoo member gives the architecture (and the start when ``init: source``)
        source: int | str = Field(default=0)
        #: ``random``: re-initialise it (its own start, like MoCo); ``source``: continue from it
        init: Literal["random", "source"] = "random"
        #: NT-Xent temperature
        temperature: float = Field(default=0.2, gt=0)
        #: output width of the projection MLP (hidden width: the feature width)
        projection_dim: int = Field(default=64, ge=1)
        #: scale of every augmentation range (0: two identical views)
        strength: float = Field(default=1.0, ge=0)
        #: also train the task head on detached features (an online linear probe)
        probe: bool = True

    def __init__(self, options: MethodOptions | None = None) -> None:
        super().__init__(options)
        self._proj: ProjectionHead | None = None

    def build(self, ctx: BuildContext) -> nn.Module:
        i = _source_index(self.options.source, ctx)
        model = ctx.target_models()[i]
        if self.options.init == "random" and not ctx.structure_only:
            reset_parameters(model)
        self.attach_projection(model, ctx.task)
        return model

    def attach_projection(self, model: nn.Module, task: Any) -> ProjectionHead:
        """Create the projection MLP for ``model`` (sized by its task head's input width)."""
        head = self._head(model, task)
        d = getattr(head, "in_features", None)
        if d is None:
            raise MethodError("contrastive: the task head has no in_features (a Linear head is "
                              "expected)")
        p = next(model.parameters())
        self._proj = ProjectionHead(int(d), self.options.projection_dim).to(p.device)
        return self._proj

    def _head(self, model: nn.Module, task: Any) -> nn.Module:
        name = getattr(task, "head_name", None)
        if not name:
            raise MethodError("contrastive needs a task with a head module (task.head_name) to "
                              "find the features; e.g. the classification task")
        return getattr(model, "module", model).get_submodule(name)

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self._proj is None:
            raise MethodError("contrastive: build the model (or call attach_projection) first")
        return {"projection": self._proj}

    def embed(self, model: nn.Module, x: torch.Tensor, task: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features entering the head, model outputs)`` of one forward pass of ``x``."""
        head = self._head(model, task)
        cap = _Capture()
        h = head.register_forward_pre_hook(cap)
        try:
            out = model(x)
        finally:
            h.remove()
        if cap.value is None:
            raise MethodError("contrastive: the task head was not called in the forward pass")
        return cap.value.flatten(1), out

    def loss(self, model: nn.Module, batch: dict[str, Any], task: Any) -> tuple[torch.Tensor, Any]:
        o = self.options
        x = batch[task.input_field]
        b = x.shape[0]
        views = torch.cat([augment_views(x, o.strength), augment_views(x, o.strength)])
        feats, _ = self.embed(model, views, task)
        head = self._head(model, task)
        assert self._proj is not None, "attach_projection was not called"
        z = self._proj(feats)
        loss = nt_xent(z[:b], z[b:], o.temperature)
        logits = head(feats[:b].detach())
        if o.probe:
            loss = loss + task.loss(logits, batch)
        return loss, logits

    def describe(self) -> str:
        o = self.options
        return (f"contrastive (SimCLR NT-Xent, T={o.temperature:g}, proj {o.projection_dim}, "
                f"strength {o.strength:g}, init {o.init}{', linear probe' if o.probe else ''})")

