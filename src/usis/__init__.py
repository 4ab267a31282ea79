"""usis: Unsupervised Semantic Image Synthesis (Eskandar et al., Computers & Graphics 2023) in PyTorch.

    from usis import USISPipeline
    pipe = USISPipeline.from_pretrained("exported/")   # or RUN/checkpoints/latest.pt
    images = pipe(label_map, seeds=[0, 1, 2])

Names are imported on first use, so ``import usis`` (and ``usis --help``) stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Config", "Generator", "USISPipeline", "UsisError", "WaveletGenerator", "get_preset", "load_generator"]

_LAZY = {
    "USISPipeline": ("usis.pipeline", "USISPipeline"),
    "Generator": ("usis.nn.generator", "Generator"),
    "WaveletGenerator": ("usis.nn.wavelet_generator", "WaveletGenerator"),
    "Config": ("usis.config", "Config"),
    "get_preset": ("usis.config", "get_preset"),
    "load_generator": ("usis.generate", "load_generator"),
    "UsisError": ("usis.errors", "UsisError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'usis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
