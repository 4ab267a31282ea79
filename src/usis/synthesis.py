"""Labelled pairs made from label maps, each scored: the library core of ``usis synthesize``
(:mod:`usis.synthesize`, the command: folders, resuming, the manifest) and of
:meth:`usis.pipeline.USISPipeline.synthesize` (the Python API).

A pair is a generated image (exactly the uint8 image written), its label map at the image's size and its
noise seed (:class:`Pair`). :func:`synthesize_batch` makes the pairs of one batch with
:func:`usis.generate.generate_images` and scores them.

Seeds. Pair ``k`` of a label map named ``source`` has the noise seed :func:`pair_seed` ``(seed, source, k)``: a
hash, so that every map gets noise of its own and a dataset has the generator's many styles (with
``one_style``, ``seed + k`` for every map: the whole dataset in one style per k, as ``usis generate --seed``).

Score. A segmenter reads each image (the 8-bit image, so a file read back scores the same) and its
reading is compared with the input map: pixel accuracy and mIoU over the classes present in the map (the
don't-care id and ids the segmenter has no class for are not scored), both in percent (a :class:`Scorer`).
The segmenter is the checkpoint's own S (:func:`own_segmenter_scorer`: trained with G on its fakes, it
measures whether each class is still readable, not realism), or one of ``usis evaluate``'s
(:func:`pretrained_scorer`: DRN-D-105, SegFormer, TorchScript, the synthetic evaluator). :func:`select`
keeps the best fraction by mIoU, or those above a threshold.

Pixel filter (FreeMask, Yang et al., NeurIPS 2023). A segmenter trained on REAL photos gives each class its
mean cross entropy over the pixels of real labelled photos (:func:`class_mean_losses`); in a synthesized
pair, a pixel whose cross entropy exceeds ``margin`` times its class's mean is written as the ignore id
(:class:`PixelFilter`): the generator painted something there that a segmenter of real photos does not read
as the class, and a segmenter trained on the pair should not learn it. Classes without real pixels are not
filtered. Re-sampling (:func:`resample_counts`): a map's hardness is the pixel-weighted mean of its classes'
mean losses; ranked by hardness, the easiest map gets one pair and the hardest ``n``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from usis.checkpoint import load_checkpoint
from usis.config import Config
from usis.data.datasets import label_png, open_image
from usis.data.synthetic import SyntheticPaired
from usis.errors import GenerateError
from usis.generate import (
    generate_images,
    list_label_files,
    read_label_map,
    resize_nearest,
)
from usis.metrics.miou import IGNORE_INDEX, ConfusionMatrix
from usis.metrics.scoring import scoring_segmenter
from usis.metrics.synthetic_eval import SyntheticEvaluator, cache_key
from usis.metrics.synthetic_eval.fit import EVAL_SEED
from usis.nn.build import build_segmenter as build_own_segmenter
from usis.nn.generator import BaseGenerator
from usis.nn.pretrained import load_state
from usis.utils.images import to_uint8

SCORE_DIGITS = 4  # scores are stored rounded (percent): the manifest's bytes do not hang on the last float bit


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """Reads generated images into class ids and compares them with the label maps they came from.

    ``read(images, labels)``: images ``N x 3 x H x W`` in [-1, 1] and int64 label maps ``N x H x W`` (the
    model's ids) -> ``(prediction, target)``, int64 ``N x H x W`` each in the segmenter's ids, target -1
    where a pixel is not scored (don't-care, or a class the segmenter lacks).
    """

    name: str
    num_classes: int
    read: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    identity: str = ""  # what a resumed run must score with too (the name plus weights / paths)

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> list[dict[str, float] | None]:
        """Per image ``{"miou", "pixel_accuracy"}`` (percent; mIoU over the classes present in the map), or
        None when no pixel of the map is scored."""
        pred, target = self.read(images, labels)
        out: list[dict[str, float] | None] = []
        for p, t in zip(pred.cpu(), target.cpu(), strict=True):
            cm = ConfusionMatrix(self.num_classes, ignore_index=-1)
            cm.update(p, t)
            if int(cm.hist.sum()) == 0:
                out.append(None)
                continue
            out.append({"miou": round(cm.miou(over="gt"), SCORE_DIGITS),
                        "pixel_accuracy": round(cm.pixel_accuracy(), SCORE_DIGITS)})
        return out


def _ignore(labels: Tensor, dontcare: int | None) -> Tensor:
    labels = labels.long()
    return labels if dontcare is None else torch.where(labels == dontcare, -1, labels)


def own_segmenter_scorer(S: torch.nn.Module, cfg: Config, device: torch.device | str = "cpu",
                         source: str = "") -> Scorer:
    """The run's segmenter S as a scorer (eval mode; the reference's extra "fake" channel and the
    don't-care id are never predicted)."""
    S = S.to(device).eval().requires_grad_(False)
    k, dontcare, extra = cfg.model.num_classes, cfg.data.dontcare, cfg.model.s_extra_channel

    def read(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        p = next(S.parameters())
        logits = S(images.to(p.device, p.dtype)).float()
        if extra:
            logits = logits[:, 1:]
        if dontcare is not None and 0 <= dontcare < k:
            logits[:, dontcare] = -math.inf
        return logits.argmax(1), _ignore(labels, dontcare)

    return Scorer(f"S (the checkpoint's segmenter{', ' + source if source else ''})", k, read, identity="S")


def load_own_segmenter(source: str | os.PathLike, cfg: Config) -> torch.nn.Module | None:
    """The segmenter S saved with a generator: a training checkpoint holds it, an export folder does not
    (None). ``source``: the checkpoint file a generator was loaded from (``LoadedGenerator.source``)."""
    src = Path(source)
    if src.is_dir() or src.suffix == ".safetensors":
        return None
    state = load_checkpoint(src)
    if not isinstance(state, dict) or "S" not in state:
        return None
    S = build_own_segmenter(cfg)
    load_state(S, state["S"], f"{src} (S)")
    return S.eval().requires_grad_(False)


def no_segmenter_message(source: str, cfg: Config, api: bool = False) -> str:
    """Why an export cannot score its pairs, and the fix (the CLI's options, or the Python API's)."""
    if api:
        fix = "segmenter=usis.synthesis.pretrained_scorer(...), or score=False"
    else:
        kinds = "drn|segformer|torchscript" + ("|synthetic" if cfg.data.kind == "synthetic" else "")
        fix = f"--segmenter {kinds} (with --segmenter-path)"
    return (f"{source} is an exported generator without the segmenter S: the score needs a training checkpoint "
            f"(RUN/checkpoints/latest.pt, which holds S) or {fix}")


def pretrained_scorer(kind: str, path: str | None, cfg: Config, mapping: str | None = None,
                      device: torch.device | str = "cpu") -> Scorer:
    """One of ``usis evaluate``'s segmenters as a scorer (:func:`usis.metrics.scoring.scoring_segmenter`):
    ``drn``, ``segformer``, ``torchscript`` (real data, from ``path``), or ``synthetic`` (the synthetic
    preset's evaluator)."""
    net = scoring_segmenter(cfg, kind, path, mapping, device)
    if isinstance(net, SyntheticEvaluator):
        dontcare = cfg.data.dontcare

        def read_synthetic(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
            return net.segment(images), _ignore(labels, dontcare)

        return Scorer("synthetic evaluator (usis.metrics.synthetic_eval)", cfg.model.num_classes, read_synthetic,
                      identity=f"synthetic:{cache_key(cfg.data.height, cfg.data.width)}")

    def read(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        pred = net(images, size=tuple(labels.shape[-2:]))
        target = net.map_labels(labels.to(pred.device))
        return pred, torch.where(target == IGNORE_INDEX, -1, target)

    return Scorer(net.name, net.num_classes, read, identity=f"{kind}:{Path(path).expanduser().resolve()}")


# ------------------------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One synthesized pair: ``image`` uint8 ``H x W x 3`` (exactly what is written), ``label`` int64
    ``H x W`` ids at the image's size (with a pixel filter: the filtered pixels have the ignore id), its noise
    ``seed``, ``score`` (None: not scored) and ``kept``; ``pixels``: pixels per class id of the map it was made
    from (string keys, as in the manifest); with a pixel filter, ``ignored``: the fraction of each class's
    pixels filtered; with re-sampling, the map's ``hardness`` and how many pairs it got (``samples``)."""

    image: np.ndarray
    label: np.ndarray
    seed: int
    score: dict[str, float] | None = None
    kept: bool = True
    source: str = ""  # the label map it came from (a path relative to --labels, or label_map[i])
    index: int = 0  # which of the label maps given to USISPipeline.synthesize
    pixels: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, float] | None = None
    hardness: float | None = None
    samples: int | None = None

    def __post_init__(self):
        if not self.pixels:
            self.pixels = class_pixels(self.label)

    def image_pil(self) -> Image.Image:
        return Image.fromarray(self.image)

    def label_pil(self, num_classes: int) -> Image.Image:
        """The label PNG ``usis synthesize`` writes for it (:func:`usis.data.datasets.label_png`)."""
        return label_png(self.label, num_classes)


def class_pixels(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel().astype(np.int64))
    return {str(i): int(c) for i, c in enumerate(counts) if c}


@torch.no_grad()
def synthesize_batch(G: BaseGenerator, labels: Tensor, seeds: Sequence[int], scorer: Scorer | None = None,
                     local_style: bool = False) -> tuple[np.ndarray, list[dict[str, float] | None]]:
    """The pairs of one batch: uint8 images ``N x H x W x 3`` for int64 ``labels`` (``N x H x W``, the
    model's size) with noise ``seeds`` (one forward pass), and their scores (None without a scorer).
    The score reads the 8-bit image, so a file read back scores the same."""
    images = to_uint8(generate_images(G, labels, list(seeds), local_style, batch_size=max(1, len(seeds))))
    if scorer is None:
        return images, [None] * len(images)
    return images, scorer(_as_input(images, next(G.parameters()).device), labels)


def _as_input(images: np.ndarray, device: torch.device | str) -> Tensor:
    """uint8 ``N x H x W x 3`` images as a network reads them: float ``N x 3 x H x W`` in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def filter_batch(pixel_filter: PixelFilter, images: np.ndarray, labels: Tensor,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, list[dict[str, float]]]:
    """:class:`PixelFilter` on one batch of written images (uint8 ``N x H x W x 3``, as :func:`synthesize_batch`
    makes them) and their int64 maps: the filtered maps (int64 ``N x H x W``) and the ignored fractions."""
    filtered, fractions = pixel_filter(_as_input(images, device), labels)
    return filtered.numpy(), fractions


def select(scores: Sequence[dict[str, float] | None], keep: float | None = None,
           min_score: float | None = None) -> list[bool]:
    """Which pairs to keep: the best ``round(keep * N)`` by mIoU (ties: the earlier pair), or those with
    mIoU >= ``min_score``, or all. Unscored pairs (no scored pixel) rank last and fail any threshold."""
    n = len(scores)
    if keep is None and min_score is None:
        return [True] * n
    value = [(-math.inf if s is None else float(s["miou"])) for s in scores]
    if min_score is not None:
        return [v >= min_score for v in value]
    count = int(math.floor(keep * n + 0.5))
    order = sorted(range(n), key=lambda i: (-value[i], i))
    kept = [False] * n
    for i in order[:count]:
        kept[i] = True
    return kept


def check_filter(keep: float | None, min_score: float | None) -> None:
    if keep is not None and min_score is not None:
        raise GenerateError("--keep and --min-score both given: filter by one of them")
    if keep is not None and not 0 < keep <= 1:
        raise GenerateError(f"--keep {keep}: give the fraction of pairs to keep, in (0, 1] (0.7 keeps the best 70 %)")


def pair_seed(seed: int, source: str, k: int, one_style: bool = False) -> int:
    """The noise seed of pair ``k`` of the label map named ``source`` (its path relative to the label folder,
    or ``label_map[i]``): 31 bits of ``sha256(seed, source, k)``, so every map has noise of its own and a rerun
    the same; with ``one_style``, ``seed + k`` (every map in the same style)."""
    if one_style:
        return int(seed) + int(k)
    digest = hashlib.sha256(f"usis-synthesize\0{int(seed)}\0{source}\0{int(k)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


# ------------------------------------------------------------------------------------- pixel filter

FILTER_MARGIN = 1.25  # FreeMask's margin (its preprocess/filter.py)
REAL_PAIRS = 200  # real labelled photos whose pixels give the class means by default (the synthetic preset)


@dataclass
class PixelLosses:
    """A segmenter trained on real photos, as per-pixel cross entropies against label maps.

    ``loss(images, labels)``: images ``N x 3 x H x W`` in [-1, 1] and int64 maps ``N x H x W`` (the model's
    ids) -> float ``N x H x W`` cross entropies, NaN where a pixel is not scored (the don't-care id, or a
    class the segmenter has no class for)."""

    name: str
    identity: str
    loss: Callable[[Tensor, Tensor], Tensor]


def pixel_losses(kind: str, path: str | None, cfg: Config, mapping: str | None = None,
                 device: torch.device | str = "cpu") -> PixelLosses:
    """``usis evaluate``'s segmenter ``kind`` (:func:`usis.metrics.scoring.scoring_segmenter`: ``synthetic``,
    the synthetic preset's evaluator, trained on its real photos; ``drn``, ``segformer``, ``torchscript``
    from ``path``) as per-pixel losses."""
    net = scoring_segmenter(cfg, kind, path, mapping, device)
    dontcare = cfg.data.dontcare
    if isinstance(net, SyntheticEvaluator):
        def loss_synthetic(images: Tensor, labels: Tensor) -> Tensor:
            logits = net.logits(images.to(net.device))
            return _pixel_ce(logits, labels.to(logits.device), None if dontcare is None else labels == dontcare)

        return PixelLosses("synthetic evaluator (usis.metrics.synthetic_eval)",
                           f"synthetic:{cache_key(cfg.data.height, cfg.data.width)}", loss_synthetic)

    def loss(images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            logits = net.logits(images.to(net.device, torch.float32)).float()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
        target = net.map_labels(labels.to(logits.device))
        unscored = target == IGNORE_INDEX
        if dontcare is not None:
            unscored |= labels.to(logits.device) == dontcare
        return _pixel_ce(logits, torch.where(unscored, 0, target), unscored)

    return PixelLosses(net.name, f"{kind}:{_file_identity(path)}", loss)


def _file_identity(path: str) -> str:
    """A weights file or model folder as a cache key: its resolved path, and a file's size and time."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"
    return str(p)


def ignore_id(cfg: Config) -> int:
    """The label id of a filtered pixel: the label set's don't-care id (a segmenter trained on the pairs ignores
    it already), else 255 (mmsegmentation's ignore index; 65535 for label sets of more than 255 ids)."""
    if cfg.data.dontcare is not None:
        return int(cfg.data.dontcare)
    return 255 if cfg.model.num_classes <= 255 else 65535


@dataclass
class RealPairs:
    """Real labelled photos: ``batches()`` yields ``(images, labels)`` (``N x 3 x H x W`` in [-1, 1], int64
    ``N x H x W`` in the model's ids, at the model's size); ``identity`` names them (a cache key)."""

    identity: str
    count: int
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]


def synthetic_real_pairs(cfg: Config, n: int = REAL_PAIRS, batch_size: int = 50) -> RealPairs:
    """The synthetic preset's held-out real labelled photos: the evaluator's own validation renderings
    (``SyntheticPaired(split="val")`` with its seed), which it never trained on."""
    def batches():
        data = SyntheticPaired(n, cfg.data.height, cfg.data.width, seed=EVAL_SEED, split="val")
        for start in range(0, n, batch_size):
            items = [data[i] for i in range(start, min(n, start + batch_size))]
            yield torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])

    return RealPairs(f"synthetic-val:{EVAL_SEED}:{n}:{cfg.data.height}x{cfg.data.width}", n, batches)


