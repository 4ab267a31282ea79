"""Images for humans: colourised label maps and sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def colorize(labels: torch.Tensor, palette: list[tuple[int, int, int]]) -> torch.Tensor:
    """``N x H x W`` ids -> ``N x 3 x H x W`` colours in [-1, 1] (ids beyond the palette are black)."""
    pal = torch.zeros(max(len(palette), int(labels.max()) + 1), 3)
    pal[: len(palette)] = torch.tensor(palette, dtype=torch.float32)
    img = pal[labels.long()].permute(0, 3, 1, 2) / 127.5 - 1.0
    return img


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``... x 3 x H x W`` in [-1, 1] -> uint8 ``... x H x W x 3``."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


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
