"""Orthonormal 2-D Haar wavelet transform for NCHW tensors.

``dwt`` maps ``N x C x H x W`` (H, W even) to ``N x 4C x H/2 x W/2`` with the sub-bands stacked as
``[LL, LH, HL, HH]`` (each C channels, the SWAGAN layout); ``iwt`` is its exact inverse. The filters
are the orthonormal 2x2 Haar filters (LL = 1/2 [[1, 1], [1, 1]], ...), so the transform preserves the
energy (sum of squares) and ``iwt(dwt(x)) == x`` up to float rounding. Both are plain tensor
arithmetic (no convolutions), differentiable, and work on any device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dwt(x: torch.Tensor) -> torch.Tensor:
    """Haar analysis: ``N x C x H x W`` -> ``N x 4C x H/2 x W/2`` as ``[LL, LH, HL, HH]``."""
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"dwt expects N x C x H x W with even H and W, got {tuple(x.shape)}")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) * 0.5
    lh = (a + b - c - d) * 0.5  # difference between rows: horizontal edges
    hl = (a - b + c - d) * 0.5  # difference between columns: vertical edges
    hh = (a - b - c + d) * 0.5
    return torch.cat((ll, lh, hl, hh), dim=1)


def iwt(y: torch.Tensor) -> torch.Tensor:
    """Haar synthesis, the exact inverse of :func:`dwt`: ``N x 4C x h x w`` -> ``N x C x 2h x 2w``."""
    if y.dim() != 4 or y.shape[1] % 4:
        raise ValueError(f"iwt expects N x 4C x h x w, got {tuple(y.shape)}")
    ll, lh, hl, hh = y.chunk(4, dim=1)
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    n, ch, h, w = a.shape
    top = torch.stack((a, b), dim=-1).reshape(n, ch, h, 2 * w)  # interleave columns
    bottom = torch.stack((c, d), dim=-1).reshape(n, ch, h, 2 * w)
    return torch.stack((top, bottom), dim=-2).reshape(n, ch, 2 * h, 2 * w)  # interleave rows


def wavelet_upsample(y: torch.Tensor) -> torch.Tensor:
    """The decoder's WU step: IWT -> bilinear x2 in image space -> DWT (``4C x h x w -> 4C x 2h x 2w``)."""
    x = iwt(y)
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return dwt(x)
