"""Labelled pairs made from label maps, each scored: the library core of ``usis synthesize``
(:mod:`usis.synthesize`, the command: folders, resuming, the manifest) and of
:meth:`usis.pipeline.USISPipeline.synthesize` (the Python API).

A pair is a generated image (exactly the uint8 image written), its label map at the image's size and its
noise seed (:class:`Pair`). :func:`synthesize_batch` makes the pairs of one batch with
:func:`usis.generate.generate_images` and scores them.

Score. A segmenter reads each image (the 8-bit image, so a file read back scores the same) and its
reading is compared with the input map: pixel accuracy and mIoU over the classes present in the map (the
don't-care id and ids the segmenter has no class for are not scored), both in percent (a :class:`Scorer`).
The segmenter is the checkpoint's own S (:func:`own_segmenter_scorer`: trained with G on its fakes, it
measures whether each class is still readable, not realism), or one of ``usis evaluate``'s
(:func:`pretrained_scorer`: DRN-D-105, SegFormer, TorchScript, the synthetic evaluator). :func:`select`
keeps the best fraction by mIoU, or those above a threshold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from usis.checkpoint import load_checkpoint
from usis.config import Config
from usis.data.datasets import label_png
from usis.errors import GenerateError
from usis.generate import generate_images
from usis.metrics.miou import IGNORE_INDEX, ConfusionMatrix
from usis.metrics.scoring import scoring_segmenter
from usis.metrics.synthetic_eval import SyntheticEvaluator, cache_key
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
    ``H x W`` ids at the image's size, its noise ``seed``, ``score`` (None: not scored) and ``kept``."""

    image: np.ndarray
    label: np.ndarray
    seed: int
    score: dict[str, float] | None = None
    kept: bool = True
    source: str = ""  # the label map it came from (a path relative to --labels, or label_map[i])
    index: int = 0  # which of the label maps given to USISPipeline.synthesize

    @property
    def pixels(self) -> dict[str, int]:
        """Pixels per class id present (string keys, as in the manifest)."""
        return class_pixels(self.label)

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
    dev = next(G.parameters()).device
    x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, scorer(x, labels)


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
