"""Images for humans: tensors to pixels, colourised label maps, sample grids.

Conventions: images are float ``3 x H x W`` (or ``N x 3 x H x W``) in [-1, 1]; label maps are int class
ids ``H x W`` (or ``N x H x W``). One behaviour for ids a palette does not cover (negative, or not below
its length): they are drawn white, so they stand out against every class colour of a dark palette.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

Color = tuple[int, int, int]
OUTSIDE = (255, 255, 255)  # the colour of ids outside the palette


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``... x 3 x H x W`` in [-1, 1] -> uint8 ``... x H x W x 3``."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """One ``3 x H x W`` image in [-1, 1] as an RGB PIL image."""
    return Image.fromarray(to_uint8(image))


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write one ``3 x H x W`` image in [-1, 1] as an 8-bit RGB PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path


def colorize(labels, palette: Sequence[Color]) -> np.ndarray:
    """Class ids (``H x W`` or ``N x H x W``, numpy or torch) -> uint8 RGB ``... x 3``; ids outside the
    palette are white."""
    arr = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    table = np.array([tuple(c) for c in palette] + [OUTSIDE], dtype=np.uint8)
    idx = np.where((arr >= 0) & (arr < len(palette)), arr, len(palette)).astype(np.int64)
    return table[idx]


def colorize_tensor(labels: torch.Tensor, palette: Sequence[Color]) -> torch.Tensor:
    """``N x H x W`` ids -> float ``N x 3 x H x W`` colours in [-1, 1] (a grid column); see :func:`colorize`."""
    rgb = torch.from_numpy(colorize(labels, palette)).float()
    return rgb.movedim(-1, -3) / 127.5 - 1.0


def save_grid(columns: list[torch.Tensor], path: str | Path, pad: int = 2) -> torch.Tensor:
    """Write a grid whose columns are the given ``N x 3 x H x W`` batches (rows = items); returns CHW uint8."""
    n = min(len(c) for c in columns)
    h, w = columns[0].shape[-2:]
    grid = torch.ones(3, n * (h + pad) + pad, len(columns) * (w + pad) + pad)
    for j, col in enumerate(columns):
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = col[i].float().cpu().clamp(-1, 1)
    arr = to_uint8(grid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr).permute(2, 0, 1)
