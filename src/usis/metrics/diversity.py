"""MS-SSIM diversity: how different are the images generated from one label map?

For every label map, ``n_samples`` images are generated with independent noise and the MS-SSIM of
every pair is computed (torchmetrics); the score is the mean over pairs and label maps. Lower means
more diverse; 1.0 means the noise is ignored (the paper: USIS 0.51, without 3D noise 1.0).

Small images. torchmetrics' MS-SSIM with the standard 5 scales and an 11-tap Gaussian needs a short
side of at least 176 px. For smaller images (e.g. the 64 x 128 synthetic preset) the number of scales
is reduced to the largest that fits, using the first weights (betas) of the standard five
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised to sum to 1, so the value stays in [0, 1];
a single scale is plain SSIM. :func:`msssim_betas` returns the weights used for a given size. Such
values are comparable between runs at the same resolution, not with 5-scale numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

STANDARD_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIZE = 11


def _fits(height: int, width: int, scales: int, kernel: int = KERNEL_SIZE) -> bool:
    # the two conditions torchmetrics checks before computing MS-SSIM
    div = max(1, scales - 1) ** 2
    return min(height, width) >= 2**scales and height // div > kernel - 1 and width // div > kernel - 1


def msssim_betas(height: int, width: int) -> tuple[float, ...]:
    """Scale weights for images of this size: the standard 5, or fewer (renormalised) if too small."""
    for scales in range(len(STANDARD_BETAS), 0, -1):
        if _fits(height, width, scales):
            if scales == len(STANDARD_BETAS):
                return STANDARD_BETAS
            betas = STANDARD_BETAS[:scales]
            total = sum(betas)
            return tuple(b / total for b in betas)
    raise ValueError(f"images of {height} x {width} are too small for SSIM with an {KERNEL_SIZE}-tap window "
                     f"(need at least {KERNEL_SIZE + 1} px per side)")


def msssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-pair MS-SSIM (N,) of images in [-1, 1] (N x C x H x W), scales chosen by :func:`msssim_betas`."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,  # lazy: torchmetrics is slow to import
    )

    betas = msssim_betas(a.shape[-2], a.shape[-1])
    return multiscale_structural_similarity_index_measure(
        a.float(), b.float(), data_range=(-1.0, 1.0), kernel_size=KERNEL_SIZE, betas=betas, reduction="none")


def pairwise_msssim(images: Tensor, chunk: int = 32) -> float:
    """Mean MS-SSIM over all unordered pairs of a set of images (K x C x H x W, K >= 2)."""
    k = images.shape[0]
    if k < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 images per label map")
    pairs = list(itertools.combinations(range(k), 2))
    total = 0.0
    for start in range(0, len(pairs), chunk):
        i, j = zip(*pairs[start:start + chunk], strict=True)
        total += float(msssim(images[list(i)], images[list(j)]).sum())
    return total / len(pairs)


@torch.no_grad()
def msssim_diversity(generate_fn: Callable[[Tensor], Tensor], labels: Tensor | Iterable[Tensor],
                     n_samples: int = 20, batch_size: int = 20) -> float:
    """Mean pairwise MS-SSIM of ``n_samples`` images per label map (lower = more diverse).

    ``generate_fn(labels)`` maps int64 label maps B x H x W to images in [-1, 1] (B x 3 x H x W) and
    must draw independent noise for every image of the batch. ``labels``: M x H x W, or an iterable
    of H x W (or 1 x H x W) label maps. Each map is repeated ``n_samples`` times, generated in chunks
    of ``batch_size``.
    """
    if n_samples < 2:
        raise ValueError("n_samples must be at least 2")
    scores = []
    for label in labels:
        label = label.reshape(label.shape[-2:]).long()
        images = []
        for start in range(0, n_samples, batch_size):
            count = min(batch_size, n_samples - start)
            images.append(generate_fn(label.unsqueeze(0).expand(count, -1, -1).contiguous()).float().cpu())
        scores.append(pairwise_msssim(torch.cat(images)))
    if not scores:
        raise ValueError("no label maps given")
    return float(sum(scores) / len(scores))
