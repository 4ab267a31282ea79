"""The USIS-Wavelet generator (Eskandar et al., ICASSP 2022): the SPADE generator in the Haar wavelet domain.

Features are wavelet coefficients: a block at ``r x r`` holds ``4k`` channels, the four sub-bands
``[LL, LH, HL, HH]`` of a ``k``-channel feature map at ``2r x 2r`` (:mod:`usis.nn.wavelets`' layout).
What differs from :class:`~usis.nn.generator.Generator`, as in the reference implementation
(``ResidualWaveletGenerator_1``, ``WaveletBlock_with_IWT_SPADE_HWT``, ``IWT_SPADE_HWT``,
``ToRGB_wavelet``, ``IWT_Upsample_HWT`` in its ``models/``):

* widths ``4 x [16, 16, 16, 8, 4, 2, 1] x ch`` (``ch=16`` in its run script: the SPADE generator's
  widths at ``ch=64``); the first convolution works at 1/64 of the output size;
* every SPADE normalisation runs in image space: inverse transform (``4k x r`` -> ``k x 2r``), the
  parameter-free norm and the label-conditioned modulation over ``k`` channels, forward transform back;
* between blocks, the residual branch is upsampled with nearest neighbours in the wavelet domain and the
  shortcut branch by IWT -> bilinear x2 -> DWT (:func:`~usis.nn.wavelets.wavelet_upsample`); their sum is
  the next block's input;
* the output is a 1x1 convolution to the 12 coefficients of an RGB image at half size, inverse-transformed
  to full size, then tanh.

One choice is ours: the reference builds a SPADE norm for each learned shortcut (``norm_s``, as the SPADE
block does) but leaves it out of its forward (the call is commented out), so those parameters (2.8 % of
the generator at ``ch=16``) are never trained. By default (``shortcut_norm=True``) we use them, as the
SPADE block does: the generator has the reference's size and every parameter learns.
``shortcut_norm=False`` is the reference's forward (a plain 1x1 shortcut, and no unused norm is built).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usis.nn.generator import WIDTHS, BaseGenerator, SPADEResBlock
from usis.nn.layers import SPADE
from usis.nn.wavelets import dwt, iwt, wavelet_upsample


class WaveletSPADE(SPADE):
    """SPADE on wavelet coefficients: ``dwt(SPADE(iwt(x)))``; ``channels`` (4k) are coefficients, the norm
    and the modulation act on the ``k`` image-space channels at twice the resolution."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128, norm: str = "batch"):
        if channels % 4:
            raise ValueError(f"wavelet features need a multiple of 4 channels, got {channels}")
        super().__init__(channels // 4, cond_channels, hidden, norm)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return dwt(super().forward(iwt(x), seg))


class WaveletGenerator(BaseGenerator):
    """Label map (+ noise) -> RGB image in [-1, 1], synthesised as Haar wavelet coefficients.

    Args (as :class:`~usis.nn.generator.Generator`'s, plus one):
        num_classes: C, channels of the one-hot label map (don't-care included).
        ch: base width (16 in the reference's run script; the widths are ``4 x [16, ..., 1] x ch``).
        z_dim, norm, spectral_norm, noise_3d, spade_hidden, pixel_noise: as the SPADE generator's.
        shortcut_norm: SPADE-normalise the learned shortcuts (see the module's docstring); ``False`` is
            the reference's forward.
    """

    SIZE_MULTIPLE = 64  # the latent grid is the output size / 64 (five x2 upsamplings and the final IWT)

    def __init__(self, num_classes: int, ch: int = 16, z_dim: int = 64, norm: str = "batch",
                 spectral_norm: bool = True, noise_3d: bool = True, spade_hidden: int = 128,
                 pixel_noise: int = 0, shortcut_norm: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.z_dim = z_dim if noise_3d else 0
        self.pixel_noise = pixel_noise
        cond = num_classes + self.z_dim + pixel_noise
        widths = [4 * w * ch for w in WIDTHS]
        self.fc = nn.Conv2d(cond, widths[0], 3, padding=1)
        self.body = nn.ModuleList(
            SPADEResBlock(widths[i], widths[i + 1], cond, spade_hidden, norm, spectral_norm,
                          spade=WaveletSPADE, shortcut_norm=shortcut_norm)
            for i in range(len(widths) - 1)
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3 * 4, 1)  # the 12 Haar coefficients of an RGB image at half size
        assert 2 ** len(self.body) == self.SIZE_MULTIPLE

    def synthesize(self, seg: torch.Tensor) -> torch.Tensor:
        h, w = seg.shape[-2:]
        segs = self.pyramid(seg, len(self.body))
        x = self.fc(segs[(h // self.SIZE_MULTIPLE, w // self.SIZE_MULTIPLE)])
        for i, block in enumerate(self.body):
            r, c = x.shape[-2:]
            shortcut, dx = block.branches(x, segs[(2 * r, 2 * c)])  # its SPADEs work at twice the size
            if i < len(self.body) - 1:
                x = F.interpolate(dx, scale_factor=2.0, mode="nearest") + wavelet_upsample(shortcut)
            else:
                x = dx + shortcut
        return torch.tanh(iwt(self.to_rgb(x)))
