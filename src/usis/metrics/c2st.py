"""A realism measure that needs no downloaded weights: the classifier two-sample test (C2ST).

Lopez-Paz and Oquab ("Revisiting classifier two-sample tests", ICLR 2017) test whether two samples come from
one distribution by training a classifier to tell them apart on part of the data and measuring it on the
rest: at chance it cannot, and the further above chance, the more it finds. For generated images this is
the measure that sees what the eye sees: a fresh small convolutional network, trained from scratch on the
photos at hand, catches grain, wrong colours, blobs and missing structures wherever they are, with no
features learned on another dataset (FID's Inception was trained on ImageNet; the synthetic benchmark's sFID
uses 128 features of a segmentation network, which look past texture). Used for GAN evaluation by Lopez-Paz
and Oquab themselves and, as "discriminator accuracy" on held-out data, in many later comparisons.

Protocol (:func:`classifier_two_sample_test`): ``n`` real and ``n`` generated images, each split in two halves
by a seeded permutation; a fresh :class:`C2STNet` (~60k parameters, fixed seed) is trained for ``steps`` steps
on balanced batches of the first halves (random horizontal flips); it then scores the second halves.
Reported:

* ``c2st``: its accuracy on the held-out halves (threshold 0.5): 0.5 = indistinguishable, 1.0 = every image
  caught. Its spread from the finite test set alone is ``sqrt(0.25 / n)`` (about 0.035 at ``n = 200``).
* ``c2st_loss``: its held-out binary cross entropy in nats: ``log 2`` (0.693) at chance, lower the more
  confidently it separates. It keeps ranking two generators when both are always caught (accuracy 1.0).

Deterministic for given images, seed and device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usis.utils.images import to_uint8

C2ST_STEPS = 300
C2ST_BATCH = 32
C2ST_LR = 2e-3


class C2STNet(nn.Module):
    """A small binary classifier of images in [-1, 1] (``N x 3 x H x W``, H and W multiples of 16): four
    stride-2 3x3 convolutions (16, 32, 64, 64 channels) with GroupNorm and LeakyReLU, global average pooling,
    one logit (``N``; > 0: "generated")."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, 2, 1), nn.GroupNorm(4, w), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


def _check(images: Tensor, what: str) -> Tensor:
    ok = isinstance(images, Tensor) and images.ndim == 4 and images.shape[1] == 3
    if not ok or not (images.is_floating_point() or images.dtype == torch.uint8):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be images N x 3 x H x W, float in [-1, 1] or uint8; got {shape}")
    return images


def _as_float(images: Tensor, device: torch.device | str) -> Tensor:
    """A batch as the classifier reads it: float in [-1, 1] on ``device`` (uint8 images are converted)."""
    if images.dtype == torch.uint8:
        return images.to(device).float() / 127.5 - 1.0
    return images.to(device, torch.float32)


def classifier_two_sample_test(real: Tensor, fake: Tensor, steps: int = C2ST_STEPS, seed: int = 0,
                               device: torch.device | str = "cpu", batch_size: int = C2ST_BATCH) -> dict[str, float]:
    """``{"c2st": held-out accuracy, "c2st_loss": held-out cross entropy (nats), "c2st_n": images per set}``
    for ``real`` and ``fake`` images (``N x 3 x H x W``, float in [-1, 1] or uint8, the same size; the first
    ``min(len(real), len(fake))`` of each, at least 4). Generated images should be what is written (8-bit):
    the classifier must not learn the quantisation. See the module docstring."""
    real, fake = _check(real, "real images"), _check(fake, "generated images")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real images are {tuple(real.shape[-2:])} and generated ones {tuple(fake.shape[-2:])}: "
                         "compare images of one size")
    n = min(len(real), len(fake))
    if n < 4:
        raise ValueError(f"the two-sample test needs at least 4 images of each kind (got {n})")
    gen = torch.Generator().manual_seed(seed)
    order = [torch.randperm(n, generator=gen) for _ in range(2)]
    half = n // 2
    train = [x[o[:half]] for x, o in zip((real, fake), order, strict=True)]
    test = [x[o[half:]] for x, o in zip((real, fake), order, strict=True)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = C2STNet()
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=C2ST_LR, weight_decay=1e-4)
    per = max(1, batch_size // 2)
    target = torch.cat([torch.zeros(per), torch.ones(per)]).to(device)
    for _ in range(steps):
        parts = []
        for x in train:
            idx = torch.randint(len(x), (per,), generator=gen)
            b = x[idx]
            flip = torch.rand(per, generator=gen) < 0.5
            b = _as_float(b, device)
            parts.append(torch.where(flip[:, None, None, None].to(device), b.flip(-1), b))
        logits = net(torch.cat(parts))
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    correct, total, nll = 0, 0, 0.0
    with torch.no_grad():
        for label, x in enumerate(test):
            for i in range(0, len(x), 64):
                logits = net(_as_float(x[i:i + 64], device)).float().cpu()
                y = torch.full_like(logits, float(label))
                correct += int(((logits > 0).float() == y).sum())
                nll += float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
                total += len(logits)
    return {"c2st": correct / total, "c2st_loss": nll / total, "c2st_n": float(n)}


def as_written(images: Tensor) -> Tensor:
    """Generated images (float ``N x 3 x H x W`` in [-1, 1]) as the 8-bit images written to disk (uint8
    ``N x 3 x H x W``, on the CPU): what the two-sample test should see."""
    return torch.from_numpy(to_uint8(images)).movedim(-1, -3)


def chance_spread(n: int) -> float:
    """The standard deviation of the held-out accuracy of a classifier at chance, on ``n`` images per set
    (half of each is held out): ``sqrt(0.25 / n)``."""
    return math.sqrt(0.25 / max(1, n))
