"""Generators: what they share (:class:`BaseGenerator`) and the SPADE generator (OASIS layout) with 3D noise.

A 64-d noise vector per image (or a spatially varying noise map) is concatenated to the one-hot label
map; that tensor feeds the first convolution at 1/32 of the output size and every SPADE layer.
Six SPADE ResNet blocks with nearest x2 upsampling between them, widths ``[16, 16, 16, 8, 4, 2, 1] x ch``.
The wavelet generator of USIS-Wavelet (:mod:`usis.nn.wavelet_generator`) shares the conditioning, the
noise and the blocks, in the wavelet domain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usis.nn.layers import SPADE, maybe_sn
from usis.nn.noise import random_class_style
from usis.nn.pretrained import Pretrained

WIDTHS = (16, 16, 16, 8, 4, 2, 1)


def one_hot_labels(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``N x H x W`` int64 class ids -> ``N x C x H x W`` one-hot (contiguous NCHW), the generator's input.

    A scatter rather than ``F.one_hot``, whose range check reads the ids' minimum and maximum back from
    the device (a host-device synchronisation in every training step on a GPU). On a CPU the ids are
    still checked here; on a GPU the data checks (``usis data check`` and the loaders) vouch for them."""
    if labels.device.type == "cpu" and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes}), got ids from {int(labels.min())} to "
                         f"{int(labels.max())}")
    out = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), 1.0)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _channels_last(x) else torch.contiguous_format


