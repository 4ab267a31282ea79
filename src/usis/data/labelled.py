"""A few labelled photos (``data.labelled``): K real photos with their own label maps, beside the unpaired
streams, which stay as they are.

Where the pairs come from (always the training split):

* ``synthetic``: :class:`usis.data.synthetic.SyntheticLabelled`, a stream of its own: never one of the
  evaluator's photos (its paired stream) nor a test photo (another split). ``all`` = ``data.synthetic_train``.
* ``cityscapes``: ``gtFine/train/<city>/X_gtFine_labelIds.png`` with ``leftImg8bit/train/<city>/X_leftImg8bit.png``.
* ``gta2cityscapes``: the Cityscapes train pairs of ``data.root`` (the target domain's photos).
* ``ade20k``: ``annotations/training/X.png`` with ``images/training/X.jpg``; ``coco``: ``train_label/X.png``
  with ``train_img/X.jpg``.
* ``folder``: ``data.labelled_labels`` and ``data.labelled_photos``, matched by their path inside the folder
  without the extension. Every photo needs its map and every map its photo.

The K pairs are a seeded choice (``data.labelled_seed``) of K of the N found, in the order found; ``all`` takes
every pair (the paired setting). A pair's photo and map go through the same crop and flip (one augmentation
seed for both), so they must have the same size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import usis.data.synthetic as synthetic
from usis.config import Config, ConfigError, parse_count
from usis.data.datasets import (
    LABEL_EXTS,
    PHOTO_EXTS,
    LabelDataset,
    PhotoDataset,
    RandomFlip,
    _cityscapes_labels,
    _cityscapes_photos,
    _list_files,
    _split_index,
    geometry_for,
    open_image,
    read_label,
    resolve_layout,
)
from usis.errors import DatasetError

CHECKED = 200  # pairs whose map is read in full (ids) when the run starts; every pair's sizes are checked


def choose(available: int, count: int | None, seed: int) -> list[int]:
    """``count`` of ``range(available)`` (all for ``None``), a seeded choice kept in index order."""
    if count is None or count == available:
        return list(range(available))
    if count > available:
        raise ConfigError(f"data.labelled={count}, but the training split has {available} labelled pairs: lower it "
                          f"(or --set data.labelled=all)")
    rng = np.random.default_rng([int(seed), 32])
    return sorted(int(i) for i in rng.choice(available, size=count, replace=False))


def _key(path: str, folder: Path, suffix: str = "") -> str:
    """A file's name inside ``folder`` without ``suffix`` (or its extension): what pairs a photo with its map."""
    rel = Path(path).relative_to(folder).as_posix()
    if suffix and rel.endswith(suffix):
        return rel[: -len(suffix)]
    return rel.rsplit(".", 1)[0]


def _match(labels: list[str], lfolder: Path, lsuffix: str, photos: list[str], pfolder: Path, psuffix: str,
           lflag: str, pflag: str) -> list[tuple[str, str]]:
    lkeys = {_key(p, lfolder, lsuffix): p for p in labels}
    pkeys = {_key(p, pfolder, psuffix): p for p in photos}
    lonely = [p for k, p in pkeys.items() if k not in lkeys]
    if lonely:
        raise DatasetError(f"{lonely[0]}: a labelled photo without its label map ({len(lonely)} such photo"
                           f"{'s' if len(lonely) > 1 else ''}); put its map under {lfolder} with the same name "
                           f"(set by {lflag}), or remove the photo from {pflag}")
    unmatched = [p for k, p in lkeys.items() if k not in pkeys]
    if unmatched:
        raise DatasetError(f"{unmatched[0]}: a label map without its photo ({len(unmatched)} such map"
                           f"{'s' if len(unmatched) > 1 else ''}); put its photo under {pfolder} with the same name "
                           f"(set by {pflag}), or remove the map from {lflag}")
    return [(pkeys[k], lkeys[k]) for k in sorted(pkeys)]


