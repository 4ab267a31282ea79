"""Label-map and photo datasets for the standard layouts and for a plain folder pair.

USIS trains on UNPAIRED data, so every layout is read as two independent file lists: the label maps of
a split and the photos of a split. Items follow one contract (the trainer relies on it):

* label dataset item: ``{"label": LongTensor H x W, ids in [0, num_classes), "path": str}``
* photo dataset item: ``{"image": FloatTensor 3 x H x W in [-1, 1], "path": str}``

Layouts (``cfg.data.kind``):

* ``cityscapes``: ``root/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`` (35 ids, 0 = don't care) and
  ``root/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``.
* ``ade20k``: ``root/annotations/{training,validation}/*.png`` (151 ids, 0 = other) and
  ``root/images/{training,validation}/*.jpg``.
* ``coco`` (COCO-Stuff, SPADE layout): ``root/{train,val}_label/*.png`` (stored value v -> id v + 1,
  255 -> 0 = unknown; 183 ids) and ``root/{train,val}_img/*.jpg``.
* ``gta2cityscapes``: GTA-V labels (Cityscapes ids) from ``label_root/labels/*.png`` (train) and
  ``label_root/val_labels/*.png`` (val; if absent, the Cityscapes val labels), photos from the
  Cityscapes ``root/leftImg8bit/{split}``. ``label_root`` defaults to ``root``.
* ``folder``: every label image under ``data.labels`` and every photo under ``data.photos`` (recursive,
  sorted); ``data.val_labels`` / ``data.val_photos`` for ``split="val"`` (falling back, with a warning,
  to the training folders).
* ``synthetic``: the embedded procedural set (:mod:`usis.data.synthetic`).

Preprocessing. Train: resize the short side to ``load_size`` (never below the crop) and random-crop
``height x width``, random horizontal flip; with ``load_size == 0`` a plain resize to ``height x width``.
Val: a plain resize to ``height x width``. Labels are resized NEAREST, photos BICUBIC. The label and
photo augmentations are independent. An index may be a pair ``(i, aug_seed)`` (the samplers in
:mod:`usis.data.unpaired` pass one) so that crops and flips are reproducible and resumable; a plain int
draws the augmentation from torch's RNG.

Label PNGs hold class ids in one channel: 8- or 16-bit grayscale (``L``, ``I;16``, ``I``) or palette
(``P``: the palette INDEX is the id, the colours are ignored). Colour (RGB) label maps are rejected
with a message that says how to convert them, unless all three channels are equal.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import usis.data.synthetic as synthetic
from usis.config import Config, ConfigError
from usis.data.palette import Color, class_info, load_class_file
from usis.errors import CorruptImageError, DatasetError, DataWarning

PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LABEL_EXTS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: JPEG would change ids at region borders
LOSSY_EXTS = (".jpg", ".jpeg", ".webp")

# standard label sets: number of ids and the don't-care id
STANDARD_CLASSES = {"cityscapes": 35, "gta2cityscapes": 35, "ade20k": 151, "coco": 183}
KINDS = ("synthetic", "cityscapes", "ade20k", "coco", "gta2cityscapes", "folder")
SPLITS = ("train", "val")

_CORRUPT_FIX = "re-download or delete the file, or set --set data.skip_corrupt=true to skip unreadable files"
_INDEX_PNG_FIX = ("save class ids in a single channel: an 8-bit grayscale ('L') or palette ('P') PNG "
                  "whose pixel value (palette index) is the class id")


# ------------------------------------------------------------------------------------------ reading


def open_image(path: str) -> Image.Image:
    """Open and fully decode an image; raise :class:`CorruptImageError` naming the file."""
    try:
        img = Image.open(path)
        img.load()  # decode now: truncated files fail here, not half-way through a batch
    except FileNotFoundError as e:
        raise CorruptImageError(f"{path}: file not found (was it moved or deleted after the file list "
                                f"was built?)") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors, ...
        raise CorruptImageError(f"{path}: cannot read image ({type(e).__name__}: {e}); {_CORRUPT_FIX}") from e
    return img


def color_label_message(path: str, mode: str, kind: str) -> str:
    """The message for a colour image where a class-id label map is expected."""
    msg = (f"{path}: label map is a colour image (mode {mode}), but class ids are expected: convert it to an "
           f"index PNG ({_INDEX_PNG_FIX})")
    if kind in ("cityscapes", "gta2cityscapes"):
        msg += (". Cityscapes: use the *_gtFine_labelIds.png files, not the *_gtFine_color.png "
                "visualisations")
    else:
        msg += (". If your labels are colour-coded, map each colour to its id (e.g. with the colours of "
                "your class file) and save the id map")
    return msg


def label_array(img: Image.Image, path: str, kind: str = "folder") -> np.ndarray:
    """Raw stored label values of a decoded label image as an int64 ``H x W`` array.

    ``P`` images give their palette indices; RGB(A) images are accepted only if R == G == B.
    """
    mode = img.mode
    if mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "1"):
        return np.asarray(img).astype(np.int64, copy=False)
    if mode in ("LA", "PA"):
        return np.asarray(img.getchannel(0)).astype(np.int64, copy=False)
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].astype(np.int64)  # a grayscale id map saved as RGB
        raise DatasetError(color_label_message(path, mode, kind))
    if mode == "F":
        arr = np.asarray(img)
        if np.isfinite(arr).all() and (arr == np.round(arr)).all():
            return arr.astype(np.int64)
        raise DatasetError(f"{path}: label map holds non-integer float values; {_INDEX_PNG_FIX}")
    raise DatasetError(f"{path}: unsupported label image mode {mode}; {_INDEX_PNG_FIX}")


MAX_PNG_CLASSES = 65536  # a 16-bit PNG's ids


def label_png(ids: np.ndarray, num_classes: int) -> Image.Image:
    """Class ids (integer ``H x W`` in ``[0, num_classes)``) as the image a label PNG is saved from: 8-bit
    grayscale (``L``) for up to 256 classes, 16-bit grayscale (``I;16``) beyond; :func:`label_array` reads
    both back. (``usis app`` once saved 32-bit ``I`` images: Pillow wrote them as the same 16-bit PNG.)"""
    if num_classes > MAX_PNG_CLASSES:
        raise DatasetError(f"{num_classes} classes: a label PNG holds ids up to {MAX_PNG_CLASSES - 1}; use a label "
                           f"set of at most {MAX_PNG_CLASSES} classes")
    if num_classes <= 256:
        return Image.fromarray(np.asarray(ids).astype(np.uint8), "L")
    return Image.fromarray(np.asarray(ids).astype(np.uint16))


def remap_coco(raw: np.ndarray) -> np.ndarray:
    """COCO-Stuff (SPADE layout): stored value v -> id v + 1, 255 (unknown) -> 0."""
    ids = raw + 1
    ids[raw == 255] = 0
    return ids


def label_range_message(path: str, values: np.ndarray, num_classes: int, kind: str,
                        all_values: np.ndarray | None = None) -> str:
    """The message for label ids outside ``[0, num_classes)``.

    ``values``: the offending ids (after any remapping); ``all_values``: every distinct stored value in
    the file (used to recognise 0/255 binary masks).
    """
    shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    stored = set(int(v) for v in all_values) if all_values is not None else set()
    if kind == "folder" and stored and stored <= {0, 255}:
        return (f"{path}: label values {{0, 255}} found, but data.num_classes={num_classes} allows ids "
                f"0..{num_classes - 1}: for a binary mask save 0/1 (e.g. (mask > 127).astype(np.uint8)), "
                f"or set --set data.num_classes=256")
    msg = (f"{path}: label ids {{{shown}}} are outside [0, {num_classes}) "
           f"(data.num_classes={num_classes})")
    if kind in ("cityscapes", "gta2cityscapes"):
        return msg + ("; Cityscapes label ids are 0..33: use *_gtFine_labelIds.png (not *_labelTrainIds.png "
                      "or colour maps), or fix/remove this file")
    if kind == "ade20k":
        return msg + "; ADE20K (ADEChallengeData2016) annotations hold 0..150: fix or remove this file"
    if kind == "coco":
        return msg + ("; COCO-Stuff stored values must be 0..181 or 255 (the SPADE-layout stuffthingmaps): "
                      "fix or remove this file")
    hint = f"; if these are real classes set --set data.num_classes={int(values.max()) + 1}"
    if 255 in stored:
        hint += ", and if 255 means 'ignore', save it as your don't-care id (data.dontcare) instead"
    return msg + hint + ", otherwise remap them to valid ids"


def read_label(path: str, num_classes: int, kind: str = "folder", coco_shift: bool = False) -> np.ndarray:
    """Read a label map as int64 class ids in ``[0, num_classes)``; :class:`DatasetError` otherwise."""
    with open_image(path) as img:
        raw = label_array(img, path, kind)
    ids = remap_coco(raw) if coco_shift else raw
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        bad = np.unique(ids[(ids < 0) | (ids >= num_classes)])
        raise DatasetError(label_range_message(path, bad, num_classes, kind, np.unique(raw)))
    return ids


# --------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Output size and augmentation switches shared by the label and photo datasets of one split."""

    height: int
    width: int
    load_size: int = 0
    train: bool = False
    flip: bool = True

    def plan(self, w: int, h: int, rng: random.Random | None) -> tuple[int, int, int, int, bool]:
        """``(resized_w, resized_h, crop_x0, crop_y0, flip)`` for a ``w x h`` source image."""
        H, W = self.height, self.width
        if not self.train or self.load_size <= 0:
            rw, rh, x0, y0 = W, H, 0, 0
        else:
            scale = max(self.load_size / min(w, h), H / h, W / w)  # never smaller than the crop
            rw, rh = max(W, round(w * scale)), max(H, round(h * scale))
            x0 = rng.randint(0, rw - W) if rng else 0
            y0 = rng.randint(0, rh - H) if rng else 0
        flip = bool(self.train and self.flip and rng is not None and rng.random() < 0.5)
        return rw, rh, x0, y0, flip


