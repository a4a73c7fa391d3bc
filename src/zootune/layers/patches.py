"""Non-overlapping patches of a feature map as the rows of a matrix, and back.

A convolution whose stride equals its kernel size, without padding or dilation (both
convolutions of the DER network: 5x5, stride 5), reads every input pixel at most once: im2col
is a reordering of the input, not a gather with repeats, and the convolution is one matrix
product of the patch rows with the weight in the same order; its output comes out per patch,
i.e. channels-last. For a channels-last (NHWC) input the natural order of a patch is
``(kh, kw, c)`` and the reordering moves runs of ``kw * C`` contiguous numbers (the whole patch
row); for an NCHW input it is ``(c, kh, kw)`` with runs of ``kw``. (An ad-hoc timing of the DER's
conv2 input at batch 32 here: 0.05 vs 0.27 ms.)

Used by the ``unfold`` kernel (per-sample weights, a batched product) and the ``stacked``
kernel (source weights stacked, one product) of :mod:`.kernels` when the patches do not overlap
(``ConvSpec.non_overlapping``).
"""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """``x`` (B, C, H, W) is stored NHWC and not also NCHW (``C > 1``, not a 1x1 map)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def patch_rows(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The ``kh x kw`` patches of ``x`` (B, C, H, W) at stride ``(kh, kw)`` as rows
    (B, Ho*Wo, kh*kw*C): in ``(kh, kw, c)`` order for a channels-last ``x`` (runs of
    ``kw * C`` numbers move), else in ``(c, kh, kw)`` order (runs of ``kw``). The remainder at
    the bottom and right edges (``H mod kh`` rows, ``W mod kw`` columns) is dropped, as the
    convolution drops it."""
    b, c, h, w = x.shape
    ho, wo = h // kh, w // kw
    if is_channels_last(x):
        xh = x.permute(0, 2, 3, 1)[:, : ho * kh, : wo * kw]
        return xh.reshape(b, ho, kh, wo, kw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ho * wo, -1)
    xc = x[:, :, : ho * kh, : wo * kw].reshape(b, c, ho, kh, wo, kw)
    return xc.permute(0, 2, 4, 1, 3, 5).reshape(b, ho * wo, -1)


def rows_to_image(g: torch.Tensor, shape: torch.Size | tuple[int, ...], kh: int, kw: int,
                  channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`patch_rows` (``channels_last``: the layout of the input it was taken
    from, which the result gets): rows ``g`` (B, Ho*Wo, kh*kw*C) back to (B, C, H, W) of
    ``shape``, zeros where the patches did not reach (the gradient of the dropped border)."""
    b, c, h, w = shape
    ho, wo = h // kh, w // kw
    if channels_last:
        out = g.new_empty(b, h, w, c)
        out[:, ho * kh:].zero_()  # only the border is zeroed: the patches overwrite the rest
        out[:, : ho * kh, wo * kw:].zero_()
        dst = out[:, : ho * kh, : wo * kw].view(b, ho, kh, wo, kw, c)
        dst.copy_(g.reshape(b, ho, wo, kh, kw, c).permute(0, 1, 3, 2, 4, 5))
        return out.permute(0, 3, 1, 2)
    out = g.new_empty(b, c, h, w)
    out[:, :, ho * kh:].zero_()
    out[:, :, : ho * kh, wo * kw:].zero_()
    dst = out[:, :, : ho * kh, : wo * kw].view(b, c, ho, kh, wo, kw)
    dst.copy_(g.reshape(b, ho, wo, c, kh, kw).permute(0, 3, 1, 4, 2, 5))
    return out


def weight_rows(w: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Weights (..., C_out, C_in, kh, kw) -> (..., C_out, kh*kw*C_in) in the order of
    :func:`patch_rows` for an input of that layout (a copy only for channels-last)."""
    if channels_last:
        w = w.permute(*range(w.dim() - 3), -2, -1, -3)
    return w.reshape(*w.shape[:-3], -1)


def weight_from_rows(g: torch.Tensor, shape: torch.Size | tuple[int, ...], channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`weight_rows` (a view; ``.contiguous()`` or ``copy_`` it as needed)."""
    *lead, cin, kh, kw = shape
    if not channels_last:
        return g.reshape(shape)
    n = len(lead)
    return g.reshape(*lead, kh, kw, cin).permute(*range(n), n + 2, n, n + 1)


def image_from_rows(y: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """Per-patch outputs (B, Ho*Wo, C_out) as a channels-last (B, C_out, Ho, Wo) tensor (a view)."""
    return y.view(y.shape[0], ho, wo, y.shape[-1]).permute(0, 3, 1, 2)


def rows_of_image(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`image_from_rows` for a gradient ``y`` (B, C, Ho, Wo): (B, Ho*Wo, C),
    a view when ``y`` is channels-last."""
    b, c = y.shape[:2]
    return y.permute(0, 2, 3, 1).reshape(b, -1, c)


__all__ = ["image_from_rows", "is_channels_last", "patch_rows", "rows_of_image", "rows_to_image",
           "weight_from_rows", "weight_rows"]
