"""Networks of USIS: generators (SPADE, wavelet), segmenter, discriminators, wavelet transforms."""

from usis.nn.discriminator import Decoder, build_discriminator
from usis.nn.generator import BaseGenerator, Generator, one_hot_labels
from usis.nn.segmenter import Segmenter
from usis.nn.wavelet_generator import WaveletGenerator
from usis.nn.wavelets import dwt, iwt

__all__ = ["BaseGenerator", "Decoder", "Generator", "Segmenter", "WaveletGenerator", "build_discriminator", "dwt",
           "iwt", "one_hot_labels"]