def _rng(seed: int | None) -> random.Random:
    if seed is None:  # plain integer index: torch's RNG (seeded per DataLoader worker)
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return random.Random(seed)


def _split_index(index: Any) -> tuple[int, int | None]:
    if isinstance(index, (tuple, list)):
        return int(index[0]), int(index[1])
    return int(index), None


# --------------------------------------------------------------------------------------- datasets


class _FileDataset(Dataset):
    accepts_aug_seed = True  # __getitem__ takes (index, aug_seed) pairs (see usis.data.unpaired)

    def __init__(self, paths: list[str], geometry: Geometry, skip_corrupt: bool = False, what: str = "file"):
        self.paths = list(paths)
        self.geometry = geometry
        self.skip_corrupt = skip_corrupt
        self.what = what
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int, rng: random.Random | None) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i, seed = _split_index(index)
        n = len(self.paths)
        if not 0 <= i < n:
            raise IndexError(f"{self.what} index {i} out of range for {n} files")
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                return self._load(j, _rng(seed) if self.geometry.train else None)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                if self.paths[j] not in self._warned:
                    self._warned.add(self.paths[j])
                    cause = str(e).split("; ")[0]
                    warnings.warn(f"skipping unreadable {self.what} (data.skip_corrupt=true): {cause}", DataWarning, stacklevel=2)
        raise DatasetError(f"none of the {n} {self.what}s could be read (first: {self.paths[0]}); {_CORRUPT_FIX}")


