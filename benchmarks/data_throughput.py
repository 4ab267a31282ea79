"""Data-loading throughput: label maps and photos per second through the unpaired training streams.

    python benchmarks/data_throughput.py --preset synthetic
    python benchmarks/data_throughput.py --preset folder --set data.labels=DIR --set data.photos=DIR \\
        --set data.num_classes=N [--batches 50] [--workers 4] [--batch-size 8] [--json]

Draws ``--warmup`` batches (worker start-up, file caches) and then times ``--batches`` batches of each
stream (one label batch + one photo batch per step, as the trainer does). Prints images per second:
labels, photos and both streams together (a step's label + photo images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synthetic")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per stream")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per stream first")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    ap.add_argument("--split", default="train", choices=["train", "val"])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    from usis.config import ConfigError, apply_overrides, get_preset
    from usis.data.datasets import DatasetError, build_datasets
    from usis.data.unpaired import make_loaders

    try:
        cfg = apply_overrides(get_preset(args.preset), args.overrides)
        workers = cfg.data.num_workers if args.workers is None else args.workers
        batch = cfg.train.batch_size if args.batch_size is None else args.batch_size
        bundle = build_datasets(cfg, args.split)
        loaders = make_loaders(bundle, batch, seed=cfg.train.seed, num_workers=workers,
                               pin_memory=cfg.data.pin_memory)
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        for _ in range(args.warmup):
            loaders.next_labels()
            loaders.next_photos()
        t_labels = t_photos = 0.0
        for _ in range(args.batches):
            t0 = time.perf_counter()
            loaders.next_labels()
            t1 = time.perf_counter()
            loaders.next_photos()
            t2 = time.perf_counter()
            t_labels += t1 - t0
            t_photos += t2 - t1
    except DatasetError as e:
        print(f"error: {e}\n(run `usis data check` to find every such file at once)", file=sys.stderr)
        return 2
    n = args.batches * batch
    result = {
        "preset": args.preset, "kind": cfg.data.kind, "split": args.split, "overrides": args.overrides,
        "height": cfg.data.height, "width": cfg.data.width, "load_size": cfg.data.load_size,
        "batch_size": batch, "batches": args.batches, "workers": workers,
        "num_labels": len(bundle.labels), "num_photos": len(bundle.photos),
        "labels_per_s": round(n / max(t_labels, 1e-9), 1),
        "photos_per_s": round(n / max(t_photos, 1e-9), 1),
        "steps_per_s": round(args.batches / max(t_labels + t_photos, 1e-9), 2),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.preset} ({cfg.data.kind}, {args.split}) {cfg.data.height}x{cfg.data.width}, batch {batch}, "
              f"{workers} workers, {args.batches} batches:")
        print(f"  label maps: {result['labels_per_s']:.1f} images/s")
        print(f"  photos    : {result['photos_per_s']:.1f} images/s")
        print(f"  steps     : {result['steps_per_s']:.2f} label+photo batches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
