"""The measuring tools of an evaluation, chosen for its dataset: here and nowhere else does the synthetic
benchmark differ from real data.

* mIoU: a :class:`MiouScorer` sees every generated batch with its label maps and reports at the end.
  Real data: a pretrained segmenter (DRN-D-105, SegFormer, TorchScript) and a confusion matrix; the
  synthetic preset: its own evaluator network, which also reports the real-photo ceiling.
* Feature distances: Inception features for FID / KID; the synthetic evaluator's pooled features for sFID.
  All go through :func:`usis.metrics.fid.compute_distances` in one pass over the generated images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from usis.config import Config
from usis.errors import EvaluateError
from usis.metrics.fid import build_inception
from usis.metrics.miou import ConfusionMatrix
from usis.metrics.segmenters import Segmenter, build_segmenter, segmentation_confusion
from usis.metrics.synthetic_eval import SyntheticEvaluator


class MiouScorer(Protocol):
    name: str

    def update(self, fake: Tensor, labels: Tensor) -> None:
        """Score one batch of generated images (``N x 3 x H x W`` in [-1, 1]) against their label maps."""

    def results(self) -> tuple[dict[str, float], list[tuple[str, float]]]:
        """``({"miou": ..., ...}, [(class name, IoU %), ...])`` over every batch seen."""


class PretrainedMiou:
    """mIoU and pixel accuracy of a pretrained segmenter's predictions, accumulated in a confusion matrix."""

    def __init__(self, seg: Segmenter):
        self.seg, self.name = seg, seg.name
        self.cm = ConfusionMatrix(seg.num_classes, seg.ignore_index)

    def update(self, fake: Tensor, labels: Tensor) -> None:
        segmentation_confusion(self.seg, [(fake, labels)], self.cm)

    def results(self) -> tuple[dict[str, float], list[tuple[str, float]]]:
        return {"miou": self.cm.miou(), "pixel_accuracy": self.cm.pixel_accuracy()}, self.cm.table(self.seg.class_names)


class SyntheticMiou:
    """The synthetic evaluator's mIoU (and its ceiling on real photos), over all the batches seen."""

    name = "synthetic evaluator (usis.metrics.synthetic_eval)"

    def __init__(self, ev: SyntheticEvaluator):
        self.ev = ev
        self.fake: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, fake: Tensor, labels: Tensor) -> None:
        self.fake.append(fake)
        self.labels.append(labels)

    def results(self) -> tuple[dict[str, float], list[tuple[str, float]]]:
        fake, labels = torch.cat(self.fake), torch.cat(self.labels)
        return ({"miou": self.ev.miou(fake, labels), "miou_ceiling": self.ev.ceiling()},
                list(self.ev.per_class_iou(fake, labels).items()))


@dataclass
class Tools:
    """What an evaluation measures with: feature extractors by distance name (``fid`` also serves ``kid``),
    the mIoU scorer, and what to record about them in the report."""

    extractors: dict[str, nn.Module] = field(default_factory=dict)
    scorer: MiouScorer | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def scoring_segmenter(cfg: Config, kind: str, path: str | None = None, mapping: str | None = None,
                      device: torch.device | str = "cpu") -> SyntheticEvaluator | Segmenter:
    """The network that reads generated images back into class ids, to score them against their label maps
    (``usis evaluate``'s mIoU, ``usis synthesize``'s per-pair score).

    ``kind``: ``synthetic``, the synthetic preset's own evaluator at the run's image size (trained once,
    cached under ``eval.cache_dir``), only for a model of that preset; or ``drn`` / ``segformer`` /
    ``torchscript``, a pretrained segmenter loaded from ``path`` (:func:`build_segmenter`; ``mapping``:
    the torchscript class mapping). A missing path or a wrong kind raises, naming the option to pass.
    """
    if kind == "synthetic":
        if cfg.data.kind != "synthetic":
            raise EvaluateError(f"--segmenter synthetic: the synthetic evaluator reads only the synthetic preset's "
                                f"scenes; this model was trained on {cfg.data.kind} (use drn, segformer or "
                                "torchscript with --segmenter-path, or the checkpoint's own S)")
        return SyntheticEvaluator.load_or_train(cfg.data.height, cfg.data.width, cache_dir=cfg.eval.cache_dir or None,
                                                device=device)
    if not path:
        raise EvaluateError(f"--segmenter {kind} needs --segmenter-path (the weights file, model folder or "
                            "TorchScript file)")
    return build_segmenter(kind, path, cfg.data.kind, mapping, device)


def evaluation_tools(cfg: Config, wanted: list[str], device: torch.device, segmenter: str | None = None,
                     segmenter_path: str | None = None, segmenter_mapping: str | None = None) -> Tools:
    """Build (and load the weights of) everything ``wanted`` needs, before any image is generated: a missing
    weights file fails here, with a message that says which file to pass. The synthetic preset is always
    scored by its own evaluator (``segmenter`` is not used); real data by ``segmenter``."""
    tools = Tools()
    if "fid" in wanted or "kid" in wanted:
        tools.extractors["fid"] = build_inception(cfg.eval.fid_weights or None).to(device)
        tools.meta["fid_extractor"] = tools.extractors["fid"].extractor_id
    kind = cfg.data.kind
    if kind == "synthetic" and ("miou" in wanted or "sfid" in wanted):
        ev = scoring_segmenter(cfg, "synthetic", device=device)
        if "miou" in wanted:
            tools.scorer = SyntheticMiou(ev)
            tools.meta["segmenter"] = SyntheticMiou.name
        if "sfid" in wanted:
            tools.extractors["sfid"] = ev.feature_extractor().to(device)
    elif "miou" in wanted:
        if not segmenter:
            hint = ("--segmenter drn --segmenter-path drn-d-105_ms_cityscapes.pth" if kind in
                    ("cityscapes", "gta2cityscapes") else "--segmenter segformer --segmenter-path MODEL_DIR_OR_NAME, "
                    "or --segmenter torchscript --segmenter-path MODEL.pt --segmenter-mapping MAP.json")
            raise EvaluateError(f"mIoU needs a pretrained segmentation network: pass {hint} (or drop miou from "
                                "--metrics)")
        tools.scorer = PretrainedMiou(scoring_segmenter(cfg, segmenter, segmenter_path, segmenter_mapping, device))
        tools.meta["segmenter"] = tools.scorer.name
    return tools
