"""Seconds per image of ``usis app``'s Generate button (what the page waits for, minus the browser): the
demo model (synthetic preset, 64x128) and the paper-size generator (Cityscapes preset, 35 classes,
256x512), on the CPU.

    python benchmarks/app_latency.py --json
    python benchmarks/app_latency.py --checkpoint runs/demo --images 4 --repeats 5

Each model is timed alone: ``LabelApp.generate`` for one label map (a synthetic street layout, or a
Cityscapes-sized map of random rectangles) and ``--images`` seeds, ``--repeats`` times after one warm-up
call; the figure is the median over the repeats divided by the number of images. The paper-size generator
has random weights (the time does not depend on them); the demo model is ``--checkpoint`` when given (or
``runs/demo`` when it exists), else the synthetic preset's generator with random weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from usis import config as C
from usis.app import LabelApp
from usis.data.datasets import label_set
from usis.nn.build import build_generator
from usis.pipeline import USISPipeline


def random_pipeline(preset: str) -> USISPipeline:
    """A preset's generator with random weights, as a pipeline (eval mode, CPU)."""
    cfg = C.get_preset(preset).sync()
    torch.manual_seed(0)
    names, palette = label_set(cfg)
    return USISPipeline(generator=build_generator(cfg), config=cfg, class_names=list(names),
                        palette=[tuple(c) for c in palette], source=f"{preset} preset, random weights").to("cpu")


def label_map(app: LabelApp, seed: int = 0) -> np.ndarray:
    if app.pipe.config.data.kind == "synthetic":
        return app.layout(seed)[0]
    rng = np.random.default_rng(seed)
    ids = app.blank(7)
    h, w = app.size
    for _ in range(12):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        ids[y:y + rng.integers(8, h // 2), x:x + rng.integers(8, w // 3)] = rng.integers(0, app.num_classes)
    return ids


def time_app(app: LabelApp, images: int, repeats: int) -> dict:
    ids = label_map(app)
    shots = app.shots(0, images)
    app.generate(ids, shots)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        app.generate(ids, shots)
        runs.append(time.perf_counter() - t0)
    h, w = app.size
    params = sum(p.numel() for p in app.pipe.generator.parameters())
    return {"model": app.pipe.source, "size": f"{h}x{w}", "classes": app.num_classes, "params": params,
            "images_per_call": images, "s_per_call": [round(r, 4) for r in runs],
            "s_per_image_median": round(statistics.median(runs) / images, 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="the demo model (default runs/demo if it exists)")
    p.add_argument("--images", type=int, default=4, help="images per Generate click")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    p.add_argument("--skip-paper", action="store_true", help="only the demo model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or ("runs/demo" if Path("runs/demo").exists() else None)
    demo = LabelApp.from_checkpoint(ckpt, device="cpu") if ckpt else LabelApp(random_pipeline("synthetic"))
    results = {"host": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "demo": time_app(demo, args.images, args.repeats)}
    if not args.skip_paper:
        results["paper"] = time_app(LabelApp(random_pipeline("cityscapes")), args.images, args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key in ("demo", "paper"):
            if key in results:
                r = results[key]
                print(f"{key:>5}: {r['s_per_image_median']:.3f} s per image ({r['size']}, {r['classes']} classes, "
                      f"{r['params'] / 1e6:.2f}M parameters; {r['model']})", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
