"""Two independent, resumable batch streams: label maps and photos.

USIS never pairs a label map with a photo, so the two sets are drawn by separate samplers: each stream
has its own seed (derived from ``seed`` and a stream id), its own epoch counter and its own position
within the epoch, and cycles through its set on its own (the sets may differ in size). The photo drawn
together with label map ``i`` therefore changes from epoch to epoch.

Each epoch's order is a pure function of ``(seed, stream, epoch)`` (``torch.randperm`` with a private
``torch.Generator``), and so are the per-item augmentation seeds (crop offsets, flips) that the sampler
hands to the dataset as ``(index, aug_seed)`` pairs. Resuming therefore needs only the epoch and the
number of batches already consumed per stream: :meth:`UnpairedLoaders.state_dict` stores them and
:meth:`UnpairedLoaders.load_state_dict` restarts each stream at that batch, so a resumed run draws
exactly the batches of an uninterrupted one, with or without worker processes. The streams never touch
torch's global RNG (the DataLoaders get their own generators), so the trainer's noise draws are not
perturbed by epoch boundaries either.

Distributed training: with ``distributed=True`` every rank draws the same permutation (same seed),
padded to a multiple of the world size, and takes every ``world_size``-th entry from ``rank`` on, as
``torch.utils.data.DistributedSampler`` with ``set_epoch`` does; the augmentation seeds differ per rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from usis.config import ConfigError
from usis.data.datasets import DataBundle, DatasetError
from usis.errors import DataWarning

LABELS, PHOTOS, PAIRS = 0, 1, 2  # stream ids (mixed into the seeds)
_STATE_VERSION = 1


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from a few non-negative integers."""
    return int(np.random.SeedSequence([int(v) & (2**63 - 1) for v in values]).generate_state(1, np.uint64)[0]
               & np.uint64(2**63 - 1))


class EpochBatchSampler(Sampler):
    """Batches of ``(index, aug_seed)`` pairs for one epoch of one stream, from batch ``start`` on.

    The permutation of epoch ``e`` is ``torch.randperm(n)`` from a generator seeded with
    ``mix(seed, stream, e)``; call :meth:`set_epoch` before iterating. ``len()`` is the number of
    batches in a full epoch (for this rank).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, stream: int, drop_last: bool = True,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.num_items, self.batch_size, self.seed, self.stream = num_items, batch_size, seed, stream
        self.drop_last, self.shuffle, self.rank, self.world_size = drop_last, shuffle, rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def _per_rank(self) -> int:
        return -(-self.num_items // self.world_size)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_items(self, epoch: int) -> tuple[list[int], list[int]]:
        """``(indices, aug_seeds)`` of this rank for ``epoch``."""
        n = self.num_items
        if n == 0:
            return [], []
        g = torch.Generator().manual_seed(_mix(self.seed, self.stream, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        total = self._per_rank() * self.world_size
        if total > n:  # pad (as DistributedSampler does) so that every rank gets as many items
            order = order.repeat(-(-total // n))[:total]
        aug = torch.randint(0, 2**62, (total,), generator=g)
        return order[self.rank:total:self.world_size].tolist(), aug[self.rank:total:self.world_size].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx, aug = self.epoch_items(self.epoch)
        bs = self.batch_size
        for b in range(self.start, len(self)):
            chunk = range(b * bs, min((b + 1) * bs, len(idx)))
            yield [(idx[k], aug[k]) for k in chunk]


class _DropSeed(Dataset):
    """Adapter for datasets whose ``__getitem__`` takes a plain int (e.g. the synthetic set)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: tuple[int, int]) -> Any:
        return self.dataset[index[0]]


def _dist_info(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed=True but torch.distributed is not initialised: launch with torchrun "
                          "and call init_process_group first")
    return dist.get_rank(), dist.get_world_size()