class SPADEResBlock(nn.Module):
    """``x + conv(act(SPADE(conv(act(SPADE(x))))))`` with a learned 1x1 shortcut when widths differ.

    ``spade`` is the normalisation's class (:class:`SPADE`, or the wavelet generator's); without
    ``shortcut_norm`` the learned shortcut is a plain 1x1 convolution (no norm is built for it).
    """

    def __init__(self, cin: int, cout: int, cond: int, hidden: int, norm: str, sn: bool,
                 spade: type[SPADE] = SPADE, shortcut_norm: bool = True):
        super().__init__()
        mid = min(cin, cout)
        self.norm_0 = spade(cin, cond, hidden, norm)
        self.conv_0 = maybe_sn(nn.Conv2d(cin, mid, 3, padding=1), sn)
        self.norm_1 = spade(mid, cond, hidden, norm)
        self.conv_1 = maybe_sn(nn.Conv2d(mid, cout, 3, padding=1), sn)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            if shortcut_norm:
                self.norm_s = spade(cin, cond, hidden, norm)
            self.conv_s = maybe_sn(nn.Conv2d(cin, cout, 1, bias=False), sn)

    def branches(self, x: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(shortcut, residual)``, the two terms the block's output is the sum of."""
        if self.learned_shortcut:
            shortcut = self.conv_s(self.norm_s(x, seg) if hasattr(self, "norm_s") else x)
        else:
            shortcut = x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut, dx

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut, dx = self.branches(x, seg)
        return shortcut + dx


class BaseGenerator(Pretrained):
    """Label map (+ noise) -> RGB image in [-1, 1]: the inputs every generator takes.

    Subclasses build ``self.fc`` (the first convolution), set ``SIZE_MULTIPLE`` and implement
    :meth:`synthesize` (the conditioning tensor -> the image). Everything about the inputs (the one-hot
    map's checks, the per-image or per-region noise ``z``, the per-pixel noise) lives here, once.
    """

    weights_name = "generator.safetensors"
    format_name = "usis-generator"
    SIZE_MULTIPLE = 32
    num_classes: int
    z_dim: int
    pixel_noise: int
    class_style = 0  # of the z_dim channels, how many are drawn per class region (usis.nn.noise.class_styled)
    fc: nn.Conv2d

    def sample_pixel_noise(self, n: int, height: int, width: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor | None:
        """``n x pixel_noise x height x width`` ~ N(0, I), or ``None`` without pixel noise. With a (CPU)
        ``generator`` the draw happens on the CPU and is moved to ``device``; without one it comes from
        the global RNG of ``device``."""
        if not self.pixel_noise:
            return None
        device = device if device is not None else self.fc.weight.device
        if generator is None:
            return torch.randn(n, self.pixel_noise, height, width, device=device)
        return torch.randn(n, self.pixel_noise, height, width, generator=generator).to(device)

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """One noise vector per image, ``n x z_dim`` ~ N(0, I)."""
        device = device if device is not None else self.fc.weight.device
        return torch.randn(n, self.z_dim, generator=generator, device=device)

    def conditioning(self, label_onehot: torch.Tensor, z: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor every layer is conditioned on: ``[z, one-hot, pixel noise]`` at the output size
        (see :meth:`forward` for the arguments)."""
        n, c, h, w = label_onehot.shape
        if c != self.num_classes:
            raise ValueError(f"generator expects {self.num_classes} label channels, got {c}")
        if h % self.SIZE_MULTIPLE or w % self.SIZE_MULTIPLE:
            raise ValueError(f"output size {h}x{w}: height and width must be multiples of {self.SIZE_MULTIPLE}")
        seg = label_onehot
        if self.z_dim:
            if z is None:
                z = self.sample_noise(n, device=label_onehot.device)
                if self.class_style:
                    z = random_class_style(z, label_onehot, self.class_style)
            z = z.to(label_onehot.dtype)
            if z.dim() == 2:
                z = z[:, :, None, None].expand(n, self.z_dim, h, w)
            elif z.dim() == 4:
                if z.shape[-2:] != (h, w):
                    z = F.interpolate(z, size=(h, w), mode="nearest")
            else:
                raise ValueError(f"noise must be N x {self.z_dim} or N x {self.z_dim} x H x W, got {tuple(z.shape)}")
            if z.shape[:2] != (n, self.z_dim):
                raise ValueError(f"noise must have shape ({n}, {self.z_dim}, ...), got {tuple(z.shape)}")
            seg = torch.cat((z, label_onehot), dim=1)
        if self.pixel_noise:
            if noise is None:
                noise = self.sample_pixel_noise(n, h, w, device=seg.device)
            if noise.shape != (n, self.pixel_noise, h, w):
                raise ValueError(f"pixel noise must have shape ({n}, {self.pixel_noise}, {h}, {w}), "
                                 f"got {tuple(noise.shape)}")
            seg = torch.cat((seg, noise.to(seg.dtype)), dim=1)
        if _channels_last(label_onehot):  # every SPADE layer convolves it: in the networks' memory format
            seg = seg.contiguous(memory_format=torch.channels_last)
        return seg

    @staticmethod
    def pyramid(seg: torch.Tensor, levels: int) -> dict[tuple[int, int], torch.Tensor]:
        """The conditioning at full size and ``levels`` halvings, resized once (not once per layer),
        keyed by ``(height, width)``."""
        h, w = seg.shape[-2:]
        segs = {(h, w): seg}
        for k in range(1, levels + 1):
            s = 1 << k
            if h % s or w % s:  # not an exact halving: nearest-neighbour interpolation
                segs[(h >> k, w >> k)] = F.interpolate(seg, size=(h >> k, w >> k), mode="nearest")
            else:  # nearest-neighbour by 2**k picks the first pixel of every s x s block: a strided copy (the same
                # values; the interpolation kernel took ~0.6 ms per level on a CPU for the synthetic preset)
                segs[(h >> k, w >> k)] = seg[..., ::s, ::s].contiguous(memory_format=_memory_format(seg))
        return segs

    def synthesize(self, seg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, label_onehot: torch.Tensor, z: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            label_onehot: ``N x C x H x W`` one-hot (float), H and W multiples of ``SIZE_MULTIPLE``.
            z: ``N x z_dim`` (broadcast over the image, as in the paper) or ``N x z_dim x h x w``
               (a noise map, resized to H x W with nearest neighbours: a style per region).
               ``None`` draws fresh noise.
            noise: with ``pixel_noise > 0`` only: ``N x pixel_noise x H x W`` i.i.d. N(0, 1) per-pixel
               noise (see :meth:`sample_pixel_noise`); ``None`` draws fresh noise.
        Returns:
            ``N x 3 x H x W`` in [-1, 1].
        """
        return self.synthesize(self.conditioning(label_onehot, z, noise))


class Generator(BaseGenerator):
    """Label map (+ noise) -> RGB image in [-1, 1].

    Args:
        num_classes: C, channels of the one-hot label map (don't-care included).
        ch: base width (64 in the paper).
        z_dim: noise channels (64 in the paper).
        norm: parameter-free norm before SPADE: ``batch``, ``syncbatch`` or ``instance``.
        spectral_norm: spectral norm on the residual convolutions.
        noise_3d: concatenate noise to the label map (off: one image per label map).
        spade_hidden: SPADE hidden width (128).
        pixel_noise: extra conditioning channels of i.i.d. per-pixel noise (0 in the paper). Not part of
            USIS: the paper's only noise is the per-image vector, so a stochastic texture such as sensor
            grain can only be imitated by deterministic (often lattice-like) patterns; a few noise
            channels give the generator a source for it.
        class_style: of the ``z_dim`` noise channels, how many come from a vector drawn per class region
            instead of the image's one (0 in the paper; see :mod:`usis.nn.noise`). Not part of USIS: with one
            vector per image, the looks of all of an image's regions are drawn together.
    """

    SIZE_MULTIPLE = 32  # the latent grid is the output size / 32

    def __init__(self, num_classes: int, ch: int = 64, z_dim: int = 64, norm: str = "batch",
                 spectral_norm: bool = True, noise_3d: bool = True, spade_hidden: int = 128,
                 pixel_noise: int = 0, class_style: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.z_dim = z_dim if noise_3d else 0
        if not 0 <= class_style <= self.z_dim:
            raise ValueError(f"class_style={class_style}: between 0 and the noise channels ({self.z_dim})")
        self.class_style = class_style
        self.pixel_noise = pixel_noise
        cond = num_classes + self.z_dim + pixel_noise
        widths = [w * ch for w in WIDTHS]
        self.fc = nn.Conv2d(cond, widths[0], 3, padding=1)
        self.body = nn.ModuleList(
            SPADEResBlock(widths[i], widths[i + 1], cond, spade_hidden, norm, spectral_norm)
            for i in range(len(widths) - 1)
        )
        self.conv_img = nn.Conv2d(widths[-1], 3, 3, padding=1)
        assert 2 ** (len(self.body) - 1) == self.SIZE_MULTIPLE  # five x2 upsamplings from the latent grid

    def synthesize(self, seg: torch.Tensor) -> torch.Tensor:
        h, w = seg.shape[-2:]
        segs = self.pyramid(seg, len(self.body) - 1)
        x = self.fc(segs[(h // self.SIZE_MULTIPLE, w // self.SIZE_MULTIPLE)])
        for i, block in enumerate(self.body):
            x = block(x, segs[tuple(x.shape[-2:])])
            if i < len(self.body) - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
