"""The networks of a run, built from its config: one place that maps config fields to constructors.

Each network also builds, saves and loads itself from its own config (:mod:`usis.nn.pretrained`):
``Generator.from_pretrained(dir)`` needs no run config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from usis.config import Config
from usis.errors import ConfigError
from usis.nn.discriminator import Decoder, WholeDiscriminator, build_discriminator, num_down_blocks
from usis.nn.generator import BaseGenerator, Generator
from usis.nn.layers import converge_spectral_norm, init_reference_
from usis.nn.segmenter import Segmenter
from usis.nn.wavelet_generator import WaveletGenerator

GENERATORS: dict[str, type[BaseGenerator]] = {"spade": Generator, "wavelet": WaveletGenerator}


@dataclass
class Networks:
    G: BaseGenerator
    G_ema: BaseGenerator
    S: Segmenter
    D: nn.Module
    decoder: Decoder | None
    D_label: nn.Module | None = None  # the reverse cycle's label discriminator (train.lambda_rev > 0)

    def named(self) -> dict[str, nn.Module]:
        nets = {"G": self.G, "G_ema": self.G_ema, "S": self.S, "D": self.D}
        if self.decoder is not None:
            nets["decoder"] = self.decoder
        if self.D_label is not None:
            nets["D_label"] = self.D_label
        return nets


def build_generator(cfg: Config) -> BaseGenerator:
    """``model.g_type``'s generator: the SPADE generator (USIS) or the wavelet generator (USIS-Wavelet)."""
    m = cfg.model
    args = dict(ch=m.g_ch, z_dim=m.z_dim, norm=m.g_norm, spectral_norm=m.spectral_norm, noise_3d=m.noise_3d,
                spade_hidden=m.spade_hidden, pixel_noise=m.pixel_noise)
    if m.g_type == "wavelet":
        return WaveletGenerator(m.num_classes, shortcut_norm=m.g_shortcut_norm, **args)
    return Generator(m.num_classes, class_style=m.class_style, **args)


def build_segmenter(cfg: Config) -> Segmenter:
    m = cfg.model
    return Segmenter(m.num_classes, ch=m.s_ch, spectral_norm=m.spectral_norm, extra_channel=m.s_extra_channel,
                     local=m.s_local)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy in eval mode (the start of an exponential moving average)."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


def check_image_size(cfg: Config) -> None:
    """Raise :class:`~usis.errors.ConfigError` unless ``data.height`` x ``data.width`` suits every network of
    the run: the SPADE generator needs multiples of 32, the wavelet generator and the segmenter (a six-level
    U-Net) multiples of 64, and the discriminator at least one down-sampling block."""
    h, w = cfg.data.height, cfg.data.width
    need = max(GENERATORS[cfg.model.g_type].SIZE_MULTIPLE, Segmenter.SIZE_MULTIPLE)
    if h <= 0 or w <= 0 or h % need or w % need:
        def near(v: int) -> str:
            lo = v // need * need
            return str(v) if v % need == 0 else (f"{lo} or {lo + need}" if lo > 0 else str(need))

        raise ConfigError(f"data.height={h}, data.width={w}: the segmenter (six 2x down-sampling levels) needs a "
                          f"height and width that are multiples of {need}; use e.g. data.height={near(h)} and "
                          f"data.width={near(w)}")
    try:
        num_down_blocks(h, w)
    except ValueError as e:
        raise ConfigError(f"data.height={h}, data.width={w}: {e}") from e


def build_networks(cfg: Config) -> Networks:
    """All networks of a run, sized from the config (the class count comes from the data)."""
    check_image_size(cfg)
    m, d = cfg.model, cfg.data
    G = build_generator(cfg)
    S = build_segmenter(cfg)
    if m.init == "reference":  # the reference's Xavier-normal (gain 0.02) for G and S, before D is drawn
        init_reference_(G)
        init_reference_(S)
    D = build_discriminator(m.d_type, d.height, d.width, ch=m.d_ch, max_ch=m.d_max_ch, patch=m.d_patch,
                            reads=m.num_classes if m.d_reads else 0)
    dec = Decoder(D.feature_channels, D.feature_strides, max_ch=m.dec_ch) if m.decoder else None
    D_label = None
    if cfg.train.lambda_rev > 0:  # whole-image D on C-channel probability maps, D's widths
        D_label = WholeDiscriminator(d.height, d.width, ch=m.d_ch, max_ch=m.d_max_ch, in_channels=m.num_classes)
    for net in (G, S, D):
        converge_spectral_norm(net)
    return Networks(G=G, G_ema=make_ema(G), S=S, D=D, decoder=dec, D_label=D_label)