class LabelDataset(_FileDataset):
    """Label maps as int64 class ids. Item: ``{"label": LongTensor H x W, "path": str}``."""

    def __init__(self, paths: list[str], num_classes: int, geometry: Geometry, kind: str = "folder",
                 coco_shift: bool = False, skip_corrupt: bool = False):
        super().__init__(paths, geometry, skip_corrupt, what="label map")
        self.num_classes = num_classes
        self.kind = kind
        self.coco_shift = coco_shift

    def _load(self, i: int, rng: random.Random | None) -> dict[str, Any]:
        path = self.paths[i]
        ids = read_label(path, self.num_classes, self.kind, self.coco_shift)
        h, w = ids.shape
        rw, rh, x0, y0, flip = self.geometry.plan(w, h, rng)
        # nearest-neighbour resize and crop in one gather (pixel-centre sampling, like PIL NEAREST)
        rows = np.minimum(((np.arange(y0, y0 + self.geometry.height) + 0.5) * (h / rh)).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(x0, x0 + self.geometry.width) + 0.5) * (w / rw)).astype(np.int64), w - 1)
        if flip:
            cols = cols[::-1]
        out = ids[rows[:, None], cols[None, :]]
        return {"label": torch.from_numpy(np.ascontiguousarray(out)), "path": path}


