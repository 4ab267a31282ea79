"""Differentiable augmentation of a network's inputs: the same random transform for real and generated
images, with gradients through it (DiffAugment: Zhao et al., "Differentiable Augmentation for Data-Efficient
GAN Training", NeurIPS 2020).

A policy is a comma list of operations, applied in this order whatever the order written:

* ``color``: per image, brightness ``x + (b - 0.5)``, saturation ``mean_c + (x - mean_c) * 2s`` and contrast
  ``mean + (x - mean) * (c + 0.5)``, with ``b, s, c ~ U[0, 1)`` (images in [-1, 1]; ``mean_c`` over the
  channels of each pixel, ``mean`` over the whole image).
* ``translation``: per image, a shift by whole pixels of up to 1/8 of the height and of the width in each
  direction, the uncovered border filled with 0 (mid grey).
* ``cutout``: per image, a rectangle of half the height and half the width at a random position (clipped at
  the border) set to 0.

Every draw comes from ``generator`` (a ``torch.Generator`` on the images' device), or from the global RNG of
that device. The output keeps the input's memory format.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPERATIONS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation, color"`` -> ``("color", "translation")`` (the order they are applied in); ``""`` -> ``()``.
    Raises ``ValueError`` naming an unknown operation."""
    names = {p.strip() for p in policy.split(",") if p.strip()}
    unknown = sorted(names - set(OPERATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(OPERATIONS)}")
    return tuple(op for op in OPERATIONS if op in names)


def _uniform(n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)


def color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, x, generator) - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = mean_c + (x - mean_c) * (2 * _uniform(n, x, generator))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (_uniform(n, x, generator) + 0.5)


def _offsets(n: int, reach: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randint(-reach, reach + 1, (n,), generator=generator, device=x.device)


def _shift(x: Tensor, dy: Tensor, dx: Tensor, fill: float = 0) -> Tensor:
    """``out[i, ..., y, x] = x[i, ..., y - dy_i, x - dx_i]`` where that pixel exists, else ``fill``; ``x`` is
    ``N x C x H x W`` (images) or ``N x H x W`` (label maps)."""
    maps = x.dim() == 3
    if maps:
        x = x[:, None]
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # n x h: the source row of each output row
    xs = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]  # n x h x w
    rows = ys.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w)
    cols = xs.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w)
    out = x.gather(2, rows).gather(3, cols)
    if x.is_floating_point() and fill == 0:
        out = out * inside[:, None].to(x.dtype)  # (a product: differentiable, as DiffAugment's padding)
    else:
        out = torch.where(inside[:, None], out, torch.full_like(out, fill))
    return out[:, 0] if maps else out


def translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125,
                labels: Tensor | None = None, fill: int = 0) -> Tensor | tuple[Tensor, Tensor]:
    """``out[i, :, y, x] = in[i, :, y - dy_i, x - dx_i]`` where that pixel exists, else 0. With ``labels``
    (``N x H x W`` ids), they move with their images (uncovered pixels ``fill``) and both are returned."""
    n, _, h, w = x.shape
    ry, rx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy, dx = _offsets(n, ry, x, generator), _offsets(n, rx, x, generator)
    if labels is None:
        return _shift(x, dy, dx)
    return _shift(x, dy, dx), _shift(labels, dy, dx, fill)


def cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    """A ``ratio * h x ratio * w`` rectangle centred at a random pixel (clipped at the border) set to 0."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=generator, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=generator, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - ch // 2)  # row offset inside the rectangle
    xs = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - cw // 2)
    hole = ((ys >= 0) & (ys < ch))[:, :, None] & ((xs >= 0) & (xs < cw))[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def augment_pairs(images: Tensor, labels: Tensor, policy: str | tuple[str, ...], fill: int,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Photos and their label maps through ``policy``: ``color`` changes the photos only, ``translation``
    moves both alike (the label map's uncovered pixels get ``fill``, the don't-care id); ``cutout`` is refused
    (a hole in a photo has no class)."""
    ops = parse_policy(policy) if isinstance(policy, str) else policy
    if "cutout" in ops:
        raise ValueError("cutout has no label map counterpart; use color and translation on labelled pairs")
    out = images
    if "color" in ops:
        out = color(out, generator)
    if "translation" in ops:
        out, labels = translation(out, generator, labels=labels, fill=fill)
    return _like(images, out), labels


def augment(x: Tensor, policy: str | tuple[str, ...], generator: torch.Generator | None = None) -> Tensor:
    """``x`` (``N x C x H x W`` images in [-1, 1]) through the operations of ``policy`` (a comma list or
    :func:`parse_policy`'s tuple), each drawn independently per image. An empty policy returns ``x`` itself."""
    ops = parse_policy(policy) if isinstance(policy, str) else policy
    if not ops:
        return x
    out = x
    for op in ops:
        out = _OPS[op](out, generator)
    return _like(x, out)


def _like(x: Tensor, out: Tensor) -> Tensor:
    """``out`` in ``x``'s memory format (channels-last stays channels-last)."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
