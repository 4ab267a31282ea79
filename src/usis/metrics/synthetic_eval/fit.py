"""Fitting the synthetic evaluator on paired synthetic photos, and its weights cache. See
:mod:`usis.metrics.synthetic_eval`."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from usis.data.synthetic import (
    DATA_VERSION,
    DONTCARE,
    NUM_CLASSES,
    SyntheticPaired,
    check_size,
)
from usis.metrics.synthetic_eval.net import ARCH_VERSION, DECODER_WIDTH, EvalNet, work_size
from usis.utils.io import default_cache_dir
from usis.utils.progress import progress_bar

EVAL_SEED = 20240607
TRAIN_IMAGES = 800  # paired training photos at 64 x 128 (scaled down for larger sizes)
TRAIN_STEPS = 400
BATCH_SIZE = 8
CROP = (64, 128)  # training crop (at most); larger images are seen through crops of this size
LR = 8e-3
WEIGHT_POWER = 0.25  # class weights ~ frequency ** -WEIGHT_POWER ...
WEIGHT_MAX = 4.0  # ... normalised to mean 1 and clamped
PROGRESS_INTERVAL_S = 30.0  # stderr not a terminal: a plain progress line this often (training's default)


def cache_key(height: int, width: int) -> str:
    text = f"synthetic-eval|{height}x{width}|data{DATA_VERSION}|arch{ARCH_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(height: int, width: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the evaluator weights for this image size live."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"synthetic_eval_{cache_key(height, width)}.pt"


# The evaluator's weights for the synthetic preset's size, as shipped with usis. Its fit is seeded but not
# reproducible across machines or torch builds (float kernels differ): two fits score the same generator ~0.04 apart
# in mIoU / ceiling, and the palette images 0.26 vs 0.36. Every machine that loads these scores alike; other sizes,
# or a change of DATA_VERSION or ARCH_VERSION (another cache key, so no file here), fit their own.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def shipped_path(height: int, width: int) -> Path:
    """The shipped weights for this size and the current versions (they may not exist)."""
    return SHIPPED_DIR / f"synthetic_eval_{cache_key(height, width)}.pt"


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


def fit_evalnet(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, crop: tuple[int, int],
                device: torch.device | str = "cpu", desc: str | None = None, mix: tuple[int, int] | None = None,
                init: EvalNet | None = None) -> tuple[EvalNet, float]:
    """A fresh ``EvalNet`` (initialised from ``seed``) trained ``steps`` steps by the evaluator's recipe on
    ``images`` (N x 3 x H x W in [-1, 1], on the CPU) and ``labels`` (N x H x W class ids): random ``crop``
    (height, width) crops of BATCH_SIZE images, horizontal flips, a mild gain / offset jitter, class-weighted
    cross entropy, AdamW with a one-cycle schedule. Returns the net (in training mode) and its last loss;
    ``desc``: a progress display on stderr (:func:`usis.utils.progress.progress_bar`: a tqdm bar in a
    terminal, a plain line every :data:`PROGRESS_INTERVAL_S` seconds in a log file).

    ``mix=(n_first, k)``: every batch draws ``k`` of its images from the first ``n_first`` (say, real photos)
    and the rest from the others (default: uniformly from all). ``init``: start from a copy of this net's
    weights instead of a fresh one (fine-tuning), with the same recipe."""
    n, _, height, width = images.shape
    ch, cw = crop
    weights = _class_weights(labels.long()).to(device)
    gen = torch.Generator().manual_seed(seed)
    if mix is not None and not (0 < mix[0] < n and 0 <= mix[1] <= BATCH_SIZE):
        raise ValueError(f"mix={mix}: need 0 < n_first < {n} images and 0 <= k <= {BATCH_SIZE} per batch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EvalNet()
    if init is not None:
        net.load_state_dict(init.state_dict())
    net = net.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
    bar = progress_bar(total=steps, desc=desc, interval_s=PROGRESS_INTERVAL_S) if desc else None
    for _ in range(steps):
        if mix is None:
            idx = torch.randint(n, (BATCH_SIZE,), generator=gen)
        else:
            first, k = mix
            idx = torch.cat([torch.randint(first, (k,), generator=gen),
                             first + torch.randint(n - first, (BATCH_SIZE - k,), generator=gen)])
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
        x = (x * gain + shift).clamp(-1, 1).to(device).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y.to(device), weight=weights, ignore_index=DONTCARE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    return net, float(loss.item())


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
    net, final_loss = fit_evalnet(images, labels, TRAIN_STEPS, EVAL_SEED, (ch, cw),
                      desc=f"training synthetic evaluator {height}x{width}" if progress else None)
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
        "final_loss": final_loss,
    }
    return {"state_dict": state, "meta": meta}


def _net_for(record: dict[str, Any]) -> EvalNet:
    meta = record.get("meta", {})
    widths = meta.get("widths")
    net = EvalNet(widths=tuple(widths) if widths else None, dec=meta.get("decoder_width"))
    net.load_state_dict(record["state_dict"])
    return net
