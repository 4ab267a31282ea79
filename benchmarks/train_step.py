"""Seconds per full USIS training iteration (G + S + D/decoder steps, lazy R1 amortised, EMA).

    python benchmarks/train_step.py --preset synthetic --json
    python benchmarks/train_step.py --preset cityscapes --batch 1 --iters 3 --json
    python benchmarks/train_step.py --preset synthetic --set train.nproc=2 --set train.num_threads=1 --json

Data are random label maps and photos of the preset's size (this measures the networks, not I/O;
see data_throughput.py for loading). Warm-up iterations are excluded; the number of timed iterations is
rounded up to a multiple of ``train.r1_every`` so the lazy R1 step is counted at its true rate. With
``train.nproc=N`` the iterations are data-parallel ones (global batch ``--batch``, split over N processes)
and the peak memory is rank 0's.
"""

from __future__ import annotations

import argparse
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
from usis.train.trainer import Trainer, count_parameters, resolve_device


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(C.PRESETS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=8, help="timed iterations (rounded up to a multiple of r1_every)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true")
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
    result.update(preset=args.preset, overrides=args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>12}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
