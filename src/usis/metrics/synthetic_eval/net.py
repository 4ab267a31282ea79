"""The synthetic evaluator's network: a small dilated encoder-decoder segmenter and its pooled features as
an FID feature extractor. See :mod:`usis.metrics.synthetic_eval`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usis.data.synthetic import (
    NUM_CLASSES,
)

# Bump when the network or its training recipe changes: it keys the weights cache.
ARCH_VERSION = 3
WIDTHS = (16, 32, 64, 128)  # encoder widths at 1, 1/2, 1/4, 1/8 resolution
DECODER_WIDTH = 32
WORK_HEIGHT = 64  # taller images are resized to this height for the net (logits resized back)


def work_size(height: int, width: int) -> tuple[int, int]:
    """The size the net sees an ``height x width`` image at: at most :data:`WORK_HEIGHT` rows, so that
    objects (which the renderer scales with the image height) keep the size the net was designed for."""
    if height <= WORK_HEIGHT:
        return height, width
    return WORK_HEIGHT, max(8, round(width * WORK_HEIGHT / height / 8) * 8)


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1, k: int = 3) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class EvalNet(nn.Module):
    """A small U-Net-like segmenter (~0.3M parameters).

    Encoder at 1, 1/2, 1/4, 1/8 of the input size (widths 16, 32, 64, 128; a dilated conv at 1/8),
    a light decoder (1x1 projections added to upsampled coarser maps, one 3x3 conv per level), and a
    1x1 head. ``forward`` gives ``N x NUM_CLASSES`` logits at full resolution; :meth:`pooled` the
    global-average-pooled bottleneck, ``N x 128``. Inputs: float images in [-1, 1], ``N x 3 x H x W``
    with H, W multiples of 8; images taller than :data:`WORK_HEIGHT` are first resized (antialiased) to
    :func:`work_size` and their logits resized back.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, int, int, int] | None = None, dec: int | None = None):
        super().__init__()
        widths, dec = widths or WIDTHS, dec or DECODER_WIDTH
        c0, c1, c2, c3 = widths
        self.widths = widths
        self.e0 = _cbr(3, c0)
        self.e1 = nn.Sequential(_cbr(c0, c1, 2), _cbr(c1, c1))
        self.e2 = nn.Sequential(_cbr(c1, c2, 2), _cbr(c2, c2))
        self.e3 = nn.Sequential(_cbr(c2, c3, 2), _cbr(c3, c3, dilation=2))
        self.p3, self.p2, self.p1 = _cbr(c3, dec, k=1), _cbr(c2, dec, k=1), _cbr(c1, dec, k=1)
        self.f2, self.f1 = _cbr(dec, dec), _cbr(dec, dec)
        self.p0 = _cbr(dec + c0, c0, k=1)
        self.f0 = _cbr(c0, c0)
        self.head = nn.Conv2d(c0, num_classes, 1)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        e0 = self.e0(x)
        e1 = self.e1(e0)
        e2 = self.e2(e1)
        return e0, e1, e2, self.e3(e2)

    @staticmethod
    def _to_work_size(x: Tensor) -> Tensor:
        size = work_size(x.shape[-2], x.shape[-1])
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        e0, e1, e2, e3 = self._encode(self._to_work_size(x))

        def up(a: Tensor, like: Tensor) -> Tensor:
            return F.interpolate(a, size=like.shape[-2:], mode="bilinear", align_corners=False)

        d = self.f2(up(self.p3(e3), e2) + self.p2(e2))
        d = self.f1(up(d, e1) + self.p1(e1))
        d = self.f0(self.p0(torch.cat([up(d, e0), e0], 1)))
        logits = self.head(d)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def pooled(self, x: Tensor) -> Tensor:
        return self._encode(self._to_work_size(x))[3].mean(dim=(2, 3))


class PooledFeatures(nn.Module):
    """The evaluator as a feature extractor for :mod:`usis.metrics.fid` (``FIDKID`` / ``compute_fid``, the
    same Frechet-distance code as FID): images ``N x 3 x H x W`` in [-1, 1] -> pooled features
    ``N x num_features``. Always in eval mode (BatchNorm statistics frozen)."""

    def __init__(self, net: EvalNet, extractor_id: str = "synthetic-eval") -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.widths[-1])
        self.extractor_id = extractor_id  # names the features in a real-statistics cache key
        self.train(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net.pooled(images.float())

    def train(self, mode: bool = True) -> PooledFeatures:
        return super().train(False)
