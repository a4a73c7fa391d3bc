"""Facial landmark detection (paper §4.3, appendix A.2): a heatmap head on each source's trunk.

The protocol the paper follows (SimpleBaseline / HRNet, Sun et al. 2019):

* **model**: the source architecture's *trunk* — everything before global pooling — then a head of
  ``deconv_layers`` 4x4 transposed convolutions with stride 2 (each followed by BatchNorm and
  ReLU, ``deconv_channels`` wide) and a 1x1 convolution giving one heatmap per landmark
  (appendix A.2: three deconvolutions on ResNet-50, so a 256x256 face gives 64x64 heatmaps).
  ``deconv_layers: auto`` (the default) picks the number that makes the heatmap stride
  ``heatmap_stride`` (4, the paper's) for any trunk: 3 on a ResNet, 0 on the demo zoo's
  MiniCNN, whose trunk has stride 4;
* **targets**: a Gaussian of standard deviation ``sigma`` heatmap pixels at every landmark
  (:func:`gaussian_heatmaps`); points outside the image get no target (weight 0); loss: the
  mean squared error of heatmaps;
* **decoding** (:func:`decode_heatmaps`): the highest heat value, shifted a quarter pixel towards
  the higher of its two neighbours in x and in y (paper §4.3, after Chen et al. 2017), mapped
  back to image pixels;
* **metrics**: NME, the mean point-to-point error over the landmarks divided by the
  inter-ocular (outer eye corners) distance of each face (:func:`normalized_mean_error`; which
  points for 68 / 98 / 29 landmarks: :mod:`zootune.data.landmarks.schemes`), averaged over faces;
  the failure rate (share of faces with NME > ``failure_threshold``, 0.1) and the AUC of the
  cumulative error distribution up to the same threshold (:func:`auc`, exact). Per-face NMEs
  are a ``cat`` metric, so both are computed on the whole split, not averaged over batches.
  NME is invariant to the crop and resize of a face (one isotropic scale for both distances),
  so measuring it on the crop equals measuring it on the original image.

How the trunk is found (:func:`attach_heatmap_head`), for torchvision, timm and plain models
alike: the classifier is stripped (:func:`zootune.zoo.strip_head`); one forward pass of an
example input with hooks on every module finds the last module whose output is a spatial map
(``N, C, H, W`` with ``H*W > 1``) — ``layer4`` of a ResNet, the last ReLU (``features.16``) of MiniCNN — unless
``task.trunk`` names it; torchvision's ``create_feature_extractor`` (``torch.fx``) cuts the
model there and the head is appended to the traced graph as the module ``heatmap_head``. The
result is one plain module whose module names are the source architecture's (so Zoo-Tuning's
``layers`` / ``align`` patterns keep working) plus ``heatmap_head``, which is kept out of
aggregation. A model ``torch.fx`` cannot trace gets a :class:`HookedHeatmapNet` instead (the
whole model runs, the trunk's output is picked up by a hook; module names gain a ``body.``
prefix).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Literal, Mapping, Sequence

import torch
from pydantic import Field
from torch import nn

from zootune.errors import HeadError
from zootune.tasks.base import Task, TaskError, TaskOptions, record_forward, register

HEAD_NAME = "heatmap_head"

# --------------------------------------------------------------------------------------------
# heatmaps: targets and decoding
# --------------------------------------------------------------------------------------------


def gaussian_heatmaps(keypoints: torch.Tensor, heatmap_size: tuple[int, int],
                      stride: tuple[float, float], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Target heatmaps ``(B, K, h, w)`` and weights ``(B, K)`` for keypoints ``(B, K, 2)``.

    Heatmap cell ``(u, v)`` covers image pixels ``[u*sx, (u+1)*sx) x [v*sy, (v+1)*sy)`` (edge
    convention), so a keypoint ``(x, y)`` sits at cell coordinates ``(x/sx - 0.5, y/sy - 0.5)``;
    the target is ``exp(-d^2 / (2 sigma^2))`` of the distance ``d`` in cells (peak 1 at the
    point). Keypoints outside the image get weight 0 (and an all-zero heatmap).
    """
    h, w = heatmap_size
    sx, sy = stride
    kp = keypoints.float()
    cx = kp[..., 0] / sx - 0.5
    cy = kp[..., 1] / sy - 0.5
    xs = torch.arange(w, device=kp.device, dtype=kp.dtype)
    ys = torch.arange(h, device=kp.device, dtype=kp.dtype)
    gx = torch.exp(-(xs - cx[..., None]) ** 2 / (2 * sigma ** 2))  # (B, K, w)
    gy = torch.exp(-(ys - cy[..., None]) ** 2 / (2 * sigma ** 2))  # (B, K, h)
    inside = ((kp[..., 0] >= 0) & (kp[..., 0] < w * sx) & (kp[..., 1] >= 0) & (kp[..., 1] < h * sy)
              & torch.isfinite(kp).all(-1))
    weight = inside.to(kp.dtype)
    return gy[..., :, None] * gx[..., None, :] * weight[..., None, None], weight