class PhotoDataset(_FileDataset):
    """RGB photos. Item: ``{"image": FloatTensor 3 x H x W in [-1, 1], "path": str}``."""

    def __init__(self, paths: list[str], geometry: Geometry, skip_corrupt: bool = False):
        super().__init__(paths, geometry, skip_corrupt, what="photo")

    def _load(self, i: int, rng: random.Random | None) -> dict[str, Any]:
        path = self.paths[i]
        with open_image(path) as img:
            rgb = img.convert("RGB")
        rw, rh, x0, y0, flip = self.geometry.plan(rgb.width, rgb.height, rng)
        if (rw, rh) != rgb.size:
            rgb = rgb.resize((rw, rh), Image.BICUBIC)
        if (rw, rh) != (self.geometry.width, self.geometry.height):
            rgb = rgb.crop((x0, y0, x0 + self.geometry.width, y0 + self.geometry.height))
        if flip:
            rgb = rgb.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(rgb, dtype=np.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {"image": image, "path": path}


class RandomFlip(Dataset):
    """Random horizontal flip of ``label`` / ``image`` around a dataset without augmentation
    (the synthetic set); takes ``(index, aug_seed)`` pairs like the file datasets."""

    accepts_aug_seed = True

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # delegate (e.g. .layout(i) of the synthetic sets)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        i, seed = _split_index(index)
        item = self.dataset[i]
        if _rng(seed).random() < 0.5:
            item = {k: v.flip(-1) if k in ("label", "image") else v for k, v in item.items()}
        return item


# ---------------------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    """The file lists of one split of one layout, plus what went wrong while finding them."""

    kind: str
    split: str
    label_paths: list[str]
    photo_paths: list[str]
    label_source: str  # where the labels were looked for (for messages and reports)
    photo_source: str
    num_classes: int
    dontcare: int | None
    class_names: list[str]
    palette: list[Color]
    coco_shift: bool = False
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _list_files(folder: Path, exts: tuple[str, ...], suffix: str = "", depth: int | None = None) -> list[str]:
    """Sorted files under ``folder`` (recursive; ``depth`` limits it) ending in one of ``exts``/``suffix``."""
    if not folder.is_dir():
        return []
    out = []
    base_depth = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if depth is not None and len(Path(dirpath).parts) - base_depth >= depth:
            dirnames[:] = []
        dirnames.sort()
        for name in filenames:
            low = name.lower()
            if low.endswith(exts) and (not suffix or name.endswith(suffix)) and not name.startswith("."):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


def _subdirs(folder: Path, limit: int = 50) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())[:limit]
    except OSError:
        return []


def _root_hint(root: Path, marker: str, flag: str = "data.root") -> str:
    """Suggest a nearby folder that contains ``marker`` (the user pointed one level too high or low)."""
    if (root / marker).is_dir():
        return ""
    found = [c for c in _subdirs(root) if (c / marker).is_dir()]
    found = found or [g for c in _subdirs(root) for g in _subdirs(c) if (g / marker).is_dir()]
    found = found or [p for p in list(root.parents)[:3] if (p / marker).is_dir()]
    return f" (found {found[0] / marker}: did you mean --set {flag}={found[0]}?)" if found else ""


def _root_problem(root: str, what: str, flag: str = "data.root") -> str | None:
    if not root:
        return f"{flag} is not set: set --set {flag}=DIR to the folder that contains {what}"
    if not Path(root).exists():
        return f"{flag}={root} does not exist: set --set {flag}=DIR to the folder that contains {what}"
    return None


def _cityscapes_labels(root: Path, split: str, problems: list[str], flag: str = "data.root") -> tuple[list[str], str]:
    folder = root / "gtFine" / split
    source = f"{folder}/*/*_gtFine_labelIds.png"
    paths = _list_files(folder, (".png",), "_labelIds.png", depth=2)
    if not paths:
        colors = _list_files(folder, (".png",), "_color.png", depth=2)
        if colors:
            problems.append(
                f"{colors[0]}: found only Cityscapes colour maps (*_gtFine_color.png) under {folder}, but "
                f"class-id maps are expected: use the *_gtFine_labelIds.png files from gtFine_trainvaltest.zip "
                f"(they sit next to the colour maps in the official download)")
        else:
            problems.append(
                f"no Cityscapes label maps: expected {source}; set --set {flag}=DIR to the folder that "
                f"contains leftImg8bit/ and gtFine/{_root_hint(root, 'gtFine', flag)}")
    return paths, source


