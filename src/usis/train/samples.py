"""What a training run shows of its EMA generator: sample grids (label | EMA samples for 3 noise seeds | real
photos, one row per map, from the first validation maps and photos), and the generator's BN statistics,
recomputed on training maps before it is sampled, evaluated or saved.

Nothing here draws from the global RNG (the training noise): the noise comes from seeds (:mod:`usis.nn.noise`,
as ``usis generate`` draws it) and the data items from fixed augmentation seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usis.nn import one_hot_labels
from usis.nn.noise import seeded_noise
from usis.train.ema import refresh_batchnorm
from usis.utils.images import colorize_tensor, save_grid

GRID_SEEDS = (0, 1, 2)  # a grid's sample columns
GRID_ROWS = 4
BN_SEED = 10_000  # the EMA BN refresh: batch b, image i has noise seed BN_SEED + b * batch_size + i


def fixed_item(dataset, i: int) -> dict[str, Any]:
    """Item ``i`` with a fixed augmentation seed: no draw from the global RNG (that would shift the training
    noise and make a run depend on how often it samples or evaluates)."""
    return dataset[(i, i)] if getattr(dataset, "accepts_aug_seed", False) else dataset[i]


def first_items(val, n: int = GRID_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` label maps (N x H x W ids) and photos of a ``usis.data`` bundle."""
    labels = torch.stack([fixed_item(val.labels, i)["label"] for i in range(min(n, len(val.labels)))])
    photos = torch.stack([fixed_item(val.photos, i)["image"] for i in range(min(n, len(val.photos)))])
    return labels, photos


@torch.no_grad()
def refresh_ema_batchnorm(G_ema: nn.Module, label_dataset, batches: int, batch_size: int, num_classes: int,
                          device: torch.device) -> None:
    """Recompute ``G_ema``'s BN statistics on the first ``batches`` training label batches, with fixed noise
    (deterministic for given weights)."""
    inputs = []
    for b in range(batches):
        idx = [(b * batch_size + i) % len(label_dataset) for i in range(batch_size)]
        labels = torch.stack([fixed_item(label_dataset, i)["label"] for i in idx]).to(device)
        seeds = range(BN_SEED + b * batch_size, BN_SEED + (b + 1) * batch_size)
        z, noise = seeded_noise(seeds, G_ema.z_dim, G_ema.pixel_noise, *labels.shape[-2:], labels=labels.cpu(),
                                num_classes=num_classes, class_style=G_ema.class_style)
        inputs.append((one_hot_labels(labels, num_classes), z.to(device), None if noise is None else noise.to(device)))
    refresh_batchnorm(G_ema, inputs)


def write_grid(path: Path, labels: torch.Tensor, photos: torch.Tensor, palette,
               generate: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``path``: one row per label map: the map in the palette's colours | ``generate(labels, seed)`` for each of
    :data:`GRID_SEEDS` | a real photo. Returns the grid (CHW uint8)."""
    cols = [colorize_tensor(labels, palette)]
    cols += [generate(labels, seed) for seed in GRID_SEEDS]
    cols.append(photos[: len(labels)])
    return save_grid(cols, path)