def decode_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """Cell coordinates ``(B, K, 2)`` (x, y) of the maxima of ``(B, K, h, w)`` heatmaps.

    The paper's decoding (§4.3): the location of the highest heat value, moved by a quarter cell
    in x towards the higher of its left and right neighbours, and likewise in y (no move when
    they are equal or at the border). It is within a quarter cell of the peak of a symmetric
    blob whose peak lies within half a cell of the best cell.
    """
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w).float()
    idx = flat.argmax(-1)
    x, y = (idx % w), torch.div(idx, w, rounding_mode="floor")
    hm = heatmaps.float()

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        yy, xx = yy.clamp(0, h - 1), xx.clamp(0, w - 1)
        return hm.reshape(b, k, h * w).gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * ((x > 0) & (x < w - 1))
    dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * ((y > 0) & (y < h - 1))
    return torch.stack([x.float() + 0.25 * dx, y.float() + 0.25 * dy], -1)


def heatmap_to_image(cells: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """Cell coordinates -> image pixel coordinates (edge convention): ``(u + 0.5) * stride``."""
    s = torch.tensor(stride, dtype=cells.dtype, device=cells.device)
    return (cells + 0.5) * s


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def normalized_mean_error(pred: torch.Tensor, gt: torch.Tensor,
                          norm: Sequence[int] | Literal["box"] = (36, 45)) -> torch.Tensor:
    """Per-face NME ``(B,)``: mean over landmarks of ``|pred - gt|``, divided by the distance of
    the two ground-truth points ``norm`` (the inter-ocular distance) or, with ``"box"``, by
    ``sqrt(w * h)`` of the ground truth's bounding box."""
    err = (pred.double() - gt.double()).norm(dim=-1).mean(-1)
    g = gt.double()
    if isinstance(norm, str):
        if norm != "box":
            raise TaskError(f"norm must be two landmark indices or 'box', got {norm!r}")
        wh = g.amax(1) - g.amin(1)
        d = (wh[:, 0] * wh[:, 1]).sqrt()
    else:
        a, b = (int(i) for i in norm)
        d = (g[:, a] - g[:, b]).norm(dim=-1)
    return err / d.clamp_min(1e-12)


def failure_rate(nme: torch.Tensor, threshold: float = 0.1) -> float:
    """Share of faces whose NME exceeds ``threshold``."""
    return float((nme.double() > threshold).double().mean()) if nme.numel() else 0.0


def auc(nme: torch.Tensor, threshold: float = 0.1) -> float:
    """Area under the cumulative error distribution ``CED(e) = P(NME <= e)`` on
    ``[0, threshold]``, divided by ``threshold`` (1 = every face perfect).

    Exact for the step function: ``sum_i max(threshold - nme_i, 0) / (N * threshold)``.
    """
    if not nme.numel():
        return 0.0
    e = nme.double()
    return float((threshold - e).clamp_min(0).sum() / (e.numel() * threshold))


# --------------------------------------------------------------------------------------------
# the head and the trunk
# --------------------------------------------------------------------------------------------


class HeatmapHead(nn.Sequential):
    """``deconv_layers`` x (ConvTranspose2d k x k, stride 2 -> BatchNorm -> ReLU) -> 1x1 conv to
    ``num_points`` heatmaps (SimpleBaseline's head; weights ~ N(0, 0.001), biases 0, as there)."""

    def __init__(self, in_channels: int, num_points: int, deconv_layers: int = 3,
                 channels: int = 256, kernel: int = 4) -> None:
        pads = {4: (1, 0), 3: (1, 1), 2: (0, 0)}
        if kernel not in pads:
            raise TaskError(f"task.deconv_kernel must be 2, 3 or 4, got {kernel}")
        pad, out_pad = pads[kernel]
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(deconv_layers):
            layers += [nn.ConvTranspose2d(c, channels, kernel, stride=2, padding=pad,
                                          output_padding=out_pad, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            c = channels
        layers.append(nn.Conv2d(c, num_points, 1))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class HookedHeatmapNet(nn.Module):
    """Fallback for models ``torch.fx`` cannot trace: runs ``body`` whole and feeds the output of
    its module ``layer`` (picked up by a forward hook) to ``heatmap_head``."""

    def __init__(self, body: nn.Module, layer: str, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.layer = layer
        setattr(self, HEAD_NAME, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        target = self.body.get_submodule(self.layer) if self.layer else self.body
        hook = target.register_forward_hook(lambda mod, inp, out: seen.append(out))
        try:
            out = self.body(x)
        finally:
            hook.remove()
        return getattr(self, HEAD_NAME)(seen[-1] if seen else out)


def find_trunk(model: nn.Module, example: torch.Tensor) -> tuple[str, tuple[int, ...]]:
    """``(module name, feature shape (C, H, W))`` of the last module whose output on ``example``
    is a spatial map (4-D, ``H*W > 1``): where the trunk ends. ``""`` is the whole model."""
    found: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, mod in model.named_modules():
        def hook(m, i, o, name=name):
            if torch.is_tensor(o) and o.dim() == 4 and o.shape[-1] * o.shape[-2] > 1:
                found.append((name, tuple(o.shape[1:])))
        hooks.append(mod.register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    if not found:
        raise HeadError(f"{type(model).__name__} produces no spatial feature map (N, C, H, W) on "
                        f"{tuple(example.shape[1:])} inputs: a heatmap head needs a convolutional trunk")
    return found[-1]


def _feature_shape(model: nn.Module, layer: str, example: torch.Tensor) -> tuple[int, ...]:
    try:
        model.get_submodule(layer) if layer else model
    except AttributeError:
        raise TaskError(f"task.trunk {layer!r} is not a module of {type(model).__name__}") from None
    seen = [out for _, out in record_forward(model, example, [layer]).get(layer, [])]
    if not seen or not torch.is_tensor(seen[-1]) or seen[-1].dim() != 4:
        raise TaskError(f"task.trunk {layer!r} does not output a feature map (N, C, H, W)")
    return tuple(seen[-1].shape[1:])


def _traced_trunk(model: nn.Module, layer: str):
    """The fx graph of ``model`` cut after module ``layer`` (its output the graph's output), or
    ``None`` when the model cannot be traced (or traces differently in train and eval mode)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            node = layer or get_graph_node_names(model)[1][-1]
            fe = create_feature_extractor(model, return_nodes={node: "features"},
                                          suppress_diff_warning=True)
    except Exception:  # noqa: BLE001 - any tracing failure: use the hook fallback
        return None
    train_g = getattr(fe, "train_graph", fe.graph)
    eval_g = getattr(fe, "eval_graph", fe.graph)
    if str(train_g) != str(eval_g):
        return None
    graph = copy.deepcopy(train_g)
    out = next(n for n in graph.nodes if n.op == "output")
    feat = out.args[0]["features"]
    with graph.inserting_before(out):
        h = graph.call_module(HEAD_NAME, (feat,))
    out.args = (h,)
    return graph


class TracedHeatmapNet(nn.Module):
    """A source model cut after its trunk, with the heatmap head appended: runs the Python code
    ``torch.fx`` generated for the cut graph. Its submodules keep the source architecture's names
    (containers on the way become plain ``nn.Module``s) plus ``heatmap_head``.

    One class for every zoo member (an ``fx.GraphModule`` gets a class of its own per instance,
    which a zoo's same-architecture check rightly rejects)."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        for name, child in gm.named_children():
            self.add_module(name, child)
        for name, p in gm.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in gm.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.code = gm.code  # the generated forward, for reading
        self._fx_forward = type(gm).forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fx_forward(self, x)


def _with_head(model: nn.Module, graph: Any, head: nn.Module) -> nn.Module:
    from torch import fx

    root = nn.Module()
    for name, child in model.named_children():
        root.add_module(name, child)
    for name, p in model.named_parameters(recurse=False):
        root.register_parameter(name, p)
    for name, b in model.named_buffers(recurse=False):
        root.register_buffer(name, b)
    root.add_module(HEAD_NAME, head)
    return TracedHeatmapNet(fx.GraphModule(root, copy.deepcopy(graph)))


def attach_heatmap_head(models: Sequence[nn.Module], num_points: int, example: torch.Tensor, *,
                        trunk: str | None = None, deconv_layers: int | Literal["auto"] = "auto",
                        heatmap_stride: int = 4, channels: int = 256, kernel: int = 4,
                        seed: int | None = None) -> tuple[list[nn.Module], dict[str, Any]]:
    """Put the same fresh :class:`HeatmapHead` on the trunk of every model (module docstring).

    ``example``: a batch of inputs ``(N, C, H, W)`` (finds the trunk and its stride). Returns
    ``(models, facts)``; ``facts``: trunk layer, feature shape, deconv layers, heatmap stride,
    whether the fx path was taken. The models are new modules sharing the sources' weights.
    """
    from zootune.zoo import strip_head

    if not models:
        raise HeadError("no source models to attach a heatmap head to")
    for m in models:
        strip_head(m)
    if trunk is None:
        layer, shape = find_trunk(models[0], example)
    else:
        layer, shape = trunk, _feature_shape(models[0], trunk, example)
    c, fh, fw = shape
    stride = example.shape[-1] / fw
    if deconv_layers == "auto":
        n = max(0, int(round(math.log2(max(stride / heatmap_stride, 1e-9)))))
    else:
        n = int(deconv_layers)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        head = HeatmapHead(c, num_points, n, channels, kernel)
    p0 = next(models[0].parameters(), None)
    if p0 is not None:
        head = head.to(device=p0.device, dtype=p0.dtype)
    graph = _traced_trunk(models[0], layer)
    out: list[nn.Module] = []
    for m in models:
        h = copy.deepcopy(head)
        out.append(_with_head(m, graph, h) if graph is not None else HookedHeatmapNet(m, layer, h))
    facts = {"trunk": layer or "(whole model)", "features": list(shape), "trunk_stride": stride,
             "deconv_layers": n, "heatmap_stride": stride / 2 ** n, "traced": graph is not None}
    return out, facts


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------


@register("landmarks")
class LandmarkTask(Task):
    """Heatmap regression of facial landmarks; metrics NME, failure rate and AUC (module doc).

    Sample fields: ``image`` (the input) and ``keypoints`` ``(K, 2)`` in pixels of the image.
    """

    class Options(TaskOptions):
        #: number of landmarks (default: the data set's)
        num_points: int | None = Field(default=None, ge=1)
        #: module whose output the head reads (default: found automatically)
        trunk: str | None = None
        #: transposed convolutions of the head (``auto``: reach ``heatmap_stride``; paper: 3)
        deconv_layers: int | Literal["auto"] = "auto"
        heatmap_stride: int = Field(default=4, ge=1)
        deconv_channels: int = Field(default=256, ge=1)
        deconv_kernel: int = 4
        #: standard deviation of the Gaussian targets, in heatmap pixels
        sigma: float = Field(default=1.5, gt=0)
        #: normalisation of the error: two landmark indices, ``box``, or the data's scheme
        norm: list[int] | Literal["box", "inter_ocular"] = "inter_ocular"
        failure_threshold: float = Field(default=0.1, gt=0)
        #: faces drawn with predicted and true points in the run report
        report_images: int = Field(default=12, ge=0)

    primary_metric = "nme"
    higher_is_better = False
    metric_reductions = {"nme_per_face": "cat"}
    percent_metrics = frozenset({"nme", "failure_rate", "auc"})
    keypoint_field = "keypoints"

    def __init__(self, options: TaskOptions | None = None) -> None:
        super().__init__(options)
        self.scheme: str | None = None
        self.norm_pair: list[int] | None = None
        self.crop: str | None = None
        self.example_input: torch.Tensor | None = None
        self.head_facts: dict[str, Any] = {}

    # ---- set-up -----------------------------------------------------------------------------

    @property
    def num_points(self) -> int:
        n = self.options.num_points
        if n is None:
            raise TaskError("task.num_points is not set and no data set told it")
        return int(n)

    @property
    def replaces_heads(self) -> bool:
        return True

    @property
    def norm(self) -> Sequence[int] | str:
        o = self.options.norm
        if o == "inter_ocular":
            if self.norm_pair is None:
                raise TaskError("the data set names no inter-ocular pair: set task.norm to two "
                                "landmark indices or 'box'")
            return self.norm_pair
        if isinstance(o, list) and len(o) != 2:
            raise TaskError(f"task.norm must list two landmark indices, got {o}")
        return o

    def bind(self, data: Any) -> None:
        """Scheme, number of points and normalisation pair from ``data.info["landmarks"]``; an
        example input batch (the trunk is found with it)."""
        from zootune.data.sample import as_sample

        lm = dict((getattr(data, "info", None) or {}).get("landmarks") or {})
        if self.options.num_points is None:
            if not lm.get("num_points"):
                raise TaskError("task.num_points is not set and the data set does not tell it "
                                "(landmark data sets record info['landmarks'])")
            self.options.num_points = int(lm["num_points"])
        elif lm.get("num_points") and int(lm["num_points"]) != self.options.num_points:
            raise TaskError(f"task.num_points is {self.options.num_points} but the data has "
                            f"{lm['num_points']} landmarks")
        self.scheme = lm.get("scheme")
        self.norm_pair = list(lm["norm_pair"]) if lm.get("norm_pair") else None
        self.crop = lm.get("crop")
        ds = getattr(data, "val", None) or getattr(data, "train", None)
        if ds is not None and len(ds):
            x = torch.as_tensor(as_sample(ds[0])[self.input_field])
            self.example_input = x.unsqueeze(0).repeat(2, *([1] * x.dim()))

    def prepare_zoo(self, models: Sequence[nn.Module], keep_source_heads: bool = False) -> list[nn.Module]:
        if keep_source_heads:
            raise TaskError("landmarks replaces the source heads by a heatmap head; this method "
                            "needs the source heads kept")
        if self.example_input is None:
            raise TaskError("the landmarks task needs an example input (bind it to data first)")
        o = self.options
        models, self.head_facts = attach_heatmap_head(
            models, self.num_points, self.example_input, trunk=o.trunk, deconv_layers=o.deconv_layers,
            heatmap_stride=o.heatmap_stride, channels=o.deconv_channels, kernel=o.deconv_kernel,
            seed=self.seed)
        self.head_name = HEAD_NAME
        return models

    # ---- batches ----------------------------------------------------------------------------

    @staticmethod
    def stride(images: torch.Tensor, heatmaps: torch.Tensor) -> tuple[float, float]:
        """Image pixels per heatmap cell, ``(sx, sy)``."""
        return (images.shape[-1] / heatmaps.shape[-1], images.shape[-2] / heatmaps.shape[-2])

    def targets(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_heatmaps(batch[self.keypoint_field], tuple(outputs.shape[-2:]),
                                 self.stride(batch[self.input_field], outputs), self.options.sigma)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        target, weight = self.targets(outputs, batch)
        diff = (outputs.float() - target) ** 2 * weight[..., None, None]
        return diff.mean()

    def predict(self, outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Decoded landmarks ``(B, K, 2)`` in pixels of ``images``."""
        return heatmap_to_image(decode_heatmaps(outputs), self.stride(images, outputs))

    def batch_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        n = outputs.shape[0]
        pred = self.predict(outputs.detach(), batch[self.input_field])
        nme = normalized_mean_error(pred, batch[self.keypoint_field], self.norm)  # float64
        loss = self.loss(outputs.detach(), batch).float()
        return {"loss_sum": loss * n, "nme_per_face": nme,
                "count": torch.full((), float(n), device=outputs.device)}

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        n = max(float(totals.get("count", 0.0)), 1.0)
        e = totals.get("nme_per_face")
        e = torch.as_tensor(e if e is not None else [], dtype=torch.float64)
        t = self.options.failure_threshold
        return {"loss": float(totals.get("loss_sum", 0.0)) / n,
                "nme": float(e.mean()) if e.numel() else float("nan"),
                "failure_rate": failure_rate(e, t), "auc": auc(e, t)}

    # ---- records ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        shape = list(self.example_input.shape[1:]) if self.example_input is not None else None
        norm = self.options.norm if self.options.norm != "inter_ocular" else self.norm_pair
        return {"task": self.name, "num_points": self.options.num_points, "scheme": self.scheme,
                "norm": norm, "input_shape": shape, "crop": self.crop,
                "output": "heatmaps (N, num_points, H/stride, W/stride); decode with "
                          "zootune.tasks.landmarks.decode_heatmaps"}

    def restore(self, record: Mapping[str, Any]) -> None:
        if self.options.num_points is None and record.get("num_points"):
            self.options.num_points = int(record["num_points"])
        self.scheme = record.get("scheme")
        norm = record.get("norm")
        self.norm_pair = list(norm) if isinstance(norm, list) else None
        self.crop = record.get("crop")
        if record.get("input_shape"):
            self.example_input = torch.zeros(2, *record["input_shape"])

    def check_compatible(self, recorded: Mapping[str, Any]) -> None:
        """Data to evaluate must have the landmarks (count and scheme) the model predicts."""
        n = recorded.get("num_points")
        if n is not None and self.options.num_points is not None and int(n) != self.num_points:
            raise TaskError(f"the data has {self.num_points} landmarks but the model predicts {n}")
        s = recorded.get("scheme")
        if s and self.scheme and s != self.scheme:
            raise TaskError(f"the data's landmark scheme {self.scheme!r} differs from the model's {s!r}")

    # ---- report -----------------------------------------------------------------------------

    def report_section(self, model: nn.Module, data: Any, out_dir: Any) -> list[str]:
        """Test (or validation) faces with predicted and true points, and the cumulative error
        distribution: ``landmarks.png`` and ``ced.png`` in ``out_dir``."""
        from pathlib import Path

        from zootune.data.sample import as_sample, collate_samples
        from zootune.viz.landmarks import plot_ced, plot_landmark_predictions

        ds = getattr(data, "test", None) or getattr(data, "val", None)
        if ds is None or not len(ds) or self.options.report_images == 0:
            return []
        out = Path(out_dir)
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        nmes, shown = [], None
        try:
            with torch.no_grad():
                for start in range(0, len(ds), 64):
                    batch = collate_samples([as_sample(ds[i]) for i in range(start, min(start + 64, len(ds)))])
                    x = batch[self.input_field].to(device)
                    pred = self.predict(model(x), x).cpu()
                    nmes.append(normalized_mean_error(pred, batch[self.keypoint_field], self.norm))
                    if shown is None:
                        k = min(self.options.report_images, len(x))
                        shown = (batch[self.input_field][:k], pred[:k], batch[self.keypoint_field][:k])
        finally:
            model.train(was)
        e = torch.cat(nmes)
        plot_landmark_predictions(*shown, out / "landmarks.png", errors=e[:len(shown[0])].tolist())
        plot_ced(e, out / "ced.png", threshold=self.options.failure_threshold)
        t = self.options.failure_threshold
        return ["## Landmarks\n",
                f"Faces of the {'test' if getattr(data, 'test', None) is ds else 'validation'} split "
                f"with the predicted (red) and true (green) points and each face's NME:\n",
                "![landmark predictions](landmarks.png)\n",
                f"Cumulative error distribution (NME {100 * float(e.mean()):.2f}%, failure rate at "
                f"{t:g} {100 * failure_rate(e, t):.2f}%, AUC@{t:g} {100 * auc(e, t):.2f}%; "
                f"normalised by {self._norm_words()}):\n",
                "![cumulative error distribution](ced.png)\n"]

    def _norm_words(self) -> str:
        n = self.norm
        if isinstance(n, str):
            return "sqrt(w*h) of the true points' box"
        return f"the distance of landmarks {n[0]} and {n[1]}" + (
            " (outer eye corners)" if self.options.norm == "inter_ocular" else "")
