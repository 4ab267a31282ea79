"""Seconds per full USIS training iteration (G + S + D/decoder steps, lazy R1 amortised, EMA), with the
model FLOPs per iteration and the achieved TFLOP/s.

    python benchmarks/train_step.py --preset synthetic --json
    python benchmarks/train_step.py --preset cityscapes --batch 1 --iters 3 --json
    python benchmarks/train_step.py --preset synthetic --set train.nproc=2 --set train.num_threads=1 --json

Data are random label maps and photos of the preset's size (this measures the networks, not I/O;
see data_throughput.py for loading). Warm-up iterations are excluded; the number of timed iterations is
rounded up to a multiple of ``train.r1_every`` so the lazy R1 step is counted at its true rate. With
``train.nproc=N`` the iterations are data-parallel ones (global batch ``--batch``, split over N processes)
and the peak memory is rank 0's.

FLOPs (``--flops``, the default; ``--no-flops`` skips them, reported as null): after the timing, a second
trainer of the same config runs ``Trainer.train_step`` under ``torch.utils.flop_counter.FlopCounterMode``
(display=False): once with the lazy R1 step off (``gflop_per_iter_no_r1``) and once on a step where it
runs; the difference is the R1 step's extra work (``gflop_r1_step``), amortised by ``1 / r1_every`` into
``gflop_per_iter``; ``achieved_tflops = gflop_per_iter / s_per_iter / 1000``. The counted ops are the
convolutions and matrix products (FlopCounterMode's formulas, 2 FLOPs per multiply-add); normalisation,
activations, losses, Adam and the EMA are not counted. The count does not depend on the device or dtype.
With ``train.nproc=N`` the count runs on ONE replica at the per-rank batch (``--batch / N``) and is
multiplied by N: the figures are those of the global batch, i.e. of all ranks together.
The R1 step takes a gradient with ``create_graph=True``, which FlopCounterMode's module tracker breaks
(pytorch/pytorch#131753: "A leaf node was passed to _will_engine_execute_node"); only the global total is
needed here, so the counter runs with module tracking replaced by a no-op, and then the R1 step is
counted (``"r1": "counted"``). Should that count fail, the R1 step is estimated (``"r1": "estimated"``)
from a counted D forward + backward on the real photos: 1x of it for ``train.r1_mode=fused`` (the R1
term's double backward on top of the D step), 2x for ``reference`` (a separate D forward, gradient and
double backward) -- the ratios counted for both the synthetic and the Cityscapes discriminator (1.00-1.01x
and 2.00-2.01x). ``"r1": "off"`` when the config has no R1. If counting fails altogether, a one-line
warning goes to stderr and the FLOP fields are null; the timing is reported as usual.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import resource
import sys
import tempfile
import time

import torch
from torch.utils.data import Dataset

from usis import config as C
from usis.data import DataBundle
from usis.train.distributed import launch, resolve_nproc
from usis.train.trainer import Trainer, count_parameters
from usis.utils.device import resolve_device


class _Random(Dataset):
    def __init__(self, n, key, shape, num_classes=0):
        self.n, self.key, self.shape, self.c = n, key, shape, num_classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        if self.key == "label":
            return {"label": torch.randint(0, self.c, self.shape, generator=g), "path": f"random://{i}"}
        return {"image": torch.rand(3, *self.shape, generator=g) * 2 - 1, "path": f"random://{i}"}


def measure(dist, cfg, bundle, warmup: int, iters: int) -> dict:
    """Time ``iters`` training iterations (after ``warmup``) of a trainer on ``bundle``."""
    h, w = cfg.data.height, cfg.data.width
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, data=(bundle, bundle), progress=False, dist=dist)
        dev = tr.device

        def one():
            labels = tr.loaders.next_labels()["label"].to(dev)
            photos = tr.loaders.next_photos()["image"].to(dev)
            tr.train_step(labels, photos)

        for _ in range(warmup):
            one()
        every = max(cfg.train.r1_every, 1)
        iters = math.ceil(iters / every) * every
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
        return {
            "batch": cfg.train.batch_size, "nproc": tr.world_size, "size": [h, w], "iters": iters,
            "s_per_iter": round(dt, 4), "peak_mem_mb": round(peak, 1),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "params": {k: count_parameters(v) for k, v in tr.nets.named().items() if k != "G_ema"},
        }


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker: all FLOPs go to its "Global" total. The real tracker's
    backward hooks break ``torch.autograd.grad(..., create_graph=True)`` (R1; pytorch/pytorch#131753)."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _count(fn) -> int:
    """FLOPs of the ops ``fn()`` runs (convolutions, matrix products) by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):  # only the global total is read: no per-module attribution needed
        counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def count_flops(cfg, bundle, nproc: int) -> dict:
    """FLOPs of one training iteration of the global batch (see the module docstring): one replica at the
    per-rank batch, in this process, times ``nproc``. Raises if the iteration without R1 cannot be counted."""
    c = copy.deepcopy(cfg)
    c.train.batch_size //= nproc
    c.train.nproc = 1
    t = c.train
    gamma = t.r1_gamma
    has_r1 = t.r1_every > 0 and gamma > 0
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(c, tmp, data=(bundle, bundle), progress=False)
        labels = tr.loaders.next_labels()["label"].to(tr.device)
        photos = tr.loaders.next_photos()["image"].to(tr.device)

        def step(r1_gamma: float):
            t.r1_gamma = r1_gamma  # the trainer reads its config at each step; gamma 0 = no R1 step
            tr.step = 0  # a multiple of r1_every: the lazy R1 step runs when gamma > 0
            tr.train_step(labels, photos)

        no_r1 = _count(lambda: step(0.0))
        r1_step, how = 0, "off"
        if has_r1:
            try:
                r1_step, how = _count(lambda: step(gamma)) - no_r1, "counted"
            except Exception as e:  # any failure of the counter: estimate instead
                print(f"train_step.py: could not count the R1 step ({type(e).__name__}: {str(e)[:120]}); "
                      "estimating it from D's forward + backward", file=sys.stderr)

                def d_fwd_bwd():
                    real = photos.detach().requires_grad_(True)
                    tr.nets.D(real).sum().backward()

                tr.nets.D.requires_grad_(True)
                r1_step = (1 if t.r1_mode == "fused" else 2) * _count(d_fwd_bwd)
                how = "estimated"
    per_iter = no_r1 + (r1_step / t.r1_every if has_r1 else 0)
    return {"gflop_per_iter": round(per_iter * nproc / 1e9, 3),
            "gflop_per_iter_no_r1": round(no_r1 * nproc / 1e9, 3),
            "gflop_r1_step": round(r1_step * nproc / 1e9, 3), "r1": how}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(C.PRESETS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=8, help="timed iterations (rounded up to a multiple of r1_every)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                   help="count the FLOPs per iteration (after the timing) and report the achieved TFLOP/s")
    args = p.parse_args(argv)

    cfg = C.apply_overrides(C.get_preset(args.preset), args.overrides)
    if cfg.data.num_classes < 2:
        cfg.data.num_classes = 20
        cfg.sync()
    if args.batch:
        cfg.train.batch_size = args.batch
    cfg.train.sample_every = cfg.train.eval_every = cfg.train.ckpt_every = 0
    h, w, nc = cfg.data.height, cfg.data.width, cfg.data.num_classes
    n = max(64, 4 * cfg.train.batch_size)
    bundle = DataBundle(labels=_Random(n, "label", (h, w), nc), photos=_Random(n, "image", (h, w)),
                        num_classes=nc, dontcare=cfg.data.dontcare, class_names=[str(i) for i in range(nc)],
                        palette=[(0, 0, 0)] * nc)
    use_cuda = resolve_device(cfg.train.device).type == "cuda"
    nproc = resolve_nproc(cfg.train.nproc, cfg.train.batch_size, use_cuda)
    if nproc > 1:  # data-parallel: the workers time the same loop in lockstep; rank 0 reports
        result = launch(measure, nproc, (cfg, bundle, args.warmup, args.iters), use_cuda)
    else:
        result = measure(None, cfg, bundle, args.warmup, args.iters)
    flops = dict.fromkeys(("gflop_per_iter", "gflop_per_iter_no_r1", "gflop_r1_step", "r1", "achieved_tflops"))
    if args.flops:  # after the timing, which the counter would slow down
        try:
            flops.update(count_flops(cfg, bundle, nproc))
            flops["achieved_tflops"] = float(f"{flops['gflop_per_iter'] / result['s_per_iter'] / 1000:.4g}")
        except Exception as e:  # a failed count must never cost the timing
            print(f"train_step.py: FLOP counting failed ({type(e).__name__}: {str(e)[:160]}); "
                  "FLOP fields are null (--no-flops skips the count)", file=sys.stderr)
    result.update(flops)
    result.update(preset=args.preset, overrides=args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for k, v in result.items():
            print(f"{k:>{width}}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