def _pixel_ce(logits: Tensor, target: Tensor, unscored: Tensor | None) -> Tensor:
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    return ce if unscored is None else torch.where(unscored.to(ce.device), torch.nan, ce)


@torch.no_grad()
def class_mean_losses(losses: PixelLosses, batches, num_classes: int) -> list[float | None]:
    """Each class's mean cross entropy over the scored pixels of real labelled photos (``batches`` of images
    ``N x 3 x H x W`` in [-1, 1] and int64 maps ``N x H x W``); None for a class with no such pixel. Summed
    in float64 over the whole set, so the means do not hang on the batching."""
    sums = torch.zeros(num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for images, labels in batches:
        ce = losses.loss(images, labels).cpu().double()
        ok = ~torch.isnan(ce)
        ids = labels.cpu().long()[ok]
        sums.index_add_(0, ids, ce[ok])
        counts.index_add_(0, ids, torch.ones_like(ce[ok]))
    return [float(sums[c] / counts[c]) if counts[c] > 0 else None for c in range(num_classes)]


@dataclass
class PixelFilter:
    """FreeMask's pixel filter: ``losses`` (a segmenter trained on real photos), each class's mean loss on real
    pixels (``class_means``), and the ``margin``: a pixel of class c whose loss exceeds ``margin *
    class_means[c]`` becomes ``ignore_id``."""

    losses: PixelLosses
    class_means: list[float | None]
    margin: float | None = FILTER_MARGIN  # None: no pixel is filtered (the class means serve re-sampling only)
    ignore_id: int = 255

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, list[dict[str, float]]]:
        """The filtered maps (int64 ``N x H x W``, on the CPU) of int64 ``labels`` for the uint8-exact ``images``
        (``N x 3 x H x W`` in [-1, 1]), and per pair the fraction of each class's pixels ignored (string ids,
        classes present; rounded as the scores are)."""
        if self.margin is None:
            raise ValueError("this PixelFilter has no margin: it filters nothing")
        ce = self.losses.loss(images, labels).cpu()
        labels = labels.cpu().long()
        limit = torch.tensor([math.inf if m is None else self.margin * m for m in self.class_means],
                             dtype=ce.dtype)
        over = ce > limit[labels.clamp(0, len(limit) - 1)]  # NaN (unscored) is never over
        filtered = torch.where(over, self.ignore_id, labels)
        fractions = []
        for lab, ov in zip(labels, over, strict=True):
            counts = torch.bincount(lab.reshape(-1), minlength=len(limit))
            dropped = torch.bincount(lab[ov], minlength=len(limit))
            fractions.append({str(c): round(float(dropped[c] / counts[c]), SCORE_DIGITS)
                              for c in range(len(counts)) if counts[c]})
        return filtered, fractions


