"""Where the time of one training iteration goes: torch.profiler over ``Trainer.train_step``.

    python benchmarks/profile_step.py --preset synthetic --batch 1 --threads 1 --iters 8
    python benchmarks/profile_step.py --preset synthetic --batch 1 --threads 1 --set train.channels_last=true

One process (a data-parallel rank's share: ``--batch 1`` is what each of the demo's two processes trains),
random data of the preset's size (benchmarks/train_step.py's), warm-up excluded, ``--iters`` iterations
(rounded up to a multiple of ``train.r1_every``) profiled. Prints the ops per iteration, the wall time per
iteration under the profiler, and the ``--top`` ops by self CPU time (or CUDA time on a GPU).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import add_one_rank_args, one_rank_trainer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_one_rank_args(p, iters=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tr = one_rank_trainer(args, tmp)
        cfg = tr.cfg

        def one():
            labels = tr.loaders.next_labels()["label"].to(tr.device)
            photos = tr.loaders.next_photos()["image"].to(tr.device)
            tr.train_step(labels, photos)

        for _ in range(args.warmup):
            one()
        every = max(cfg.train.r1_every, 1)
        n = math.ceil(args.iters / every) * every
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(n):
                one()
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    total_us = sum(e.self_cpu_time_total for e in events)
    print(f"{n} iterations, {ops / n:.0f} aten ops per iteration, {total_us / n / 1000:.1f} ms self CPU per "
          f"iteration under the profiler ({torch.get_num_threads()} threads, batch {args.batch})")
    sort = "self_cuda_time_total" if tr.device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
