"""Segmenter S: the OASIS U-Net (residual down/up blocks with skip concatenation), class logits out.

S sees only generated images; it is what keeps every class separable in the generator's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usis.nn.layers import maybe_sn
from usis.nn.pretrained import Pretrained


class ResBlockUD(nn.Module):
    """Residual block that halves (``mode='down'``) or doubles (``mode='up'``) the resolution."""

    def __init__(self, cin: int, cout: int, mode: str, first: bool = False, sn: bool = True):
        super().__init__()
        self.mode, self.first = mode, first
        self.conv1 = maybe_sn(nn.Conv2d(cin, cout, 3, padding=1), sn)
        self.conv2 = maybe_sn(nn.Conv2d(cout, cout, 3, padding=1), sn)
        self.conv_s = maybe_sn(nn.Conv2d(cin, cout, 1), sn) if cin != cout else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # shortcut: for the first block pool before the 1x1 conv (cheaper), else after
        s = x
        if self.mode == "up":
            s = self._resample(s)
        if self.first and self.mode == "down":
            s = self._resample(s)
        if self.conv_s is not None:
            s = self.conv_s(s)
        if self.mode == "down" and not self.first:
            s = self._resample(s)
        # residual
        h = x if self.first else F.leaky_relu(x, 0.2)
        if self.mode == "up":
            h = self._resample(h)
        h = self.conv2(F.leaky_relu(self.conv1(h), 0.2))
        if self.mode == "down":
            h = self._resample(h)
        return s + h


class LocalReader(nn.Module):
    """``layers`` 3x3 convolutions at full resolution (LeakyReLU 0.2 between them): each output pixel sees only the
    ``(2 * layers + 1)``-pixel square around it (issue 31's candidate, ``model.s_local``).

    The U-Net reads a class from its shape and context too (a thin upright region is a pole whatever its texture),
    so G can meet the segmentation term with any look for a class that S learned to find by its outline: the
    diagnosis's lost classes (poles painted as facade, read as pole by S at 93 %, as building by a reader trained on
    photos). A reader with a window a few pixels wide has to tell the classes apart by their local look.
    """

    def __init__(self, layers: int, width: int, sn: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(maybe_sn(nn.Conv2d(3 if i == 0 else width, width, 3, padding=1), sn)
                                   for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return x


class Segmenter(Pretrained):
    """U-Net: ``N x 3 x H x W`` image -> ``N x C x H x W`` class logits (H, W multiples of 64).

    Widths ``[3, 2ch, 2ch, 4ch, 4ch, 8ch, 8ch]`` (ch=64: ``[3, 128, 128, 256, 256, 512, 512]``).
    ``extra_channel`` adds the reference's "fake" output channel as channel 0 (class ``c`` is then channel
    ``c + 1``): never a target, but part of the softmax of the segmentation loss (the reference's "N+1"
    loss, :func:`usis.losses.class_balanced_ce` with ``extra_channel=True``). ``local > 0`` replaces the U-Net
    by a :class:`LocalReader` of that many layers (any height and width).
    """

    weights_name = "segmenter.safetensors"
    SIZE_MULTIPLE = 64  # six 2x down-sampling levels: image height and width must be multiples of 2**6

    def __init__(self, num_classes: int, ch: int = 64, spectral_norm: bool = True, extra_channel: bool = False,
                 local: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.local = local
        if local:  # a local reader instead of the U-Net: see LocalReader
            self.body = LocalReader(local, 4 * ch, spectral_norm)
            self.head = nn.Conv2d(4 * ch, num_classes + int(extra_channel), 1)
            self.divisor = 1
            return
        widths = [3, 2 * ch, 2 * ch, 4 * ch, 4 * ch, 8 * ch, 8 * ch]
        n = len(widths) - 1
        self.down = nn.ModuleList(
            ResBlockUD(widths[i], widths[i + 1], "down", first=(i == 0), sn=spectral_norm) for i in range(n)
        )
        ups = [ResBlockUD(widths[-1], widths[-2], "up", sn=spectral_norm)]
        for i in range(1, n - 1):
            ups.append(ResBlockUD(2 * widths[-1 - i], widths[-2 - i], "up", sn=spectral_norm))
        ups.append(ResBlockUD(2 * widths[1], ch, "up", sn=spectral_norm))
        self.up = nn.ModuleList(ups)
        self.head = nn.Conv2d(ch, num_classes + int(extra_channel), 1)
        self.divisor = 2**n
        assert self.divisor == self.SIZE_MULTIPLE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.local:
            return self.head(self.body(image))
        h, w = image.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"segmenter input {h}x{w}: height and width must be multiples of {self.divisor}")
        skips = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](x)
        for i in range(1, len(self.up)):
            x = self.up[i](torch.cat((skips[-i - 1], x), dim=1))
        return self.head(x)
