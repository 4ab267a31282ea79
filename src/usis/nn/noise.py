"""Noise from seeds: the one definition used by training-time samples, evaluation and ``usis generate``.

Image ``i`` with seed ``s`` draws, from its own ``torch.Generator().manual_seed(s)`` on the CPU:

1. its noise vector (``z_dim`` values; a generator without noise draws one value and discards it), then
2. its per-pixel noise (``pixel_noise x H x W``), if the generator has any.

So an image depends only on its label map, its seed and the weights: the same in a training sample
grid, in an evaluation and from ``usis generate`` / :class:`usis.USISPipeline`, whatever the batch it
is generated in. With ``local_style`` every class id of image i gets its own vector instead (drawn
from a second generator with seed ``s``: ``num_classes x z_dim``), so regions vary independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def noise_vector(seed: int, z_dim: int) -> torch.Tensor:
    """The ``z_dim`` noise vector of seed ``seed``."""
    return torch.randn(1, max(z_dim, 1), generator=torch.Generator().manual_seed(int(seed)))[0, :z_dim]


def style_map(labels: torch.Tensor, seed: int, z_dim: int, num_classes: int) -> torch.Tensor:
    """``z_dim x H x W``: one vector per class id of the ``H x W`` map ``labels``, drawn from ``seed``."""
    per_class = torch.randn(num_classes, max(z_dim, 1), generator=torch.Generator().manual_seed(int(seed)))
    return per_class[:, :z_dim][labels.cpu().long()].permute(2, 0, 1)


def seeded_noise(seeds: Sequence[int], z_dim: int, pixel_noise: int, height: int, width: int,
                 labels: torch.Tensor | None = None, num_classes: int = 0,
                 local_style: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise for images with the given seeds, on the CPU: ``z`` (``N x z_dim``, or with ``local_style``
    ``N x z_dim x H x W`` from ``labels``) and the per-pixel noise (``N x pixel_noise x H x W``, or
    ``None`` when ``pixel_noise`` is 0)."""
    zs, pns = [], []
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        zs.append(torch.randn(1, max(z_dim, 1), generator=g)[0, :z_dim])
        if pixel_noise:
            pns.append(torch.randn(pixel_noise, height, width, generator=g))
        if local_style:
            if labels is None:
                raise ValueError("local_style needs the label maps")
            zs[-1] = style_map(labels[i], s, z_dim, num_classes)
    z = torch.stack(zs) if zs else torch.empty(0, z_dim)
    return z, (torch.stack(pns) if pns else None)