def find_pairs(cfg: Config) -> tuple[list[tuple[str, str]], str]:
    """Every labelled ``(photo, label map)`` pair of the training split of a file layout, and where they were
    looked for. Raises :class:`DatasetError` with the fix for a missing folder or an unmatched file."""
    d = cfg.data
    if d.kind in ("cityscapes", "gta2cityscapes"):
        root, problems = Path(d.root), []
        labels, _ = _cityscapes_labels(root, "train", problems)
        photos, _ = _cityscapes_photos(root, "train", problems)
        if problems:
            raise DatasetError(f"labelled Cityscapes pairs: {problems[0]}")
        pairs = _match(labels, root / "gtFine" / "train", "_gtFine_labelIds.png", photos, root / "leftImg8bit" / "train",
                       "_leftImg8bit.png", "data.root", "data.root")
        return pairs, f"{root}/gtFine/train with {root}/leftImg8bit/train"
    if d.kind in ("ade20k", "coco"):
        layout = resolve_layout(cfg, "train")
        if layout.problems:
            raise DatasetError(f"labelled {d.kind} pairs: {layout.problems[0]}")
        lfolder = Path(layout.label_source).parent
        pfolder = Path(layout.photo_source).parent
        pairs = _match(layout.label_paths, lfolder, "", layout.photo_paths, pfolder, "", "data.root", "data.root")
        return pairs, f"{lfolder} with {pfolder}"
    if d.kind == "folder":
        for value, flag, what in ((d.labelled_labels, "data.labelled_labels", "label maps"),
                                  (d.labelled_photos, "data.labelled_photos", "photos")):
            if not value:
                raise DatasetError(f"data.labelled={d.labelled} needs the labelled pairs: set --set {flag}=DIR to the "
                                   f"folder of their {what}")
            if not Path(value).is_dir():
                raise DatasetError(f"{flag}={value} is not a folder: set it to the folder of the labelled {what}")
        lfolder, pfolder = Path(d.labelled_labels), Path(d.labelled_photos)
        labels, photos = _list_files(lfolder, LABEL_EXTS), _list_files(pfolder, PHOTO_EXTS)
        if not photos:
            raise DatasetError(f"no labelled photos under {pfolder} (looked for {', '.join(PHOTO_EXTS)} files)")
        pairs = _match(labels, lfolder, "", photos, pfolder, "", "data.labelled_labels", "data.labelled_photos")
        return pairs, f"{lfolder} with {pfolder}"
    raise ConfigError(f"data.kind={d.kind!r} has no labelled pairs")


class PairedFiles(Dataset):
    """Photo + its label map: ``{"image", "label", "path" (the photo's), "label_path"}``; one augmentation seed
    for both, so the same crop and flip."""

    accepts_aug_seed = True

    def __init__(self, pairs: list[tuple[str, str]], cfg: Config, num_classes: int, coco_shift: bool):
        geo = geometry_for(cfg, "train")
        self.pairs = pairs
        self.photos = PhotoDataset([p for p, _ in pairs], geo)
        self.labels = LabelDataset([m for _, m in pairs], num_classes, geo, kind=cfg.data.kind, coco_shift=coco_shift)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i, seed = _split_index(index)
        if seed is None:  # one draw for both, or their crops and flips would differ
            seed = int(torch.randint(0, 2**62, (1,)).item())
        photo, label = self.photos[(i, seed)], self.labels[(i, seed)]
        return {"image": photo["image"], "label": label["label"], "path": photo["path"], "label_path": label["path"]}


def check_pairs(pairs: list[tuple[str, str]], num_classes: int, kind: str, coco_shift: bool,
                read: int = CHECKED) -> None:
    """Every pair's photo and map the same size (read from their headers), and the first ``read`` maps' ids in
    the label set; the first problem raised as :class:`DatasetError` naming the files."""
    for k, (photo, label) in enumerate(pairs):
        with open_image(photo) as p, open_image(label) as m:  # (an unreadable file: its own message)
            psize, msize = p.size, m.size
        if psize != msize:
            raise DatasetError(f"{photo} is {psize[0]}x{psize[1]} but its label map {label} is {msize[0]}x{msize[1]}: "
                               f"a labelled photo and its map must have the same size")
        if k < read:
            read_label(label, num_classes, kind, coco_shift)  # raises DatasetError naming the file and the ids


@dataclass
class Labelled:
    """The labelled pairs of a run: the dataset (items ``{"image", "label", "path"}``, ``(index, aug_seed)``
    indices), the names of the pairs used, how many there were, and where they came from."""

    dataset: Dataset
    names: list[str]
    available: int
    source: str

    def record(self) -> dict[str, Any]:
        return {"count": len(self.names), "available": self.available, "source": self.source, "pairs": self.names}


def build_labelled(cfg: Config, num_classes: int, coco_shift: bool = False) -> Labelled | None:
    """The run's labelled pairs (``data.labelled``; ``None`` for 0), checked. Raises :class:`ConfigError` or
    :class:`DatasetError` with one message naming the setting or the file."""
    d = cfg.data
    count = parse_count(d.labelled)
    if count == 0:
        return None
    if d.kind == "synthetic":
        chosen = choose(d.synthetic_train, count, d.labelled_seed)
        full = synthetic.SyntheticLabelled(d.synthetic_train, d.height, d.width, seed=d.synthetic_seed, split="train")
        dataset: Dataset = _Subset(full, chosen)
        if d.flip:
            dataset = RandomFlip(dataset)
        return Labelled(dataset, [f"synthetic://train/labelled/{i}" for i in chosen], d.synthetic_train,
                        "the synthetic benchmark's labelled stream (train split)")
    pairs, source = find_pairs(cfg)
    chosen = [pairs[i] for i in choose(len(pairs), count, d.labelled_seed)]
    check_pairs(chosen, num_classes, d.kind, coco_shift)
    return Labelled(PairedFiles(chosen, cfg, num_classes, coco_shift), [p for p, _ in chosen], len(pairs), source)


class _Subset(Dataset):
    """Items ``indices`` of ``dataset`` by plain integer index (torch's ``Subset`` has a batched
    ``__getitems__`` that the DataLoader would hand our ``(index, aug_seed)`` pairs to)."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]