def _cityscapes_photos(root: Path, split: str, problems: list[str]) -> tuple[list[str], str]:
    folder = root / "leftImg8bit" / split
    source = f"{folder}/*/*_leftImg8bit.png"
    paths = _list_files(folder, (".png",), "_leftImg8bit.png", depth=2)
    if not paths:
        problems.append(
            f"no Cityscapes photos: expected {source}; set --set data.root=DIR to the folder that contains "
            f"leftImg8bit/ and gtFine/ (leftImg8bit_trainvaltest.zip){_root_hint(root, 'leftImg8bit')}")
    return paths, source


def _flat_pair(root_str: str, label_dir: str, photo_dir: str, name: str, contains: str,
               problems: list[str]) -> tuple[list[str], str, list[str], str]:
    """ADE20K / COCO-Stuff: one folder of label PNGs and one folder of photos per split."""
    p = _root_problem(root_str, contains)
    if p:
        problems.append(p)
        return [], "", [], ""
    root = Path(root_str)
    lfolder, pfolder = root / label_dir, root / photo_dir
    labels = _list_files(lfolder, LABEL_EXTS)
    photos = _list_files(pfolder, PHOTO_EXTS)
    marker = label_dir.split("/")[0]
    for paths, folder, what, pattern in ((labels, lfolder, "label maps", "*.png"),
                                         (photos, pfolder, "photos", "*.jpg")):
        if not paths:
            problems.append(f"no {name} {what}: expected {folder}/{pattern}; set --set data.root=DIR to the "
                            f"folder that contains {contains}{_root_hint(root, marker)}")
    return labels, f"{lfolder}/*.png", photos, f"{pfolder}/*.jpg"


def _folder_lists(labels_dir: str, photos_dir: str, lflag: str, pflag: str,
                  problems: list[str]) -> tuple[list[str], list[str]]:
    labels: list[str] = []
    photos: list[str] = []
    for value, flag, what in ((labels_dir, lflag, "label maps"), (photos_dir, pflag, "photos")):
        if not value:
            problems.append(f"{flag} is not set: set --set {flag}=DIR to the folder of your {what}")
        elif not Path(value).is_dir():
            problems.append(f"{flag}={value} is not a folder: set --set {flag}=DIR to the folder of your {what}")
    if labels_dir and Path(labels_dir).is_dir():
        labels = _list_files(Path(labels_dir), LABEL_EXTS)
        if not labels:
            lossy = _list_files(Path(labels_dir), LOSSY_EXTS)
            if lossy:
                problems.append(f"{lossy[0]}: label maps must be lossless PNGs (found {len(lossy)} JPEG/WebP "
                                f"files and no PNG under {labels_dir}): JPEG compression changes class ids at "
                                f"region borders; re-export the label maps as PNG")
            else:
                problems.append(f"no label maps under {labels_dir} (looked for {', '.join(LABEL_EXTS)} files, "
                                f"recursively): set --set {lflag}=DIR to the folder of your label PNGs")
    if photos_dir and Path(photos_dir).is_dir():
        photos = _list_files(Path(photos_dir), PHOTO_EXTS)
        if not photos:
            problems.append(f"no photos under {photos_dir} (looked for {', '.join(PHOTO_EXTS)} files, "
                            f"recursively): set --set {pflag}=DIR to the folder of your photos")
    if labels_dir and photos_dir and Path(labels_dir).resolve() == Path(photos_dir).resolve():
        problems.append(f"{lflag} and {pflag} are the same folder ({labels_dir}): keep label maps and photos "
                        f"in two separate folders")
    return labels, photos


