"""Discriminators and the wavelet decoder.

* :class:`WaveletDiscriminator` — the SWAGAN discriminator (Gal et al. 2021), whole image, one score:
  the image is Haar-transformed; at every scale a 1x1 "from-wavelet" conv maps the wavelet coefficients
  of the (pixel-space downsampled) image into features added to the running features; StyleGAN2 conv
  blocks (equalized lr, blur downsampling, fused leaky ReLU), minibatch stddev, a final conv and two
  fully connected layers.
* :class:`WholeDiscriminator` — the same whole-image design in pixel space (ablation, Table 1).
* :class:`PatchDiscriminator` — PatchGAN (ablation, Table 1): one score per patch.
* :class:`Decoder` — reconstructs the REAL image from a discriminator's encoder features with
  "wavelet upsample" blocks (IWT -> bilinear x2 -> DWT -> conv -> instance norm -> ReLU) and skip
  connections, ending in an IWT and tanh. Trained with an L1 loss in D's step.

Every discriminator's ``forward(x, return_features=False)`` returns logits (``N`` for whole-image
designs, ``N x 1 x h x w`` for the patch design) and, when asked, the list of encoder features from
the finest to the coarsest scale, which the decoder consumes. ``feature_channels`` and
``feature_strides`` describe that list.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from usis.nn.layers import ConvLayer, EqualLinear, blur_downsample, maybe_sn, minibatch_stddev
from usis.nn.pretrained import Pretrained
from usis.nn.wavelets import dwt, iwt, wavelet_upsample


def swagan_channels(res: int, ch: int = 64, max_ch: int = 512) -> int:
    """The SWAGAN/StyleGAN2 channel table (channel_multiplier 2 at ``ch=64``): 512 up to 64 px, halving above."""
    return int(min(max_ch, ch * 512 // res))


def num_down_blocks(height: int, width: int) -> int:
    """Downsampling blocks: down to 4 px on the long side (SWAGAN: log2(size) - 3), limited by divisibility."""
    n = int(round(math.log2(max(height, width)))) - 3
    while n > 0 and (height % 2 ** (n + 1) or width % 2 ** (n + 1)):
        n -= 1
    if n < 1:
        raise ValueError(f"image size {height}x{width} is too small or not divisible by 4")
    return n


class FromWavelet(nn.Module):
    """Optionally downsample the image in pixel space (IWT -> blur x2 down -> DWT), then 1x1 conv to features."""

    def __init__(self, cout: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv = ConvLayer(12, cout, 1)

    def forward(self, coeffs: torch.Tensor, skip: torch.Tensor | None):
        if self.downsample:
            coeffs = dwt(blur_downsample(iwt(coeffs)))
        out = self.conv(coeffs)
        return coeffs, (out if skip is None else out + skip)


class DownBlock(nn.Module):
    """StyleGAN2 conv block: 3x3 conv, then 3x3 conv with blur + stride-2 downsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvLayer(cin, cin, 3)
        self.conv2 = ConvLayer(cin, cout, 3, downsample=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class _Head(nn.Module):
    """Minibatch stddev -> 3x3 conv -> flatten -> FC (leaky) -> FC to one logit."""

    def __init__(self, cin: int, cfinal: int, spatial: tuple[int, int]):
        super().__init__()
        self.conv = ConvLayer(cin + 1, cfinal, 3)
        self.fc1 = EqualLinear(cfinal * spatial[0] * spatial[1], cfinal, activate=True)
        self.fc2 = EqualLinear(cfinal, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(minibatch_stddev(x))
        return self.fc2(self.fc1(x.flatten(1))).squeeze(1)


class WaveletDiscriminator(Pretrained):
    """SWAGAN discriminator for an ``height x width`` RGB image; one logit per image.

    ``patch`` (``model.d_patch``; not in the paper): a second, local scale. A 3x3 conv and a 1x1 conv on the
    encoder's features at 1/8 of the image give a logit per 8 x 8 patch, and ``forward`` returns the pair
    ``(image logits N, patch logits N x 1 x H/8 x W/8)`` (see :mod:`usis.losses` for how both are used).
    A car a few hundred pixels big is one of the whole-image head's 8,192 pixels but a patch head's dozen
    patches.

    ``reads`` (``model.d_reads``; not in the paper): the number of classes of a reading ``N x reads x H x W`` (S's
    one-hot reading of the image) that ``forward`` takes beside the image. It is averaged to the first scale's
    resolution and a 1x1 conv adds it to that scale's features, so D judges each region's look knowing what S reads
    there. The whole-image D alone must tell a facade-textured tree from a real one by its own means.
    """

    weights_name = "discriminator.safetensors"

    def __init__(self, height: int, width: int, ch: int = 64, max_ch: int = 512, patch: bool = False,
                 reads: int = 0):
        super().__init__()
        self.size = (height, width)
        size = 2 ** int(round(math.log2(max(height, width))))
        n = num_down_blocks(height, width)
        res = [size // 2 ** (k + 1) for k in range(n)]  # wavelet-domain resolution at block k
        cins = [swagan_channels(size, ch, max_ch)] + [swagan_channels(r, ch, max_ch) for r in res[1:]]
        couts = [swagan_channels(r // 2, ch, max_ch) for r in res]
        self.from_wavelets = nn.ModuleList(FromWavelet(cins[k], downsample=k > 0) for k in range(n))
        self.blocks = nn.ModuleList(DownBlock(cins[k], couts[k]) for k in range(n))
        self.from_last = FromWavelet(couts[-1], downsample=True)
        self.feature_channels = couts
        self.feature_strides = [2 ** (k + 2) for k in range(n)]
        final = (height // 2 ** (n + 1), width // 2 ** (n + 1))
        self.head = _Head(couts[-1], couts[-1], final)
        self.patch_at = min(1, n - 1) if patch else None  # the block whose features are at stride 8
        if patch:
            c = couts[self.patch_at]
            self.patch_head = nn.Sequential(ConvLayer(c, c, 3), ConvLayer(c, 1, 1, activate=False))
        self.from_reads = ConvLayer(reads, cins[0], 1) if reads else None

    def forward(self, x: torch.Tensor, reads: torch.Tensor | None = None, return_features: bool = False):
        if x.shape[-2:] != self.size:
            raise ValueError(f"discriminator built for {self.size}, got images of {tuple(x.shape[-2:])}")
        if (reads is None) != (self.from_reads is None):
            raise ValueError(f"discriminator built for {'no' if self.from_reads is None else 'a'} reading beside the image "
                             f"(model.d_reads), called with{'out' if reads is None else ''} one")
        coeffs, out = dwt(x), None
        feats = []
        for k, (from_w, block) in enumerate(zip(self.from_wavelets, self.blocks, strict=True)):
            coeffs, out = from_w(coeffs, out)
            if k == 0 and reads is not None:  # S's reading, at the first scale's resolution
                out = out + self.from_reads(F.avg_pool2d(reads.to(out.dtype), 2))
            out = block(out)
            feats.append(out)
        _, out = self.from_last(coeffs, out)
        logits = self.head(out)
        if self.patch_at is not None:
            logits = (logits, self.patch_head(feats[self.patch_at]))
        return (logits, feats) if return_features else logits


class ResDownBlock(nn.Module):
    """StyleGAN2 residual D block (pixel space): two convs + a 1x1 skip, both downsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvLayer(cin, cin, 3)
        self.conv2 = ConvLayer(cin, cout, 3, downsample=True)
        self.skip = ConvLayer(cin, cout, 1, downsample=True, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class WholeDiscriminator(Pretrained):
    """Whole-image StyleGAN2 residual discriminator without wavelets (Table 1: "whole D"). ``in_channels``:
    3 for images; C for the reverse cycle's label discriminator (class-probability maps)."""

    weights_name = "discriminator.safetensors"

    def __init__(self, height: int, width: int, ch: int = 64, max_ch: int = 512, in_channels: int = 3):
        super().__init__()
        self.size = (height, width)
        size = 2 ** int(round(math.log2(max(height, width))))
        n = num_down_blocks(height, width) + 1  # pixel space: one more block to reach the same 4 px
        res = [size // 2**k for k in range(n)]
        cins = [swagan_channels(r, ch, max_ch) for r in res]
        couts = [swagan_channels(r // 2, ch, max_ch) for r in res]
        self.from_rgb = ConvLayer(in_channels, cins[0], 1)
        self.blocks = nn.ModuleList(ResDownBlock(cins[k], couts[k]) for k in range(n))
        self.feature_channels = couts
        self.feature_strides = [2 ** (k + 1) for k in range(n)]
        self.head = _Head(couts[-1], couts[-1], (height // 2**n, width // 2**n))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.shape[-2:] != self.size:
            raise ValueError(f"discriminator built for {self.size}, got images of {tuple(x.shape[-2:])}")
        out = self.from_rgb(x)
        feats = []
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        logits = self.head(out)
        return (logits, feats) if return_features else logits


class PatchDiscriminator(Pretrained):
    """PatchGAN (pix2pix 70x70 layout, spectral norm instead of batch norm): logits ``N x 1 x H/8 x W/8``."""

    weights_name = "discriminator.safetensors"

    def __init__(self, height: int, width: int, ch: int = 64, max_ch: int = 512, n_layers: int = 3):
        super().__init__()
        self.size = (height, width)
        widths = [min(max_ch, ch * 2**k) for k in range(n_layers + 1)]
        self.blocks = nn.ModuleList()
        cin = 3
        for k in range(n_layers):
            self.blocks.append(nn.Sequential(maybe_sn(nn.Conv2d(cin, widths[k], 4, 2, 1), True),
                                             nn.LeakyReLU(0.2, inplace=True)))
            cin = widths[k]
        self.penultimate = nn.Sequential(maybe_sn(nn.Conv2d(cin, widths[-1], 3, 1, 1), True),
                                         nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Conv2d(widths[-1], 1, 3, 1, 1)
        self.feature_channels = widths[:n_layers]
        self.feature_strides = [2 ** (k + 1) for k in range(n_layers)]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = []
        out = x
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        logits = self.out(self.penultimate(out))
        return (logits, feats) if return_features else logits


class _WUBlock(nn.Module):
    """Wavelet upsample, concatenate the skip features, 3x3 conv, instance norm, ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin + cskip, cout, 3, padding=1)
        self.norm = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = wavelet_upsample(x)
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return F.relu(self.norm(self.conv(x)))


class Decoder(Pretrained):
    """Reconstruct an RGB image (``N x 3 x H x W`` in [-1, 1]) from discriminator features.

    Args:
        feature_channels: channels of D's features, finest first.
        feature_strides: their downsampling factors relative to the image, finest first.
        max_ch: widest decoder layer.
    """

    weights_name = "decoder.safetensors"

    def __init__(self, feature_channels: list[int], feature_strides: list[int], max_ch: int = 256):
        super().__init__()
        chans = [max(4, min(max_ch, c) // 4 * 4) for c in feature_channels]  # WU needs multiples of 4
        n = len(feature_channels)
        self.inp = nn.Conv2d(feature_channels[-1], chans[-1], 1)
        self.ups = nn.ModuleList(
            _WUBlock(chans[k + 1], feature_channels[k], chans[k]) for k in reversed(range(n - 1))
        )
        # from the finest feature (stride s0) up to stride 2, then 12 wavelet channels -> IWT -> stride 1
        self.tail = nn.ModuleList(
            _WUBlock(chans[0], 0, chans[0]) for _ in range(int(math.log2(feature_strides[0])) - 1)
        )
        self.to_wavelet = nn.Conv2d(chans[0], 12, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.inp(feats[-1])
        for block, skip in zip(self.ups, reversed(feats[:-1]), strict=True):
            x = block(x, skip)
        for block in self.tail:
            x = block(x, None)
        return torch.tanh(iwt(self.to_wavelet(x)))


def build_discriminator(kind: str, height: int, width: int, ch: int = 64, max_ch: int = 512,
                        patch: bool = False, reads: int = 0) -> nn.Module:
    if (patch or reads) and kind != "wavelet":
        raise ValueError("a patch head (model.d_patch) or S's reading (model.d_reads) is built on the wavelet "
                         "discriminator only")
    if kind == "wavelet":
        return WaveletDiscriminator(height, width, ch, max_ch, patch=patch, reads=reads)
    if kind == "whole":
        return WholeDiscriminator(height, width, ch, max_ch)
    if kind == "patch":
        return PatchDiscriminator(height, width, ch, max_ch)
    raise ValueError(f"unknown discriminator {kind!r}: choose wavelet, whole or patch")
