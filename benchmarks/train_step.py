"""Seconds per full USIS training iteration (G + S + D/decoder steps, lazy R1 amortised, EMA), with the
model FLOPs per iteration, the achieved TFLOP/s and the model FLOP utilisation of the card.

    python benchmarks/train_step.py --preset synthetic --json
    python benchmarks/train_step.py --preset cityscapes --batch 1 --iters 3 --json
    python benchmarks/train_step.py --preset synthetic --set train.nproc=2 --set train.num_threads=1 --json
    python benchmarks/train_step.py --preset cityscapes --set train.channels_last=true --set train.amp=true \
        --set train.compile=true --gflop-per-iter 23358 --json

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
warning goes to stderr and the FLOP fields are null; the timing is reported as usual. The counting trainer
runs eager (``train.compile`` off; the count is the model's, the same whatever the switches).
``--gflop-per-iter X`` supplies the count instead (e.g. from an eager row of the same preset, batch and
generator: the speed switches do not change it) and skips the counter (``"flops_source": "given"``; the
per-part fields are then null).

Utilisation: ``mfu_bf16`` and ``mfu_tf32`` are ``achieved_tflops`` over the card's dense (no sparsity) bf16
and TF32 tensor-core peaks from NVIDIA's datasheets (``PEAK_TFLOPS``, matched on the CUDA device name, times
the number of processes; ``peak_tflops_bf16`` / ``peak_tflops_tf32`` give the figures used). The bf16 one is
the headline: it is what the card can do; with fp32 weights the convolutions run on TF32 at best, hence the
second. Null on a CPU, on a card not in the table, or without a FLOP count.

Switches and compilation: the JSON repeats ``amp``, ``channels_last``, ``compile`` and ``cudnn_benchmark`` as
``cfg.train`` has them. ``warmup_s`` is the wall time of the warm-up iterations (CUDA synchronised), which
with ``train.compile=true`` includes compiling; ``graphs_warmup`` and ``graph_breaks_warmup`` are the graphs
torch.compile (dynamo) built and the graph breaks it hit during them, and ``recompiles`` is the number of
graphs built during the TIMED iterations (0 in a healthy steady state), all read from
``torch._dynamo.utils.counters`` (``stats/unique_graphs``, ``graph_break``) before and after each loop;
null where that counter cannot be read. ``--warmup`` defaults to 2, or with compile to ``r1_every + 1``
(at least 2), so that warm-up covers the first iteration and an R1 iteration: every graph is built before
the timing starts.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
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


def add_one_rank_args(p: argparse.ArgumentParser, iters: int) -> None:
    """The options of the one-process benchmarks (profile_step.py, conv_roofline.py)."""
    p.add_argument("--preset", default="synthetic", choices=sorted(C.PRESETS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--set", dest="overrides", action="append", default=[])


def one_rank_trainer(args, tmp: str) -> Trainer:
    """A trainer of ``args.preset`` in this one process (``args.batch``, ``args.threads``), nothing periodic,
    on random data of the preset's size: what one data-parallel rank runs."""
    cfg = C.apply_overrides(C.get_preset(args.preset), [*args.overrides, f"train.batch_size={args.batch}",
                                                         "train.nproc=1", f"train.num_threads={args.threads}"])
    cfg.train.sample_every = cfg.train.eval_every = cfg.train.ckpt_every = 0
    bundle = random_bundle(cfg)
    return Trainer(cfg, tmp, data=(bundle, bundle), progress=False)


def random_bundle(cfg) -> DataBundle:
    """Random label maps and photos of ``cfg``'s size and classes (at least 64 of each)."""
    h, w, nc = cfg.data.height, cfg.data.width, cfg.data.num_classes
    n = max(64, 4 * cfg.train.batch_size)
    return DataBundle(labels=_Random(n, "label", (h, w), nc), photos=_Random(n, "image", (h, w)),
                      num_classes=nc, dontcare=cfg.data.dontcare, class_names=[str(i) for i in range(nc)],
                      palette=[(0, 0, 0)] * nc)


# Dense (no sparsity) tensor-core peaks in TFLOP/s, (bf16, tf32), from NVIDIA's datasheets (which quote the
# sparse figures, twice these). Matched in order on the CUDA device name; the first match wins.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    (r"\bGH200\b", 989.0, 494.5),  # Grace Hopper: the H100 SXM's tensor cores
    (r"\bH200\b.*\bNVL\b", 835.5, 417.5),
    (r"\bH200\b", 989.0, 494.5),  # H200 SXM: the H100 SXM's compute
    (r"\bH100\b.*\bNVL\b", 835.5, 417.5),
    (r"\bH100\b.*\bPCIe\b", 756.0, 378.0),
    (r"\bH100\b", 989.0, 494.5),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (r"\bA100\b", 312.0, 156.0),  # SXM4 and PCIe
    (r"\bA30\b", 165.0, 82.0),
    (r"\bA40\b", 149.7, 74.8),
    (r"\bA10\b", 125.0, 62.5),  # not the A10G (a different part)
    (r"\bL40S\b", 362.05, 183.0),
    (r"\bL40\b", 181.05, 90.5),
    (r"\bL4\b", 121.0, 60.0),
    (r"\bRTX 4090\b", 165.2, 82.6),
]


