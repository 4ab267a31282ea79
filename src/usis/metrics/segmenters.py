"""Pluggable pretrained segmenters for the mIoU of generated images.

A :class:`Segmenter` turns images in [-1, 1] (float N x 3 x H x W) into class ids (int64 N x H x W)
of its own label set, and knows how to map the dataset's label ids onto that set
(:meth:`Segmenter.map_labels`; ids without a counterpart become 255 and are not scored).

Implementations (:func:`build_segmenter`):

* ``drn``: DRN-D-105 trained on Cityscapes (the SPADE / USIS protocol), 35 label ids -> 19 train ids.
* ``segformer``: a Hugging Face ``SegformerForSemanticSegmentation`` checkpoint (folder or hub name;
  needs ``pip install usis[segformer]``). ADE20K: dataset ids 1..150 -> 0..149, 0 ("other") ignored;
  Cityscapes: 35 -> 19. (The paper used UperNet-101 for ADE20K and DeepLabV2 for COCO-Stuff; those
  numbers are therefore not directly comparable with a SegFormer mIoU.)
* ``torchscript``: any ``torch.jit.load``-able model plus a JSON mapping file
  ``{"num_classes": K, "map": {"<dataset id>": <segmenter id>, ...}, "names": [...]}`` with optional
  ``"input": "minus1_1" | "0_1" | "imagenet"`` (default ``"0_1"``) or explicit ``"mean"`` / ``"std"``
  lists (applied to [0, 1] RGB). The model may return logits (N x K x h x w; a tuple/list's first item
  or a dict's ``"out"`` entry is used) or class ids (N x h x w); both are resized to the label size.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usis.metrics.drn import DRN_CITYSCAPES_MEAN, DRN_CITYSCAPES_STD, load_drn_d_105
from usis.metrics.fid import MetricsError
from usis.metrics.miou import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_TRAIN_NAMES,
    IGNORE_INDEX,
    ConfusionMatrix,
    label_table,
    map_labels,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_LIKE = ("cityscapes", "gta2cityscapes")


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


class Segmenter:
    """Base class: subclasses implement :meth:`logits` (or override :meth:`__call__`).

    Attributes: ``name``, ``num_classes``, ``class_names`` (length ``num_classes``), ``table``
    (int64 lookup tensor dataset id -> segmenter id, 255 = ignore), ``ignore_index`` (255).
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, name: str, model: nn.Module, num_classes: int, class_names: Sequence[str],
                 table: Tensor) -> None:
        if len(class_names) != num_classes:
            raise MetricsError(f"{name}: {len(class_names)} class names for {num_classes} classes")
        self.name = name
        self.model = model.eval()
        self.num_classes = int(num_classes)
        self.class_names = list(class_names)
        self.table = table.long()

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    def to(self, device: str | torch.device) -> Segmenter:
        self.model.to(device)
        return self

    def logits(self, images: Tensor) -> Tensor:
        """Class scores N x K x h x w for images in [-1, 1] on :attr:`device`."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Images in [-1, 1] (N x 3 x H x W) -> class ids (int64, N x size or N x H x W)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got {tuple(images.shape)}")
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        scores = self.logits(images.to(self.device, torch.float32))
        if scores.shape[-2:] != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return scores.argmax(1)

    def map_labels(self, labels: Tensor) -> Tensor:
        """Dataset label ids -> this segmenter's class ids (255 where there is none)."""
        return map_labels(labels, self.table)


