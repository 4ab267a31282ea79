"""Noise from seeds: the one definition used by training-time samples, evaluation and ``usis generate``.

Image ``i`` with seed ``s`` draws, from its own ``torch.Generator().manual_seed(s)`` on the CPU:

1. its noise vector (``z_dim`` values; a generator without noise draws one value and discards it), then
2. its per-pixel noise (``pixel_noise x H x W``), if the generator has any.

So an image depends only on its label map, its seed and the weights: the same in a training sample
grid, in an evaluation and from ``usis generate`` / :class:`usis.USISPipeline`, whatever the batch it
is generated in. With ``local_style`` every class id of image i gets its own vector instead (drawn
from a second generator with seed ``s``: ``num_classes x z_dim``), so regions vary independently.

A generator trained with ``class_style = k > 0`` (``model.class_style``) takes its noise that way in part: the
first ``z_dim - k`` channels from the image's vector, the last ``k`` from its class's vector of that same
per-class table (:func:`class_styled`); in training both are fresh N(0, I) draws.
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


def class_styled(z: torch.Tensor, per_class: torch.Tensor) -> torch.Tensor:
    """``N x z_dim x H x W``: the image vectors ``z`` (``N x z_dim``) over the whole image with their last ``k``
    channels replaced, at each pixel, by those of its class's vector: ``per_class`` (``N x k x H x W``)."""
    n, k = z.shape[0], per_class.shape[1]
    image_wide = z[:, : z.shape[1] - k, None, None].to(per_class.dtype).expand(n, -1, *per_class.shape[-2:])
    return torch.cat((image_wide, per_class), dim=1)


def random_class_style(z: torch.Tensor, label_onehot: torch.Tensor, k: int) -> torch.Tensor:
    """Training's draw for ``class_style = k``: ``z`` (``N x z_dim``) with its last ``k`` channels replaced by a
    fresh N(0, I) vector per class of each image (``label_onehot``: ``N x C x H x W``), on their device."""
    n, c = label_onehot.shape[:2]
    table = torch.randn(n, c, k, device=label_onehot.device, dtype=label_onehot.dtype)
    return class_styled(z, torch.einsum("nchw,nck->nkhw", label_onehot, table))


def seeded_noise(seeds: Sequence[int], z_dim: int, pixel_noise: int, height: int, width: int,
                 labels: torch.Tensor | None = None, num_classes: int = 0,
                 local_style: bool = False, class_style: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise for images with the given seeds, on the CPU: ``z`` (``N x z_dim``, or with ``local_style`` or
    ``class_style`` ``N x z_dim x H x W`` from ``labels``) and the per-pixel noise (``N x pixel_noise x H x W``,
    or ``None`` when ``pixel_noise`` is 0)."""
    zs, pns = [], []
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        zs.append(torch.randn(1, max(z_dim, 1), generator=g)[0, :z_dim])
        if pixel_noise:
            pns.append(torch.randn(pixel_noise, height, width, generator=g))
        if local_style or class_style:
            if labels is None:
                raise ValueError("a style per class needs the label maps")
            per_class = style_map(labels[i], s, z_dim, num_classes)
            zs[-1] = per_class if local_style else class_styled(zs[-1][None], per_class[None, z_dim - class_style:])[0]
    z = torch.stack(zs) if zs else torch.empty(0, z_dim)
    return z, (torch.stack(pns) if pns else None)
