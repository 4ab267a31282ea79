"""Networks of USIS: generator, segmenter, discriminators, wavelet transforms."""

from usis.nn.discriminator import Decoder, build_discriminator
from usis.nn.generator import Generator, one_hot_labels
from usis.nn.segmenter import Segmenter
from usis.nn.wavelets import dwt, iwt

__all__ = ["Decoder", "Generator", "Segmenter", "build_discriminator", "dwt", "iwt", "one_hot_labels"]