def peak_tflops(device_name: str) -> tuple[float | None, float | None]:
    """The dense (bf16, TF32) tensor-core peaks of the card called ``device_name``; (None, None) if unknown."""
    for pattern, bf16, tf32 in PEAK_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return bf16, tf32
    return None, None


def _dynamo_counts() -> tuple[int, int] | None:
    """(graphs built, graph breaks) so far in this process by torch.compile; None if unreadable."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))
    except Exception:  # a private API: its layout may change between releases
        return None


def _delta(after, before, i: int) -> int | None:
    return None if after is None or before is None else after[i] - before[i]


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

        c0, t_warm = _dynamo_counts(), time.perf_counter()
        for _ in range(warmup):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t_warm
        c1 = _dynamo_counts()
        every = max(cfg.train.r1_every, 1)
        iters = math.ceil(iters / every) * every
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        c2 = _dynamo_counts()
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
        t = cfg.train
        return {
            "impl": "usis", "batch": t.batch_size, "nproc": tr.world_size, "size": [h, w], "iters": iters,
            "s_per_iter": round(dt, 4), "peak_mem_mb": round(peak, 1),
            "amp": getattr(t, "amp", None), "channels_last": getattr(t, "channels_last", None),
            "compile": getattr(t, "compile", None), "cudnn_benchmark": getattr(t, "cudnn_benchmark", None),
            "warmup": warmup, "warmup_s": round(warmup_s, 3), "graphs_warmup": _delta(c1, c0, 0),
            "graph_breaks_warmup": _delta(c1, c0, 1), "recompiles": _delta(c2, c1, 0),
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
    if hasattr(c.train, "compile"):
        c.train.compile = False  # FlopCounterMode counts eager ops; the model's FLOPs do not depend on it
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


def utilisation(result: dict, use_cuda: bool) -> dict:
    """``mfu_bf16`` / ``mfu_tf32``: achieved TFLOP/s over the dense peaks of ``result``'s card(s)."""
    bf16, tf32 = peak_tflops(result["device"]) if use_cuda else (None, None)
    n = result.get("nproc") or 1
    out = {"peak_tflops_bf16": bf16 and bf16 * n, "peak_tflops_tf32": tf32 and tf32 * n,
           "mfu_bf16": None, "mfu_tf32": None}
    achieved = result.get("achieved_tflops")
    for key, peak in (("mfu_bf16", out["peak_tflops_bf16"]), ("mfu_tf32", out["peak_tflops_tf32"])):
        if achieved is not None and peak:
            out[key] = round(achieved / peak, 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(C.PRESETS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=8, help="timed iterations (rounded up to a multiple of r1_every)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default 2; with train.compile r1_every + 1, at least 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                   help="count the FLOPs per iteration (after the timing) and report the achieved TFLOP/s")
    p.add_argument("--gflop-per-iter", type=float, default=None, metavar="X",
                   help="the GFLOP per iteration, known already (same preset, batch, networks): no counting")
    args = p.parse_args(argv)

    cfg = C.apply_overrides(C.get_preset(args.preset), args.overrides)
    if cfg.data.num_classes < 2:
        cfg.data.num_classes = 20
        cfg.sync()
    if args.batch:
        cfg.train.batch_size = args.batch
    cfg.train.sample_every = cfg.train.eval_every = cfg.train.ckpt_every = 0
    warmup = args.warmup
    if warmup is None:
        warmup = max(2, cfg.train.r1_every + 1) if getattr(cfg.train, "compile", False) else 2
    bundle = random_bundle(cfg)
    use_cuda = resolve_device(cfg.train.device).type == "cuda"
    nproc = resolve_nproc(cfg.train.nproc, cfg.train.batch_size, use_cuda)
    if nproc > 1:  # data-parallel: the workers time the same loop in lockstep; rank 0 reports
        result = launch(measure, nproc, (cfg, bundle, warmup, args.iters), use_cuda)
    else:
        result = measure(None, cfg, bundle, warmup, args.iters)
    flops = dict.fromkeys(("gflop_per_iter", "gflop_per_iter_no_r1", "gflop_r1_step", "r1", "flops_source",
                           "achieved_tflops"))
    if args.gflop_per_iter is not None:
        flops.update(gflop_per_iter=args.gflop_per_iter, flops_source="given")
    elif args.flops:  # after the timing, which the counter would slow down
        try:
            flops.update(count_flops(cfg, bundle, nproc), flops_source="counted")
        except Exception as e:  # a failed count must never cost the timing
            print(f"train_step.py: FLOP counting failed ({type(e).__name__}: {str(e)[:160]}); "
                  "FLOP fields are null (--no-flops skips the count)", file=sys.stderr)
    if flops["gflop_per_iter"] is not None:
        flops["achieved_tflops"] = float(f"{flops['gflop_per_iter'] / result['s_per_iter'] / 1000:.4g}")
    result.update(flops)
    result.update(utilisation(result, use_cuda))
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
