"""The synthetic benchmark's datasets: unpaired label and photo streams and the paired stream of the
evaluator, each item a pure function of its coordinates. See :mod:`usis.data.synthetic`."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from usis.data.synthetic.layout import (
    _STREAM_LABELLED,
    _STREAM_LABELS,
    _STREAM_PAIRED,
    _STREAM_PHOTOS,
    DATA_VERSION,
    _check_split,
    check_size,
    make_layout,
    make_scene,
)
from usis.data.synthetic.rendering import render


def item_rng(seed: int, split: str, stream: int, index: int, height: int, width: int) -> np.random.Generator:
    """The generator of one item: a pure function of its coordinates."""
    return np.random.default_rng([DATA_VERSION, int(seed), _check_split(split), stream, int(index), height, width])


class _SyntheticBase(Dataset):
    """``n`` items of one stream. Item ``i`` depends only on ``(seed, split, i, height, width)``.

    Args:
        n: number of items.
        height, width: image size, multiples of 32.
        seed: data seed; ``split``: ``"train"``, ``"val"`` or ``"test"`` (disjoint streams).
        cache: keep generated items in memory (about 100 KB per 64 x 128 photo); items are cheap to
            regenerate (a few ms), so this is off by default.
    """

    stream: int = 0
    kind: str = ""

    def __init__(
        self, n: int, height: int = 64, width: int = 128, seed: int = 0, split: str = "train", cache: bool = False
    ) -> None:
        check_size(height, width)
        _check_split(split)
        if n < 0:
            raise ValueError(f"number of synthetic items must be >= 0; got {n}")
        self.n, self.height, self.width, self.seed, self.split = int(n), int(height), int(width), int(seed), split
        self.cache = cache
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"synthetic index {i} out of range for {self.n} items")
        return i

    def _rng(self, i: int) -> np.random.Generator:
        return item_rng(self.seed, self.split, self.stream, i, self.height, self.width)

    def layout(self, i: int) -> np.ndarray:
        """The layout item ``i`` is made from (for tests and inspection; never a training label of photos)."""
        return make_layout(self._rng(self._index(i)), self.height, self.width)

    def _make(self, i: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        if self.cache and i in self._cache:
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._cache[i].items()}
        item = self._make(i)
        item["path"] = f"synthetic://{self.split}/{self.kind}/{i}"
        if self.cache:  # callers may modify what they get in place: keep a private copy
            self._cache[i] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
        return item

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.n}, height={self.height}, width={self.width}, "
            f"seed={self.seed}, split={self.split!r})"
        )


class SyntheticLabels(_SyntheticBase):
    """Label maps: ``{"label": int64 H x W, "path": "synthetic://<split>/labels/<i>"}``."""

    stream, kind = _STREAM_LABELS, "labels"

    def _make(self, i: int) -> dict:
        return {"label": torch.from_numpy(make_layout(self._rng(i), self.height, self.width))}


class SyntheticPhotos(_SyntheticBase):
    """Photos of layouts from their own stream (never returned as labels):
    ``{"image": float32 3 x H x W in [-1, 1], "path": "synthetic://<split>/photos/<i>"}``."""

    stream, kind = _STREAM_PHOTOS, "photos"

    def _make(self, i: int) -> dict:
        rng = self._rng(i)
        scene = make_scene(rng, self.height, self.width)
        return {"image": torch.from_numpy(render(scene.labels, rng, scene.instances, scene.boxes))}


class SyntheticPaired(_SyntheticBase):
    """Photo + its own layout (a third stream), only for training / measuring the evaluator:
    ``{"label": int64 H x W, "image": float32 3 x H x W in [-1, 1], "path": ...}``."""

    stream, kind = _STREAM_PAIRED, "paired"

    def _make(self, i: int) -> dict:
        rng = self._rng(i)
        scene = make_scene(rng, self.height, self.width)
        image = render(scene.labels, rng, scene.instances, scene.boxes)
        return {"label": torch.from_numpy(scene.labels), "image": torch.from_numpy(image)}


def stack(dataset: Dataset, key: str, n: int | None = None) -> torch.Tensor:
    """Stack ``dataset[i][key]`` for the first ``n`` items (all by default) into one tensor."""
    n = len(dataset) if n is None else min(n, len(dataset))
    if n == 0:
        raise ValueError("cannot stack an empty synthetic dataset")
    return torch.stack([dataset[i][key] for i in range(n)])


class SyntheticLabelled(SyntheticPaired):
    """The labelled photos a semi-supervised run may use (``data.labelled``): photo + its own layout, like
    :class:`SyntheticPaired` but from a fourth stream, so never one of the evaluator's or the test photos."""

    stream, kind = _STREAM_LABELLED, "labelled"