def resolve_layout(cfg: Config, split: str = "train") -> Layout:
    """Find the label-map and photo files of ``split`` for ``cfg.data.kind`` without reading them.

    Problems (missing folders, empty lists, a wrong class count) are collected in ``Layout.problems``
    rather than raised, so that a check can report all of them at once.
    """
    d = cfg.data
    kind = d.kind
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use 'train' or 'val'")
    if kind not in KINDS or kind == "synthetic":
        raise ConfigError(f"data.kind={kind!r} has no file layout; choose one of: {', '.join(KINDS[1:])}")
    problems: list[str] = []
    warns: list[str] = []
    labels: list[str] = []
    photos: list[str] = []
    lsrc = psrc = ""
    coco_shift = False
    num_classes = STANDARD_CLASSES.get(kind, d.num_classes)
    if kind in STANDARD_CLASSES and d.num_classes != num_classes:
        problems.append(f"data.num_classes={d.num_classes}, but {kind} label maps have {num_classes} ids: "
                        f"remove the override (or --set data.num_classes={num_classes})")

    if kind == "cityscapes":
        p = _root_problem(d.root, "leftImg8bit/ and gtFine/")
        if p:
            problems.append(p)
        else:
            root = Path(d.root)
            labels, lsrc = _cityscapes_labels(root, split, problems)
            photos, psrc = _cityscapes_photos(root, split, problems)
    elif kind == "ade20k":
        sub = {"train": "training", "val": "validation"}[split]
        labels, lsrc, photos, psrc = _flat_pair(d.root, f"annotations/{sub}", f"images/{sub}", "ADE20K",
                                                "images/ and annotations/ (ADEChallengeData2016)", problems)
    elif kind == "coco":
        coco_shift = True
        labels, lsrc, photos, psrc = _flat_pair(d.root, f"{split}_label", f"{split}_img", "COCO-Stuff",
                                                "train_img/, train_label/, val_img/ and val_label/", problems)
    elif kind == "gta2cityscapes":
        label_root = d.label_root or d.root
        flag = "data.label_root" if d.label_root else "data.root"
        p = _root_problem(label_root, "the GTA-V labels/ folder", "data.label_root")
        if p:
            problems.append(p)
        else:
            lr = Path(label_root)
            if split == "train":
                folder = lr / "labels"
                lsrc = f"{folder}/*.png"
                labels = _list_files(folder, LABEL_EXTS)
                if not labels:
                    problems.append(f"no GTA-V label maps: expected {lsrc}; set --set data.label_root=DIR to the "
                                    f"GTA-V folder that contains labels/{_root_hint(lr, 'labels', flag)}")
            elif (lr / "val_labels").is_dir():
                folder = lr / "val_labels"
                lsrc = f"{folder}/*.png"
                labels = _list_files(folder, LABEL_EXTS)
                if not labels:
                    problems.append(f"no GTA-V validation label maps under {folder}: add them or remove the folder "
                                    f"(the Cityscapes val labels are used when it is absent)")
        p = _root_problem(d.root, "the Cityscapes leftImg8bit/ and gtFine/")
        if p:
            problems.append(p)
        else:
            root = Path(d.root)
            photos, psrc = _cityscapes_photos(root, split, problems)
            if split == "val" and not lsrc:
                warns.append(f"no {label_root}/val_labels/: validating on the Cityscapes val label maps")
                labels, lsrc = _cityscapes_labels(root, "val", problems)
    else:  # folder
        if split == "val" and not (d.val_labels or d.val_photos):
            warns.append("data.val_labels / data.val_photos not set: validating on the training folders "
                         "(set them to held-out data for meaningful FID)")
        if split == "val":
            ldir, pdir = d.val_labels or d.labels, d.val_photos or d.photos
            lflag = "data.val_labels" if d.val_labels else "data.labels"
            pflag = "data.val_photos" if d.val_photos else "data.photos"
        else:
            ldir, pdir, lflag, pflag = d.labels, d.photos, "data.labels", "data.photos"
        labels, photos = _folder_lists(ldir, pdir, lflag, pflag, problems)
        lsrc, psrc = f"{ldir}/**/*.png", f"{pdir}/**/*.(jpg|png|webp|...)"
        if num_classes < 2:
            problems.append(f"data.num_classes={num_classes}: set --set data.num_classes=N, the number of class "
                            f"ids in your label maps (largest id + 1)")

    names, palette = class_info(kind, max(num_classes, 0), d.dontcare)
    if d.class_file:
        try:
            fnames, fpalette = load_class_file(d.class_file)
        except ConfigError as e:
            problems.append(str(e))
        else:
            if len(fnames) != num_classes:
                problems.append(f"class file {d.class_file} lists {len(fnames)} classes but data.num_classes="
                                f"{num_classes}: make them agree (one entry per id 0..{num_classes - 1})")
            else:
                names, palette = fnames, fpalette
    if d.dontcare is not None and num_classes >= 2 and not 0 <= d.dontcare < num_classes:
        problems.append(f"data.dontcare={d.dontcare} is outside [0, {num_classes}): set --set data.dontcare=ID "
                        f"or --set data.dontcare=none")
    return Layout(kind=kind, split=split, label_paths=labels, photo_paths=photos, label_source=lsrc,
                  photo_source=psrc, num_classes=num_classes, dontcare=d.dontcare, class_names=names,
                  palette=palette, coco_shift=coco_shift, problems=problems, warnings=warns)