def hardness(pixels: dict[str, int], class_means: list[float | None]) -> float | None:
    """A map's hardness (FreeMask): the mean of its classes' mean losses, weighted by their pixel counts
    (``pixels``: class id string -> count); classes without a mean are left out. None if none has one."""
    total = weight = 0.0
    for c, count in pixels.items():
        c = int(c)
        if 0 <= c < len(class_means) and class_means[c] is not None:
            total += count * class_means[c]
            weight += count
    return total / weight if weight else None


def resample_counts(hardnesses: Sequence[float | None], n: int) -> list[int]:
    """How many pairs each map gets: ranked by hardness (rank 0 the easiest; ties by order, maps without a
    hardness first), ``min(1 + round(rank / N * n), n)`` (FreeMask's rule with its 20 replaced by ``n``): one
    for the easiest, ``n`` for the hardest, about ``(n + 1) / 2`` on average."""
    if n < 1:
        raise GenerateError(f"--n {n}: make at least one image per label map")
    order = sorted(range(len(hardnesses)),
                   key=lambda i: (-math.inf if hardnesses[i] is None else hardnesses[i], i))
    counts = [1] * len(hardnesses)
    for rank, i in enumerate(order):
        counts[i] = min(1 + int(math.floor(rank / len(order) * n + 0.5)), n)
    return counts


