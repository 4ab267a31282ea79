"""The synthetic preset's evaluator: a small segmentation net in place of DRN / DeepLab.

On real data the SPADE protocol segments generated images with a pretrained network and scores the
prediction against the label map the image was generated from (mIoU), and FID compares Inception
features. The procedural street scenes of :mod:`usis.data.synthetic` have no such pretrained
networks, so :class:`SyntheticEvaluator` trains its own once (400 steps of 8 photos with
the process's intra-op threads; timing in benchmarks/RESULTS.md) on the PAIRED synthetic stream -- photos with their own layouts,
never seen by USIS -- and caches the weights. Segmentation averages the logits of each image and its
mirror image (test-time flip).

* ``miou``: confusion matrix accumulated over the whole set, IoU per class, mean over the classes whose
  union is non-empty (the fyu/drn ``segment.py`` reference; see :mod:`usis.metrics.miou`); pixels whose
  label is don't-care (id 0) are not scored and id 0 is never predicted.
* ``miou_ceiling``: the same on held-out REAL photos (``SyntheticPaired(split="val")``) against their own
  layouts -- the best a generator can hope for; generated-image mIoU reads relative to it.
* ``sfid``: Frechet distance between the evaluator's pooled bottleneck features (128 dims) of two image
  sets, computed by :func:`usis.metrics.fid.compute_fid` (the code behind FID: torchmetrics' Frechet
  distance in float64) with this net as the feature extractor.

Cache: ``<cache_dir>/synthetic_eval_<hash>.pt`` (a plain state dict plus metadata, loadable with
``torch.load(..., weights_only=True)``, written atomically), where the hash covers the image size,
:data:`usis.data.synthetic.DATA_VERSION` and :data:`ARCH_VERSION`; ceilings sit next to it in
``synthetic_eval_<hash>.ceiling.json``. ``cache_dir`` defaults to ``$USIS_CACHE`` or ``~/.cache/usis``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from usis.data.synthetic import (
    CLASS_NAMES,
    DATA_VERSION,
    DONTCARE,
    NUM_CLASSES,
    SyntheticPaired,
    check_size,
)
from usis.errors import UsisWarning
from usis.metrics.fid import compute_fid
from usis.metrics.miou import ConfusionMatrix
from usis.utils.io import atomic_write, default_cache_dir

# Bump when the network or its training recipe changes: it keys the weights cache.
ARCH_VERSION = 3
EVAL_SEED = 20240607
TRAIN_IMAGES = 800  # paired training photos at 64 x 128 (scaled down for larger sizes)
TRAIN_STEPS = 400
BATCH_SIZE = 8
CROP = (64, 128)  # training crop (at most); larger images are seen through crops of this size
LR = 8e-3
WEIGHT_POWER = 0.25  # class weights ~ frequency ** -WEIGHT_POWER ...
WEIGHT_MAX = 4.0  # ... normalised to mean 1 and clamped
CEILING_N = 200
WIDTHS = (16, 32, 64, 128)  # encoder widths at 1, 1/2, 1/4, 1/8 resolution
DECODER_WIDTH = 32
WORK_HEIGHT = 64  # taller images are resized to this height for the net (logits resized back)


def work_size(height: int, width: int) -> tuple[int, int]:
    """The size the net sees an ``height x width`` image at: at most :data:`WORK_HEIGHT` rows, so that
    objects (which the renderer scales with the image height) keep the size the net was designed for."""
    if height <= WORK_HEIGHT:
        return height, width
    return WORK_HEIGHT, max(8, round(width * WORK_HEIGHT / height / 8) * 8)


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1, k: int = 3) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class EvalNet(nn.Module):
    """A small U-Net-like segmenter (~0.3M parameters).

    Encoder at 1, 1/2, 1/4, 1/8 of the input size (widths 16, 32, 64, 128; a dilated conv at 1/8),
    a light decoder (1x1 projections added to upsampled coarser maps, one 3x3 conv per level), and a
    1x1 head. ``forward`` gives ``N x NUM_CLASSES`` logits at full resolution; :meth:`pooled` the
    global-average-pooled bottleneck, ``N x 128``. Inputs: float images in [-1, 1], ``N x 3 x H x W``
    with H, W multiples of 8; images taller than :data:`WORK_HEIGHT` are first resized (antialiased) to
    :func:`work_size` and their logits resized back.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, int, int, int] | None = None, dec: int | None = None):
        super().__init__()
        widths, dec = widths or WIDTHS, dec or DECODER_WIDTH
        c0, c1, c2, c3 = widths
        self.widths = widths
        self.e0 = _cbr(3, c0)
        self.e1 = nn.Sequential(_cbr(c0, c1, 2), _cbr(c1, c1))
        self.e2 = nn.Sequential(_cbr(c1, c2, 2), _cbr(c2, c2))
        self.e3 = nn.Sequential(_cbr(c2, c3, 2), _cbr(c3, c3, dilation=2))
        self.p3, self.p2, self.p1 = _cbr(c3, dec, k=1), _cbr(c2, dec, k=1), _cbr(c1, dec, k=1)
        self.f2, self.f1 = _cbr(dec, dec), _cbr(dec, dec)
        self.p0 = _cbr(dec + c0, c0, k=1)
        self.f0 = _cbr(c0, c0)
        self.head = nn.Conv2d(c0, num_classes, 1)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        e0 = self.e0(x)
        e1 = self.e1(e0)
        e2 = self.e2(e1)
        return e0, e1, e2, self.e3(e2)

    @staticmethod
    def _to_work_size(x: Tensor) -> Tensor:
        size = work_size(x.shape[-2], x.shape[-1])
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        e0, e1, e2, e3 = self._encode(self._to_work_size(x))

        def up(a: Tensor, like: Tensor) -> Tensor:
            return F.interpolate(a, size=like.shape[-2:], mode="bilinear", align_corners=False)

        d = self.f2(up(self.p3(e3), e2) + self.p2(e2))
        d = self.f1(up(d, e1) + self.p1(e1))
        d = self.f0(self.p0(torch.cat([up(d, e0), e0], 1)))
        logits = self.head(d)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def pooled(self, x: Tensor) -> Tensor:
        return self._encode(self._to_work_size(x))[3].mean(dim=(2, 3))


