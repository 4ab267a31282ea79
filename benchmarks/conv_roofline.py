"""How close the training step's convolutions run to this CPU's peak: the ceiling on what any CPU speed-up
that keeps the networks (and so the FLOPs) can give.

    python benchmarks/conv_roofline.py --preset synthetic --batch 1 --threads 1

1. The peak: a large float32 matmul (``--gemm`` square, one thread by default), GFLOP/s.
2. Every convolution one training iteration runs (``aten.convolution`` calls recorded by a dispatch mode
   during real ``Trainer.train_step`` calls: modules, the D's blur and Haar transforms, R1's double
   backward), grouped by shape, each timed alone forward + backward (the gradients that call needed:
   weight and / or input), with its FLOPs (2 * MACs per pass) and GFLOP/s.
3. The sum over one iteration (each shape times its calls) beside the measured step: the share of the step
   that is convolution at that rate, and the best step time if everything else took no time at all and
   the convolutions ran at the matmul's peak.

Random data of the preset's size (benchmarks/train_step.py's); one process (``--batch 1`` is one of the
demo's two processes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from usis.train.trainer import Trainer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import add_one_rank_args, one_rank_trainer  # noqa: E402


def _median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(n: int, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _median_time(lambda: a @ b, reps) / 1e9


def conv_calls(tr: Trainer) -> Counter:
    """(input shape, weight shape, stride, padding, dilation, groups, weight grad, input grad) -> calls of
    ``aten.convolution`` (modules and functional ones alike) in one iteration (an R1 interval, divided)."""
    labels = tr.loaders.next_labels()["label"]
    photos = tr.loaders.next_photos()["image"]
    every = max(tr.cfg.train.r1_every, 1)
    with _RecordConvolutions() as rec:
        for _ in range(every):
            tr.train_step(labels, photos)
    return Counter({k: v / every for k, v in rec.calls.items()})


class _RecordConvolutions(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and not args[6]:  # not transposed
            x, w = args[0], args[1]
            self.calls[(tuple(x.shape), tuple(w.shape), tuple(args[3]), tuple(args[4]), tuple(args[5]), args[8],
                        bool(w.requires_grad), bool(x.requires_grad))] += 1
        return func(*args, **(kwargs or {}))


def time_conv(shape: tuple, reps: int) -> tuple[float, float]:
    """Seconds for forward + backward (the gradients the step needed) of one call, and its FLOPs."""
    xs, ws, stride, padding, dilation, groups, wgrad, xgrad = shape
    x = torch.randn(xs, requires_grad=xgrad)
    weight = torch.randn(ws, requires_grad=wgrad)

    def step():
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        if wgrad or xgrad:
            y.backward(torch.ones_like(y))

    y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    macs = y.numel() * ws[1] * ws[2] * ws[3]
    flops = 2 * macs * (1 + wgrad + xgrad)
    return _median_time(step, reps), flops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_one_rank_args(p, iters=8)
    p.add_argument("--gemm", type=int, default=1024)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tr = one_rank_trainer(args, tmp)
        cfg = tr.cfg
        calls = conv_calls(tr)
        labels = tr.loaders.next_labels()["label"]
        photos = tr.loaders.next_photos()["image"]
        every = max(cfg.train.r1_every, 1)
        n_iter = max(every, args.iters // every * every)
        t0 = time.perf_counter()
        for _ in range(n_iter):
            tr.train_step(labels, photos)
        step_s = (time.perf_counter() - t0) / n_iter
    peak = gemm_gflops(args.gemm)
    print(f"peak: {args.gemm}^3 float32 matmul, {args.threads} thread(s): {peak:.1f} GFLOP/s")
    print(f"measured step ({n_iter} iterations, batch {args.batch}): {step_s * 1e3:.1f} ms\n")
    print("| input | weight | stride | groups | grads (w, x) | calls / iter | ms / call | GFLOP/s | % of peak |")
    print("|---|---|---:|---:|:-:|---:|---:|---:|---:|")
    timed = {shape: time_conv(shape, args.reps) for shape in calls}
    total_s = total_flops = 0.0
    for shape, count in sorted(calls.items(), key=lambda kv: -kv[1] * timed[kv[0]][0]):  # most time first
        secs, flops = timed[shape]
        total_s += secs * count
        total_flops += flops * count
        xs, ws, stride, _, _, groups, wgrad, xgrad = shape
        rate = flops / secs / 1e9
        print(f"| {'x'.join(map(str, xs))} | {'x'.join(map(str, ws))} | {stride[0]} | {groups} | "
              f"{'w' if wgrad else '-'}{'x' if xgrad else '-'} | {count:g} | {secs * 1e3:.3f} | {rate:.1f} | "
              f"{100 * rate / peak:.0f} |")
    print(f"\nconvolutions per iteration: {sum(calls.values()):g} calls (R1's double backward counted as "
          f"forwards with a backward: an upper bound), {total_flops / 1e9:.2f} GFLOP, {total_s * 1e3:.1f} ms "
          f"timed alone ({total_flops / total_s / 1e9:.1f} GFLOP/s, {100 * total_flops / total_s / 1e9 / peak:.0f} "
          f"% of the matmul peak); {100 * total_s / step_s:.0f} % of the measured step")
    floor = total_flops / (peak * 1e9)
    print(f"a step with nothing but the convolutions at their measured rate: {total_s * 1e3:.1f} ms "
          f"({step_s / total_s:.2f}x faster than measured); at the matmul's peak: {floor * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
