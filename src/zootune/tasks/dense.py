"""``dense_regression``: per-pixel regression (denoising, inpainting, depth-like maps).

A dense counterpart of the classification task, small enough for the CPU-scale paper zoo
(``benchmarks/paper_zoo.py``, whose ``dense`` member restores clean glyphs from noisy, partly
masked ones — the role DeepLabV3 plays in the paper's zoo).

* **model**: the source's *trunk* (everything before global pooling, found as for
  ``landmarks``) and the landmarks task's deconvolution head
  (:func:`zootune.tasks.landmarks.attach_heatmap_head`): ``deconv_layers`` 4x4 transposed
  convolutions (BatchNorm, ReLU) up to ``output_stride`` and a 1x1 convolution giving
  ``channels`` output maps; the head module is ``heatmap_head`` (kept out of aggregation);
* **samples**: ``image`` (the input) and ``target`` ``(channels, H / output_stride, W /
  output_stride)``;
* **loss**: mean squared error over pixels; **metrics**: ``mse`` (primary, lower is better;
  pixel-weighted over the split) and ``psnr`` (the mean over images of ``10 log10(peak^2 /
  mse_image)``, ``peak`` 1 by default).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

import torch
from pydantic import Field
from torch import nn

from zootune.tasks.base import Task, TaskError, TaskOptions, register
from zootune.tasks.landmarks import HEAD_NAME, attach_heatmap_head

__all__ = ["DenseRegressionTask"]


@register("dense_regression")
class DenseRegressionTask(Task):
    """Per-pixel regression with a deconvolution head on the trunk; MSE loss, MSE/PSNR metrics."""

    class Options(TaskOptions):
        #: output maps (default: the data's target channels)
        channels: int | None = Field(default=None, ge=1)
        #: module whose output the head reads (default: found automatically)
        trunk: str | None = None
        deconv_layers: int | Literal["auto"] = "auto"
        #: input pixels per output pixel (``auto`` deconvolutions reach it)
        output_stride: int = Field(default=1, ge=1)
        deconv_channels: int = Field(default=64, ge=1)
        deconv_kernel: int = 4
        #: value range of the targets (PSNR's peak)
        peak: float = Field(default=1.0, gt=0)

    primary_metric = "mse"
    higher_is_better = False
    target_field = "target"
    metric_reductions = {"mse_per_image": "cat"}

    def __init__(self, options: TaskOptions | None = None) -> None:
        super().__init__(options)
        self.example_input: torch.Tensor | None = None
        self.head_facts: dict[str, Any] = {}

    @property
    def replaces_heads(self) -> bool:
        return True

    def bind(self, data: Any) -> None:
        from zootune.data.sample import as_sample

        ds = getattr(data, "val", None) or getattr(data, "train", None)
        if ds is None or not len(ds):
            raise TaskError("dense_regression needs data to bind to")
        s = as_sample(ds[0])
        if self.target_field not in s:
            raise TaskError(f"dense_regression: samples have no {self.target_field!r} field")
        x, t = torch.as_tensor(s[self.input_field]), torch.as_tensor(s[self.target_field])
        if t.dim() != 3:
            raise TaskError(f"dense_regression: a target must be (C, H, W), got {tuple(t.shape)}")
        if self.options.channels is None:
            self.options.channels = int(t.shape[0])
        elif self.options.channels != t.shape[0]:
            raise TaskError(f"task.channels is {self.options.channels} but targets have "
                            f"{t.shape[0]} channels")
        self.example_input = x.unsqueeze(0).repeat(2, *([1] * x.dim()))

    def prepare_zoo(self, models: Sequence[nn.Module], keep_source_heads: bool = False) -> list[nn.Module]:
        if keep_source_heads:
            raise TaskError("dense_regression replaces the source heads by a deconvolution head")
        if self.example_input is None or self.options.channels is None:
            raise TaskError("dense_regression needs an example input (bind it to data first)")
        o = self.options
        models, self.head_facts = attach_heatmap_head(
            models, int(o.channels), self.example_input, trunk=o.trunk, deconv_layers=o.deconv_layers,
            heatmap_stride=o.output_stride, channels=o.deconv_channels, kernel=o.deconv_kernel,
            seed=self.seed)
        self.head_name = HEAD_NAME
        return models

    def _check(self, outputs: torch.Tensor, target: torch.Tensor) -> None:
        if outputs.shape != target.shape:
            raise TaskError(f"dense_regression: outputs {tuple(outputs.shape)} vs targets "
                            f"{tuple(target.shape)} (set task.output_stride to match the targets)")

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        target = batch[self.target_field].to(outputs.dtype)
        self._check(outputs, target)
        return ((outputs.float() - target.float()) ** 2).mean()

    def batch_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        target = batch[self.target_field]
        self._check(outputs, target)
        per = ((outputs.detach().float() - target.float()) ** 2).flatten(1).mean(1)
        n = outputs.shape[0]
        return {"loss_sum": per.sum(), "mse_per_image": per.double(),
                "count": torch.full((), float(n), device=outputs.device)}

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        n = max(float(totals.get("count", 0.0)), 1.0)
        e = totals.get("mse_per_image")
        e = torch.as_tensor(e if e is not None else [], dtype=torch.float64)
        peak2 = self.options.peak ** 2
        psnr = float((10 * torch.log10(peak2 / e.clamp_min(1e-12))).mean()) if e.numel() else math.nan
        mse = float(totals.get("loss_sum", 0.0)) / n
        return {"loss": mse, "mse": mse, "psnr": psnr}

    def describe(self) -> dict[str, Any]:
        shape = list(self.example_input.shape[1:]) if self.example_input is not None else None
        return {"task": self.name, "channels": self.options.channels, "input_shape": shape,
                "output": "maps (N, channels, H/output_stride, W/output_stride)"}

    def restore(self, record: Mapping[str, Any]) -> None:
        if self.options.channels is None and record.get("channels"):
            self.options.channels = int(record["channels"])
        if record.get("input_shape"):
            self.example_input = torch.zeros(2, *record["input_shape"])