class PooledFeatures(nn.Module):
    """The evaluator as a feature extractor for :mod:`usis.metrics.fid` (``FIDKID`` / ``compute_fid``, the
    same Frechet-distance code as FID): images ``N x 3 x H x W`` in [-1, 1] -> pooled features
    ``N x num_features``. Always in eval mode (BatchNorm statistics frozen)."""

    def __init__(self, net: EvalNet, extractor_id: str = "synthetic-eval") -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.widths[-1])
        self.extractor_id = extractor_id  # names the features in a real-statistics cache key
        self.train(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net.pooled(images.float())

    def train(self, mode: bool = True) -> PooledFeatures:
        return super().train(False)


def cache_key(height: int, width: int) -> str:
    text = f"synthetic-eval|{height}x{width}|data{DATA_VERSION}|arch{ARCH_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(height: int, width: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the evaluator weights for this image size live."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"synthetic_eval_{cache_key(height, width)}.pt"


def _class_weights(labels: Tensor) -> Tensor:
    """Loss weights ~ frequency ** -WEIGHT_POWER over the real classes, normalised to mean 1 and clamped at
    WEIGHT_MAX; don't-care gets 0."""
    counts = torch.bincount(labels.reshape(-1), minlength=NUM_CLASSES).double()
    counts[DONTCARE] = 0
    real = counts > 0
    w = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    w[real] = counts[real] ** -WEIGHT_POWER
    w[real] /= w[real].mean()
    return w.clamp(max=WEIGHT_MAX).float()


def train_evaluator(height: int = 64, width: int = 128, progress: bool = True) -> dict[str, Any]:
    """Train the evaluator from scratch (fixed seed) on ``SyntheticPaired(split="train")``.

    Returns the cache record: ``{"state_dict", "meta"}`` with plain-data metadata.
    """
    check_size(height, width)
    t0 = time.perf_counter()
    # Training crops hold at most CROP pixels at the net's working size (full height for tall images).
    f = height / work_size(height, width)[0]
    ch, cw = min(height, round(CROP[0] * f)), min(width, round(CROP[1] * f))
    n = round(TRAIN_IMAGES * ch * cw / (height * width))  # the same number of distinct crops...
    n = max(BATCH_SIZE, min(n, TRAIN_IMAGES * 4 * 64 * 128 // (height * width)))  # ...within ~0.4 GB
    data = SyntheticPaired(n, height, width, seed=EVAL_SEED, split="train")
    images = torch.empty(n, 3, height, width)
    labels = torch.empty(n, height, width, dtype=torch.uint8)
    for i in range(n):
        item = data[i]
        images[i], labels[i] = item["image"], item["label"]
    weights = _class_weights(labels.long())

    gen = torch.Generator().manual_seed(EVAL_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        net = EvalNet()
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TRAIN_STEPS, pct_start=0.15)

    bar = None
    if progress:
        bar = tqdm(total=TRAIN_STEPS, desc=f"training synthetic evaluator {height}x{width}", unit="step")
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(n, (BATCH_SIZE,), generator=gen)
        y0 = int(torch.randint(height - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(width - cw + 1, (1,), generator=gen))
        x = images[idx, :, y0 : y0 + ch, x0 : x0 + cw]
        y = labels[idx, y0 : y0 + ch, x0 : x0 + cw].long()
        flip = torch.rand(BATCH_SIZE, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        # Mild photometric jitter (gain, offset per image): robustness, not invariance.
        gain = 1 + 0.1 * torch.randn(BATCH_SIZE, 1, 1, 1, generator=gen)
        shift = 0.05 * torch.randn(BATCH_SIZE, 1, 1, 1, generator=gen)
        x = (x * gain + shift).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y, weight=weights, ignore_index=DONTCARE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {
        "height": height,
        "width": width,
        "data_version": DATA_VERSION,
        "arch_version": ARCH_VERSION,
        "widths": list(net.widths),
        "decoder_width": DECODER_WIDTH,
        "seed": EVAL_SEED,
        "train_images": n,
        "train_steps": TRAIN_STEPS,
        "train_seconds": time.perf_counter() - t0,
        "final_loss": float(loss.item()),
    }
    return {"state_dict": state, "meta": meta}


def _net_for(record: dict[str, Any]) -> EvalNet:
    meta = record.get("meta", {})
    widths = meta.get("widths")
    net = EvalNet(widths=tuple(widths) if widths else None, dec=meta.get("decoder_width"))
    net.load_state_dict(record["state_dict"])
    return net


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
        """Load the cached evaluator for this image size, or train (about a minute on CPU) and cache it."""
        check_size(height, width)
        path = cache_path(height, width, cache_dir)
        record = None
        if path.exists():
            try:
                record = torch.load(path, map_location="cpu", weights_only=True)
                net = _net_for(record)
            except Exception as e:  # corrupt or stale file: retrain and overwrite
                warnings.warn(f"ignoring unreadable synthetic evaluator cache {path} ({e}); retraining", UsisWarning, stacklevel=2)
                record = None
        if record is None:
            record = train_evaluator(height, width, progress=progress)
            try:
                atomic_write(path, lambda f: torch.save(record, f))
                path.with_suffix(".ceiling.json").unlink(missing_ok=True)  # ceilings of older weights
            except OSError as e:
                warnings.warn(
                    f"could not cache the synthetic evaluator in {path.parent} ({e}); it will be retrained next "
                    f"time. Set $USIS_CACHE or pass cache_dir to a writable folder.",
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
        return PooledFeatures(self.net, f"synthetic-eval:{cache_key(self.height, self.width)}")

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