# ----------------------------------------------------------------------------------- real labelled photos


def folder_real_pairs(photos: str | os.PathLike, labels: str | os.PathLike, cfg: Config,
                      batch_size: int = 16) -> RealPairs:
    """Real labelled photos from a folder of photos and a folder of label maps (matched by their path without
    the extension; read as ``usis generate`` reads label maps), at the model's size (photos bicubic, maps
    nearest neighbour). Every map is checked, and every pair matched, here."""
    pdir, ldir = Path(photos).expanduser(), Path(labels).expanduser()
    if not pdir.is_dir():
        raise GenerateError(f"--real-photos {pdir}: no such folder; pass the folder of real photos whose label maps "
                            "--real-labels holds")
    label_files = list_label_files(ldir)
    by_stem = {p.relative_to(pdir).with_suffix("").as_posix(): p for p in sorted(pdir.rglob("*"))
               if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")}
    pairs = []
    for lab in label_files:
        stem = lab.relative_to(ldir).with_suffix("").as_posix() if ldir.is_dir() else lab.stem
        if stem not in by_stem:
            raise GenerateError(f"--real-labels {lab}: no photo {stem}.* under --real-photos {pdir}; each label map "
                                "needs its photo (same relative path, any image extension)")
        read_label_map(lab, cfg)  # checked now: a bad id fails before anything is generated
        pairs.append((by_stem[stem], lab))
    height, width = cfg.data.height, cfg.data.width

    def batches():
        for start in range(0, len(pairs), batch_size):
            imgs, labs = [], []
            for photo, lab in pairs[start:start + batch_size]:
                with open_image(str(photo)) as im:
                    rgb = np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
                imgs.append(torch.from_numpy(rgb).permute(2, 0, 1) / 127.5 - 1.0)
                labs.append(torch.from_numpy(resize_nearest(read_label_map(lab, cfg), height, width)))
            yield torch.stack(imgs), torch.stack(labs)

    return RealPairs(f"folders:{pdir.resolve()}|{ldir.resolve()}:{len(pairs)}", len(pairs), batches)


def real_statistics(cfg: Config, device: torch.device | str = "cpu", segmenter: str | None = None,
                    segmenter_path: str | None = None, segmenter_mapping: str | None = None,
                    real_photos: str | None = None, real_labels: str | None = None) -> tuple[PixelLosses, RealPairs]:
    """What the pixel filter and re-sampling measure with, for a model of run config ``cfg``: a segmenter
    trained on real photos (``segmenter``: ``synthetic``, the synthetic preset's default, or ``drn`` /
    ``segformer`` / ``torchscript`` with its path) and real labelled photos (``real_photos`` + ``real_labels``
    folders; the synthetic preset's held-out renderings by default)."""
    synthetic = cfg.data.kind == "synthetic"
    kind = (segmenter or ("synthetic" if synthetic else "")).lower()
    if not kind:
        raise GenerateError("--pixel-filter / --resample need a segmenter trained on real photos: pass "
                            "--filter-segmenter drn|segformer|torchscript with --filter-segmenter-path")
    if kind in ("own", "none"):
        raise GenerateError(f"--filter-segmenter {kind}: the filter needs a segmenter trained on REAL photos (the "
                            "checkpoint's S learned from generated images only); use "
                            + ("synthetic, " if synthetic else "") + "drn, segformer or torchscript")
    if (real_photos is None) != (real_labels is None):
        raise GenerateError("--real-photos and --real-labels go together: a folder of real photos and one of their "
                            "label maps")
    if real_photos is None:
        if not synthetic:
            raise GenerateError("--pixel-filter / --resample need real labelled photos for the class means: pass "
                                "--real-photos DIR --real-labels DIR (e.g. a few hundred of the train split's pairs)")
        real = synthetic_real_pairs(cfg)
    else:
        real = folder_real_pairs(real_photos, real_labels, cfg)
    return pixel_losses(kind, segmenter_path, cfg, segmenter_mapping, device), real