class _Stream:
    """One endless stream of batches (labels or photos) with an epoch counter and a position."""

    def __init__(self, dataset: Dataset, name: str, stream: int, batch_size: int, seed: int, num_workers: int,
                 pin_memory: bool, drop_last: bool, distributed: bool, shuffle: bool = True):
        rank, world = _dist_info(distributed)
        self.name = name
        self.sampler = EpochBatchSampler(len(dataset), batch_size, seed, stream, drop_last, shuffle, rank, world)
        if len(dataset) == 0:
            raise DatasetError(f"the {name} set is empty: nothing to train on (run `usis data check` to see why)")
        if len(self.sampler) == 0:
            raise DatasetError(f"only {len(dataset)} {name} for batch size {batch_size}"
                               f"{f' x {world} ranks' if world > 1 else ''}: lower --set train.batch_size or add "
                               f"more {name}{' (--set data.labelled=K)' if stream == PAIRS else ''}")
        ds = dataset if getattr(dataset, "accepts_aug_seed", False) else _DropSeed(dataset)
        workers = max(0, int(num_workers))
        self.loader = DataLoader(
            ds, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=bool(pin_memory and torch.cuda.is_available()), persistent_workers=workers > 0,
            # own generator: creating an iterator must not consume torch's global RNG (worker base seeds)
            generator=torch.Generator().manual_seed(_mix(seed, stream, 2**31)),
        )
        self.epoch = 0
        self.position = 0  # batches consumed in the current epoch
        self._it: Iterator | None = None

    def next(self) -> dict[str, Any]:
        try:
            return self._next()
        except DatasetError as e:  # from a worker: drop the worker traceback torch put into the message
            text = str(e)
            marker = f"{type(e).__name__}: "
            if "Original Traceback" in text and marker in text:
                raise type(e)(text.rsplit(marker, 1)[1].strip()) from None
            raise

    def _next(self) -> dict[str, Any]:
        if self._it is None:
            self.sampler.set_epoch(self.epoch, self.position)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch, 0)
            self._it = iter(self.loader)
            batch = next(self._it)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        s = self.sampler
        return {"epoch": self.epoch, "position": self.position, "seed": s.seed, "stream": s.stream,
                "num_items": s.num_items, "batch_size": s.batch_size, "rank": s.rank, "world_size": s.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s = self.sampler
        self._it = None
        s.seed = int(state["seed"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        saved = (int(state["num_items"]), int(state["batch_size"]), int(state["world_size"]))
        if saved != (s.num_items, s.batch_size, s.world_size):
            warnings.warn(f"{self.name} stream: the checkpoint was saved with {saved[0]} items, batch size "
                          f"{saved[1]} and {saved[2]} ranks, now {s.num_items}, {s.batch_size}, {s.world_size}: "
                          f"continuing from the start of the next epoch (not batch-exact)", DataWarning, stacklevel=3)
            self.epoch, self.position = self.epoch + 1, 0


class UnpairedLoaders:
    """Endless, independent label-map and photo batch streams.

    ``next_labels()`` -> ``{"label": LongTensor N x H x W, "path": list[str]}``;
    ``next_photos()`` -> ``{"image": FloatTensor N x 3 x H x W in [-1, 1], "path": list[str]}``.
    Iterating yields ``(label_batch, photo_batch)`` pairs forever.
    """

    def __init__(self, bundle: DataBundle, batch_size: int, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = True, distributed: bool = False,
                 labelled: Dataset | None = None):
        common = dict(batch_size=batch_size, seed=seed, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=drop_last, distributed=distributed)
        self.labels = _Stream(bundle.labels, "label maps", LABELS, **common)
        self.photos = _Stream(bundle.photos, "photos", PHOTOS, **common)
        # data.labelled: a third stream of (photo, its label map) pairs, with its own order and position
        self.pairs = None if labelled is None else _Stream(labelled, "labelled pairs", PAIRS, **common)

    def next_labels(self) -> dict[str, Any]:
        return self.labels.next()

    def next_photos(self) -> dict[str, Any]:
        return self.photos.next()

    def next_pairs(self) -> dict[str, Any] | None:
        """``{"image", "label", "path", ...}`` of the labelled stream (``data.labelled``), or None without one."""
        return None if self.pairs is None else self.pairs.next()

    def __iter__(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        while True:
            yield self.next_labels(), self.next_photos()

    @property
    def epochs(self) -> tuple[int, int]:
        """Completed-epoch counters ``(labels, photos)``."""
        return self.labels.epoch, self.photos.epoch

    def state_dict(self) -> dict[str, Any]:
        """Plain ints only (safe for ``torch.load(weights_only=True)``)."""
        state = {"version": _STATE_VERSION, "labels": self.labels.state_dict(), "photos": self.photos.state_dict()}
        if self.pairs is not None:
            state["pairs"] = self.pairs.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) != _STATE_VERSION:
            raise ValueError(f"unsupported data-stream state version {state.get('version')!r}")
        self.labels.load_state_dict(state["labels"])
        self.photos.load_state_dict(state["photos"])
        if self.pairs is not None and "pairs" in state:
            self.pairs.load_state_dict(state["pairs"])
        elif self.pairs is not None:
            warnings.warn("the checkpoint has no labelled stream (it was saved without data.labelled): the labelled "
                          "pairs start from their first batch", DataWarning, stacklevel=2)


def make_loaders(bundle: DataBundle, batch_size: int, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False, drop_last: bool = True, distributed: bool = False,
                 labelled: Dataset | None = None) -> UnpairedLoaders:
    """Independent, endless, resumable label and photo streams over ``bundle`` (see module docstring), and with
    ``labelled`` a third of labelled pairs."""
    return UnpairedLoaders(bundle, batch_size, seed, num_workers, pin_memory, drop_last, distributed, labelled)


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A plain, ordered, finite loader (every item once, last batch kept) for evaluation."""
    workers = max(0, int(num_workers))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers,
                      pin_memory=bool(pin_memory and torch.cuda.is_available()))
