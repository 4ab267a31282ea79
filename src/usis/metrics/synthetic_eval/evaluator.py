"""The synthetic evaluator's metrics: mIoU, the real-photo ceiling and sFID. See
:mod:`usis.metrics.synthetic_eval`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from usis.data.synthetic import (
    CLASS_NAMES,
    DONTCARE,
    NUM_CLASSES,
    SyntheticPaired,
    check_size,
)
from usis.errors import UsisWarning
from usis.metrics.fid import compute_fid
from usis.metrics.miou import ConfusionMatrix
from usis.metrics.synthetic_eval.fit import (
    EVAL_SEED,
    _net_for,
    cache_key,
    cache_path,
    shipped_path,
    train_evaluator,
)
from usis.metrics.synthetic_eval.net import EvalNet, PooledFeatures
from usis.utils.io import atomic_write

CEILING_N = 200


def _check_images(images: Tensor, height: int, width: int, what: str = "images") -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a float tensor N x 3 x H x W in [-1, 1]; got {shape}")
    if tuple(images.shape[-2:]) != (height, width):
        raise ValueError(
            f"{what} are {images.shape[-2]}x{images.shape[-1]} but this evaluator was trained for "
            f"{height}x{width}; load one for that size with SyntheticEvaluator.load_or_train(height, width)"
        )
    if not images.is_floating_point():
        raise ValueError(f"{what} must be float in [-1, 1]; got dtype {images.dtype}")
    return images


def _named_iou(cm) -> dict[str, float]:
    """IoU in percent per real class name from a confusion matrix (don't-care left out)."""
    iou = cm.iou()
    return {CLASS_NAMES[c]: float(iou[c]) * 100.0 for c in range(NUM_CLASSES) if c != DONTCARE}


class SyntheticEvaluator:
    """mIoU, its real-photo ceiling and sFID for the synthetic preset (see the module docstring)."""

    def __init__(
        self,
        net: EvalNet,
        height: int,
        width: int,
        device: str | torch.device = "cpu",
        path: Path | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.height, self.width = int(height), int(width)
        self.path = path
        self.meta = dict(meta or {})
        self._ceiling: dict[int, float] = {}
        if path is not None:
            side = self._ceiling_file()
            try:
                self._ceiling = {int(k): float(v) for k, v in json.loads(side.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._ceiling = {}

    # ---------------------------------------------------------------------------------------------- #
    @classmethod
    def load_or_train(
        cls,
        height: int = 64,
        width: int = 128,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> SyntheticEvaluator:
        """Load the cached evaluator for this image size; else the weights shipped with usis for it (the synthetic
        preset's 64x128), copied into the cache; else train one (about a minute on CPU) and cache it."""
        check_size(height, width)
        path = cache_path(height, width, cache_dir)
        record = None
        if path.exists():
            try:
                record = torch.load(path, map_location="cpu", weights_only=True)
                net = _net_for(record)
            except Exception as e:  # corrupt or stale file: retrain and overwrite
                warnings.warn(f"ignoring unreadable synthetic evaluator cache {path} ({e}); replacing it", UsisWarning, stacklevel=2)
                record = None
        if record is None:
            shipped = shipped_path(height, width)
            has_shipped = shipped.is_file()
            if has_shipped:  # the weights every machine shares (see fit.SHIPPED_DIR)
                record = torch.load(shipped, map_location="cpu", weights_only=True)
            else:
                record = train_evaluator(height, width, progress=progress)
            try:
                atomic_write(path, lambda f: torch.save(record, f))
                path.with_suffix(".ceiling.json").unlink(missing_ok=True)  # ceilings of older weights
            except OSError as e:
                warnings.warn(
                    f"could not cache the synthetic evaluator in {path.parent} ({e}); it will be "
                    f"{'read from usis' if has_shipped else 'retrained'} next time. Set $USIS_CACHE or pass "
                    f"cache_dir to a writable folder.",
                    stacklevel=2,
                )
                path = None
            net = _net_for(record)
        return cls(net, height, width, device=device, path=path, meta=record.get("meta"))

    def _ceiling_file(self) -> Path:
        assert self.path is not None
        return self.path.with_suffix(".ceiling.json")

    # ---------------------------------------------------------------------------------------------- #
    def _batches(self, images: Tensor, batch_size: int):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device, torch.float32).clamp(-1, 1)
            yield x.contiguous(memory_format=torch.channels_last)

    def _forward(self, x: Tensor) -> Tensor:
        # Test-time augmentation: average with the mirrored image (about +1 mIoU on real photos).
        return 0.5 * (self.net(x) + self.net(x.flip(-1)).flip(-1))

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Class logits ``N x NUM_CLASSES x H x W`` (float, on the evaluator's device), flip-averaged."""
        _check_images(images, self.height, self.width)
        out = [self._forward(x) for x in self._batches(images, batch_size)]
        return torch.cat(out) if out else torch.empty(0, NUM_CLASSES, self.height, self.width, device=self.device)

    @torch.no_grad()
    def segment(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Class ids (int64 ``N x H x W``, never the don't-care id) for images ``N x 3 x H x W`` in [-1, 1].

        Returned on the images' device."""
        _check_images(images, self.height, self.width)
        out = []
        for x in self._batches(images, batch_size):
            logits = self._forward(x)
            logits[:, DONTCARE] = -math.inf
            out.append(logits.argmax(1).to(images.device))
        if not out:
            return torch.empty(0, self.height, self.width, dtype=torch.long, device=images.device)
        return torch.cat(out)

    def confusion(self, images: Tensor, labels: Tensor, batch_size: int = 64) -> ConfusionMatrix:
        """Confusion matrix of predictions vs ``labels`` (int ``N x H x W``), don't-care pixels skipped."""
        _check_images(images, self.height, self.width)
        if labels.ndim != 3 or tuple(labels.shape) != (images.shape[0], images.shape[2], images.shape[3]):
            raise ValueError(
                f"labels must be N x H x W matching the images {tuple(images.shape)}; got {tuple(labels.shape)}"
            )
        if labels.is_floating_point():
            raise ValueError(f"labels must be integer class ids; got dtype {labels.dtype}")
        cm = ConfusionMatrix(NUM_CLASSES, ignore_index=DONTCARE)
        for i in range(0, len(images), batch_size):
            cm.update(self.segment(images[i : i + batch_size], batch_size).cpu(), labels[i : i + batch_size].cpu())
        return cm

    def miou(self, images: Tensor, labels: Tensor) -> float:
        """mIoU in percent (0..100) of the segmented ``images`` against ``labels`` over the whole set."""
        return self.confusion(images, labels).miou(over="union")

    def per_class_iou(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """IoU in percent per real class name (NaN where a class is in neither prediction nor labels)."""
        return _named_iou(self.confusion(images, labels))

    def feature_extractor(self) -> PooledFeatures:
        """The pooled features as an extractor for :mod:`usis.metrics.fid`; its id names these very weights (a
        retrained evaluator never meets real statistics cached with another one)."""
        if not hasattr(self, "_weights_digest"):
            h = hashlib.sha256()
            for k, v in sorted(self.net.state_dict().items()):
                h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
            self._weights_digest = h.hexdigest()[:12]
        return PooledFeatures(self.net, f"synthetic-eval:{cache_key(self.height, self.width)}:{self._weights_digest}")

    def sfid(self, fake_images: Tensor, real_images: Tensor, batch_size: int = 128) -> float:
        """Frechet distance of the evaluator's pooled features (both sets ``N x 3 x H x W`` in [-1, 1], N >= 2),
        computed by :func:`usis.metrics.fid.compute_fid` like FID."""
        _check_images(fake_images, self.height, self.width, "fake images")
        _check_images(real_images, self.height, self.width, "real images")
        if len(fake_images) < 2 or len(real_images) < 2:
            raise ValueError("sFID needs at least 2 fake and 2 real images")

        def batches(images: Tensor):
            for i in range(0, len(images), batch_size):
                yield images[i:i + batch_size]

        extractor = self.feature_extractor().to(self.device)
        return float(compute_fid(batches(fake_images), lambda: batches(real_images), None, None, extractor)["fid"])

    def ceiling(self, n: int = CEILING_N) -> float:
        """mIoU (percent) on ``n`` held-out REAL photos (``SyntheticPaired(split="val")``) vs their layouts."""
        n = int(n)
        if n not in self._ceiling:
            data = SyntheticPaired(n, self.height, self.width, seed=EVAL_SEED, split="val")
            items = [data[i] for i in range(n)]
            images = torch.stack([it["image"] for it in items])
            labels = torch.stack([it["label"] for it in items])
            self._ceiling[n] = self.miou(images, labels)
            if self.path is not None:
                text = json.dumps({str(k): v for k, v in sorted(self._ceiling.items())})
                try:
                    atomic_write(self._ceiling_file(), text)
                except OSError as e:  # read-only cache: keep the value in memory only
                    warnings.warn(f"could not store the evaluator ceiling next to {self.path}: {e}", UsisWarning, stacklevel=2)
        return self._ceiling[n]

    def evaluate(self, fake_images: Tensor, labels: Tensor, real_images: Tensor) -> dict[str, float]:
        """``{"miou", "miou_ceiling", "sfid", "iou/<class>"...}`` for generated images made from ``labels``,
        vs real photos (per-class IoU in percent; NaN where a class is in neither prediction nor labels)."""
        cm = self.confusion(fake_images, labels)
        out = {
            "miou": cm.miou(over="union"),
            "miou_ceiling": self.ceiling(),
            "sfid": self.sfid(fake_images, real_images),
        }
        out.update({f"iou/{name}": v for name, v in _named_iou(cm).items()})
        return out