class DRNSegmenter(Segmenter):
    """DRN-D-105 on Cityscapes' 19 train ids (see :mod:`usis.metrics.drn`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__("drn-d-105", model, 19, CITYSCAPES_TRAIN_NAMES, label_table(CITYSCAPES_ID_TO_TRAINID))

    def logits(self, images: Tensor) -> Tensor:
        mean = torch.tensor(DRN_CITYSCAPES_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(DRN_CITYSCAPES_STD, device=images.device).view(1, 3, 1, 1)
        return self.model(((images.clamp(-1, 1) + 1) / 2 - mean) / std)


class SegFormerSegmenter(Segmenter):
    """A Hugging Face SegFormer; images normalised with the ImageNet mean/std, run at their own size."""

    def logits(self, images: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return self.model(pixel_values=((images.clamp(-1, 1) + 1) / 2 - mean) / std).logits


class TorchScriptSegmenter(Segmenter):
    """Any TorchScript segmentation model with a JSON class-mapping file."""

    def __init__(self, name: str, model: nn.Module, num_classes: int, class_names: Sequence[str],
                 table: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(name, model, num_classes, class_names, table)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _run(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        out = self.model(((images.clamp(-1, 1) + 1) / 2 - mean) / std)
        if isinstance(out, dict):
            out = out["out"] if "out" in out else next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise MetricsError(f"{self.name}: the model returned {type(out).__name__}, not a tensor")
        return out

    @torch.no_grad()
    def __call__(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got {tuple(images.shape)}")
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        out = self._run(images.to(self.device, torch.float32))
        if out.dim() == 3 and not out.is_floating_point():  # class ids
            if tuple(out.shape[-2:]) != size:
                out = F.interpolate(out[:, None].float(), size=size, mode="nearest")[:, 0]
            return out.long()
        if out.dim() != 4 or out.shape[1] != self.num_classes:
            raise MetricsError(f"{self.name}: expected logits N x {self.num_classes} x h x w or class ids "
                               f"N x h x w, got shape {tuple(out.shape)}")
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
        return out.argmax(1)

    def logits(self, images: Tensor) -> Tensor:
        return self._run(images)


# ------------------------------------------------------------------------------------- builders


def _dataset_table(dataset: str, num_classes: int, who: str) -> Tensor:
    if dataset in CITYSCAPES_LIKE:
        if num_classes != 19:
            raise MetricsError(f"{who} predicts {num_classes} classes; Cityscapes evaluation needs a model "
                               "trained on the 19 Cityscapes train ids")
        return label_table(CITYSCAPES_ID_TO_TRAINID)
    if dataset == "ade20k":
        if num_classes != 150:
            raise MetricsError(f"{who} predicts {num_classes} classes; ADE20K evaluation needs 150")
        return label_table({i: i - 1 for i in range(1, 151)})
    raise MetricsError(f"{who}: no built-in label mapping for dataset {dataset!r}; use kind 'torchscript' "
                       "with a mapping file")


def load_class_mapping(path: str | Path) -> dict:
    """Read and check a mapping JSON; returns ``num_classes``, ``table``, ``names``, ``mean``, ``std``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetricsError(f"class-mapping file not found: {path} (JSON with num_classes, map, names)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MetricsError(f"cannot read the class-mapping file {path}: {e}") from e
    if not isinstance(data, dict) or "num_classes" not in data or "map" not in data:
        raise MetricsError(f"{path}: expected a JSON object with keys num_classes, map (and optionally names)")
    k = int(data["num_classes"])
    try:
        mapping = {int(src): int(dst) for src, dst in dict(data["map"]).items()}
    except (TypeError, ValueError) as e:
        raise MetricsError(f"{path}: 'map' must map dataset ids to segmenter ids (integers): {e}") from e
    bad = {s: d for s, d in mapping.items() if not (0 <= d < k or d == IGNORE_INDEX) or s < 0}
    if bad:
        raise MetricsError(f"{path}: mapping entries outside [0, {k}) (or 255 = ignore): {dict(list(bad.items())[:5])}")
    names = [str(n) for n in data.get("names") or [f"class_{i}" for i in range(k)]]
    if len(names) != k:
        raise MetricsError(f"{path}: {len(names)} names for num_classes={k}")
    preset = str(data.get("input", "0_1"))
    presets = {"0_1": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "minus1_1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
               "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
    if preset not in presets:
        raise MetricsError(f"{path}: input={preset!r}; choose one of {', '.join(presets)}")
    mean, std = presets[preset]
    mean, std = data.get("mean", mean), data.get("std", std)
    size = max([256, *(s + 1 for s in mapping)])
    return {"num_classes": k, "table": label_table(mapping, size), "names": names, "mean": mean, "std": std}


def build_segmenter(kind: str, path: str, dataset: str, mapping: str | None = None,
                    device: str | torch.device = "cpu") -> Segmenter:
    """Build a segmenter: ``kind`` in ``drn``, ``segformer``, ``torchscript``.

    ``path``: the weights file (drn), a local folder or hub name (segformer), or the TorchScript file.
    ``mapping``: the JSON mapping for ``torchscript`` (default: ``path`` with suffix ``.json``).
    """
    kind = kind.lower()
    dataset = dataset.lower()
    if kind in ("drn", "drn-d-105", "drn_d_105"):
        if dataset not in CITYSCAPES_LIKE:
            raise MetricsError(f"DRN-D-105 segments Cityscapes classes; for dataset {dataset!r} use 'segformer' "
                               "or 'torchscript'")

        return DRNSegmenter(load_drn_d_105(path)).to(device)
    if kind == "segformer":
        try:
            from transformers import SegformerForSemanticSegmentation  # lazy: an optional dependency
        except ImportError as e:
            raise MetricsError("the SegFormer segmenter needs Hugging Face transformers: "
                               "pip install usis[segformer]") from e
        try:
            model = SegformerForSemanticSegmentation.from_pretrained(path)
        except Exception as e:
            raise MetricsError(f"cannot load SegFormer from {path!r}: {e}") from e
        k = int(model.config.num_labels)
        id2label = getattr(model.config, "id2label", None) or {}
        names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(k)]
        table = _dataset_table(dataset, k, f"SegFormer {path!r}")
        return SegFormerSegmenter(f"segformer:{path}", model, k, names, table).to(device)
    if kind in ("torchscript", "jit"):
        mapping_path = Path(mapping) if mapping else Path(path).with_suffix(".json")
        info = load_class_mapping(mapping_path)
        if not Path(path).expanduser().is_file():
            raise MetricsError(f"TorchScript segmenter not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
                model = torch.jit.load(str(Path(path).expanduser()), map_location="cpu")
        except Exception as e:
            raise MetricsError(f"cannot load the TorchScript model {path}: {e}") from e
        return TorchScriptSegmenter(f"torchscript:{Path(path).name}", model, info["num_classes"], info["names"],
                                    info["table"], info["mean"], info["std"]).to(device)
    raise MetricsError(f"unknown segmenter kind {kind!r}; choose drn, segformer or torchscript")


def segmentation_confusion(segmenter: Segmenter, batches: Iterable[tuple[Tensor, Tensor]],
                           cm: ConfusionMatrix | None = None) -> ConfusionMatrix:
    """Accumulate (images in [-1, 1], dataset label ids N x H x W) pairs; predictions at the label size."""
    cm = cm or ConfusionMatrix(segmenter.num_classes, segmenter.ignore_index)
    for images, labels in batches:
        pred = segmenter(images, size=tuple(labels.shape[-2:]))
        cm.update(pred, segmenter.map_labels(labels.to(pred.device)))
    return cm
