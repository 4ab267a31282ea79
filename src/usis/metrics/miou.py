"""Confusion-matrix mIoU and label-id mappings for segmentation-based evaluation.

The SPADE protocol segments the generated images with a pretrained network and compares the
prediction with the label map the image was generated from. The segmenter usually predicts a
different label set than the dataset uses (Cityscapes: 35 ``labelIds`` in the data, 19 ``trainIds``
predicted), so the label maps are first sent through a lookup table (:func:`map_labels`) in which
every id without a counterpart becomes :data:`IGNORE_INDEX` (255) and is not scored.

Averaging. :meth:`ConfusionMatrix.miou` follows the reference that the paper's Cityscapes numbers
come from (``segment.py`` of fyu/drn, run by the USIS authors on their generated images): the
confusion matrix is accumulated over the whole evaluation set, IoU_c = TP / (TP + FP + FN), and the
mean is taken over the classes whose union is non-empty (``numpy.nanmean``), i.e. a class that is
predicted but never present in the ground truth counts with IoU 0. ``over="gt"`` averages only over
the classes present in the ground truth instead (never penalises hallucinated classes). On full
validation sets, where every class occurs, both agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

IGNORE_INDEX = 255

#: Official cityscapesScripts ``labelId -> trainId`` table (the 19 evaluated classes).
#: Every other label id (including this project's id 34 = license plate) is ignored.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

#: Names of the 19 Cityscapes ``trainIds`` in order.
CITYSCAPES_TRAIN_NAMES: list[str] = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
]


def label_table(mapping: Mapping[int, int], size: int = 256) -> Tensor:
    """A lookup table (int64, length ``size``) from dataset ids to segmenter ids; unmapped -> 255."""
    table = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
    for src, dst in mapping.items():
        if not 0 <= int(src) < size:
            raise ValueError(f"label id {src} is outside the table range [0, {size})")
        table[int(src)] = int(dst)
    return table


def cityscapes_label_table() -> Tensor:
    """The 35 -> 19 (``labelId -> trainId``) table of :data:`CITYSCAPES_ID_TO_TRAINID`."""
    return label_table(CITYSCAPES_ID_TO_TRAINID)


def map_labels(labels: Tensor, table: Tensor | Mapping[int, int]) -> Tensor:
    """Map int label ids (any shape) through ``table``; ids outside the table become 255.

    ``table`` is a 1-D int64 lookup tensor (see :func:`label_table`) or a ``{src: dst}`` dict.
    """
    if not isinstance(table, Tensor):
        size = max([256, *(int(k) + 1 for k in table)])
        table = label_table(table, size)
    table = table.to(labels.device)
    labels = labels.long()
    inside = (labels >= 0) & (labels < table.numel())
    out = table[labels.clamp(0, table.numel() - 1)]
    return torch.where(inside, out, torch.full_like(out, IGNORE_INDEX))


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: ground truth, cols: prediction).

    Pixels whose target equals ``ignore_index`` (or lies outside ``[0, num_classes)``) are skipped.
    The counts live on the CPU as int64, so results do not depend on the device the inputs came from.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.hist = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are int tensors of equal shape (e.g. N x H x W)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < n)
        pred, target = pred[valid], target[valid]
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n):
            raise ValueError(f"predicted class ids must lie in [0, {n}); got [{int(pred.min())}, {int(pred.max())}]")
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.hist += counts.reshape(n, n).cpu()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. gathered from other processes)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self.hist += other.hist.cpu()
        return self

    def reset(self) -> None:
        self.hist.zero_()

    def iou(self) -> Tensor:
        """Per-class IoU in [0, 1] (float64); NaN for classes absent from both prediction and ground truth."""
        h = self.hist.double()
        tp = h.diag()
        union = h.sum(0) + h.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))

    def miou(self, over: str = "union") -> float:
        """Mean IoU in percent (see the module docstring for ``over``: ``"union"`` or ``"gt"``)."""
        iou = self.iou()
        if over == "union":
            keep = ~torch.isnan(iou)
        elif over == "gt":
            keep = self.hist.sum(1) > 0
        else:
            raise ValueError(f"over={over!r}: choose 'union' or 'gt'")
        if not bool(keep.any()):
            return math.nan
        return float(iou[keep].mean()) * 100.0

    def pixel_accuracy(self) -> float:
        """Fraction of scored pixels predicted correctly, in percent."""
        total = int(self.hist.sum())
        return math.nan if total == 0 else 100.0 * int(self.hist.diag().sum()) / total

    def table(self, class_names: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """``[(class name, IoU in percent or NaN), ...]`` in class order."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        return [(name, float(v) * 100.0) for name, v in zip(names, self.iou().tolist(), strict=True)]