def label_set(cfg: Config) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours of a run's label set (synthetic, standard sets, class file, generic): what
    a trained generator's label maps mean, without building the datasets."""
    k = cfg.data.num_classes
    if cfg.data.kind == "synthetic":
        return list(synthetic.CLASS_NAMES), [tuple(c) for c in synthetic.PALETTE]
    if cfg.data.class_file and Path(cfg.data.class_file).is_file():
        try:
            names, colors = load_class_file(cfg.data.class_file)
        except ConfigError:
            names = []
        if len(names) == k:
            return names, colors
    return class_info(cfg.data.kind, k, cfg.data.dontcare)


# ----------------------------------------------------------------------------------------- bundle


@dataclass
class DataBundle:
    """The two unpaired datasets of one split and what the model needs to know about the labels."""

    labels: Dataset
    photos: Dataset
    num_classes: int
    dontcare: int | None
    class_names: list[str]
    palette: list[Color]
    kind: str = ""
    split: str = "train"
    warnings: list[str] = field(default_factory=list)


def geometry_for(cfg: Config, split: str) -> Geometry:
    d = cfg.data
    return Geometry(height=d.height, width=d.width, load_size=d.load_size, train=split == "train", flip=d.flip)


def build_datasets(cfg: Config, split: str = "train") -> DataBundle:
    """The label-map and photo datasets of ``split`` ("train" or "val") for ``cfg.data``.

    Raises :class:`DatasetError` listing every problem found while locating the files (not while
    reading them: see :func:`usis.data.check.preflight` for that).
    """
    d = cfg.data
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use 'train' or 'val'")
    if d.kind == "synthetic":
        n = d.synthetic_train if split == "train" else d.synthetic_val
        kw = dict(n=n, height=d.height, width=d.width, seed=d.synthetic_seed, split=split)
        labels, photos = synthetic.SyntheticLabels(**kw), synthetic.SyntheticPhotos(**kw)
        if split == "train" and d.flip:
            labels, photos = RandomFlip(labels), RandomFlip(photos)
        return DataBundle(labels=labels, photos=photos,
                          num_classes=synthetic.NUM_CLASSES, dontcare=synthetic.DONTCARE,
                          class_names=list(synthetic.CLASS_NAMES), palette=[tuple(c) for c in synthetic.PALETTE],
                          kind="synthetic", split=split)
    layout = resolve_layout(cfg, split)
    if layout.problems:
        raise DatasetError(_join_problems(f"{d.kind} dataset ({split})", layout.problems))
    for w in layout.warnings:
        warnings.warn(w, DataWarning, stacklevel=2)
    geo = geometry_for(cfg, split)
    labels = LabelDataset(layout.label_paths, layout.num_classes, geo, kind=d.kind, coco_shift=layout.coco_shift,
                          skip_corrupt=d.skip_corrupt)
    photos = PhotoDataset(layout.photo_paths, geo, skip_corrupt=d.skip_corrupt)
    return DataBundle(labels=labels, photos=photos, num_classes=layout.num_classes, dontcare=layout.dontcare,
                      class_names=layout.class_names, palette=layout.palette, kind=d.kind, split=split,
                      warnings=list(layout.warnings))


def _join_problems(what: str, problems: list[str]) -> str:
    head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} with the {what}:"
    return "\n".join([head] + [f"  - {p}" for p in problems])
