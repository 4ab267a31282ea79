"""Orthonormal 2-D Haar wavelet transform for NCHW tensors.

``dwt`` maps ``N x C x H x W`` (H, W even) to ``N x 4C x H/2 x W/2`` with the sub-bands stacked as
``[LL, LH, HL, HH]`` (each C channels, the SWAGAN layout); ``iwt`` is its exact inverse. The filters
are the orthonormal 2x2 Haar filters (LL = 1/2 [[1, 1], [1, 1]], ...), so the transform preserves the
energy (sum of squares) and ``iwt(dwt(x)) == x`` up to float rounding. Both are plain tensor
arithmetic (no convolutions: a butterfly of sums and differences over strided views, written into the
output), differentiable any number of times (each one's backward is the other), and work on any device,
dtype and memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usis.nn.layers import _is_channels_last


def _empty_like_layout(ref: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """An uninitialised ``shape`` tensor in ``ref``'s dtype, device and memory format (NCHW or NHWC)."""
    fmt = torch.channels_last if _is_channels_last(ref) else torch.contiguous_format
    return torch.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=fmt)


def _dwt(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    top, bottom = x[..., 0::2, :], x[..., 1::2, :]
    s, d = top + bottom, top - bottom  # rows: a + c, b + d | a - c, b - d
    out = _empty_like_layout(x, (n, 4 * c, h // 2, w // 2))
    torch.add(s[..., 0::2], s[..., 1::2], out=out[:, :c])  # LL: a + b + c + d
    torch.add(d[..., 0::2], d[..., 1::2], out=out[:, c:2 * c])  # LH: a + b - c - d
    torch.sub(s[..., 0::2], s[..., 1::2], out=out[:, 2 * c:3 * c])  # HL: a - b + c - d
    torch.sub(d[..., 0::2], d[..., 1::2], out=out[:, 3 * c:])  # HH: a - b - c + d
    return out.mul_(0.5)


def _iwt(y: torch.Tensor) -> torch.Tensor:
    n, c4, h, w = y.shape
    c = c4 // 4
    ll, lh, hl, hh = y[:, :c], y[:, c:2 * c], y[:, 2 * c:3 * c], y[:, 3 * c:]
    u, v, u2, v2 = ll + lh, hl + hh, ll - lh, hl - hh
    out = _empty_like_layout(y, (n, c, 2 * h, 2 * w))
    # the 2x2 block of every coefficient as two extra dimensions of a view of the output
    if out.is_contiguous():
        blocks = out.view(n, c, h, 2, w, 2)
    else:  # NHWC
        blocks = out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c).permute(0, 5, 1, 2, 3, 4)
    torch.add(u, v, out=blocks[:, :, :, 0, :, 0])  # a = LL + LH + HL + HH
    torch.sub(u, v, out=blocks[:, :, :, 0, :, 1])  # b = LL + LH - HL - HH
    torch.add(u2, v2, out=blocks[:, :, :, 1, :, 0])  # c = LL - LH + HL - HH
    torch.sub(u2, v2, out=blocks[:, :, :, 1, :, 1])  # d = LL - LH - HL + HH
    return out.mul_(0.5)


class _DWT(torch.autograd.Function):
    """The transform is orthonormal: its adjoint (what the backward applies) is its inverse, ``iwt``.
    One backward op where autograd through the slices would build four zero-filled full-size gradients
    and add them up; differentiable again (R1's double backward) through :class:`_IWT`."""

    @staticmethod
    def forward(ctx, x):
        return _dwt(x)

    @staticmethod
    def backward(ctx, grad):
        return _IWT.apply(grad)


class _IWT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return _iwt(y)

    @staticmethod
    def backward(ctx, grad):
        return _DWT.apply(grad)


def dwt(x: torch.Tensor) -> torch.Tensor:
    """Haar analysis: ``N x C x H x W`` -> ``N x 4C x H/2 x W/2`` as ``[LL, LH, HL, HH]``."""
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"dwt expects N x C x H x W with even H and W, got {tuple(x.shape)}")
    return _DWT.apply(x)


def iwt(y: torch.Tensor) -> torch.Tensor:
    """Haar synthesis, the exact inverse of :func:`dwt`: ``N x 4C x h x w`` -> ``N x C x 2h x 2w``."""
    if y.dim() != 4 or y.shape[1] % 4:
        raise ValueError(f"iwt expects N x 4C x h x w, got {tuple(y.shape)}")
    return _IWT.apply(y)


def wavelet_upsample(y: torch.Tensor) -> torch.Tensor:
    """The decoder's WU step: IWT -> bilinear x2 in image space -> DWT (``4C x h x w -> 4C x 2h x 2w``)."""
    x = iwt(y)
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return dwt(x)
