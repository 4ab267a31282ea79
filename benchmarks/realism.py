"""Validation of the realism measure (usis.metrics.c2st) on the synthetic benchmark: its null (real against
real), sets it must catch (grain, blur, the palette), and generators along their training.

    python benchmarks/realism.py                                   # the validation rows
    python benchmarks/realism.py --checkpoints runs/ds/g2_steps/*.pt --json docs/results/realism.json

Real photos: 200 held-out renderings (the synthetic evaluator's validation split, its seed). The other sets:
200 renderings of the test split (another seed), as they are, with Gaussian noise (std 0.05, 0.15) or a 3x3
box blur; their label maps in the palette's colours; and each checkpoint's EMA generator on those label maps
(image i with seed i). Every set is 8-bit, as images are written. Each row is the two-sample test with
classifier seeds 0 and 1 (one line per seed: accuracy, held-out loss).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from usis.data.synthetic import SyntheticPaired, labels_to_rgb
from usis.generate import generate_images, load_generator
from usis.metrics.c2st import as_written, classifier_two_sample_test
from usis.metrics.synthetic_eval.fit import EVAL_SEED

N = 200
OTHER_SEED = 777


def sets(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    real = SyntheticPaired(n, 64, 128, seed=EVAL_SEED, split="val")
    other = SyntheticPaired(n, 64, 128, seed=OTHER_SEED, split="test")
    a = torch.stack([real[i]["image"] for i in range(n)])
    b = torch.stack([other[i]["image"] for i in range(n)])
    labels = torch.stack([other[i]["label"] for i in range(n)])
    gen = torch.Generator().manual_seed(0)
    rows = {
        "real (test split)": b,
        "real + noise 0.05": (b + 0.05 * torch.randn(b.shape, generator=gen)).clamp(-1, 1),
        "real + noise 0.15": (b + 0.15 * torch.randn(b.shape, generator=gen)).clamp(-1, 1),
        "real, 3x3 blur": F.avg_pool2d(b, 3, 1, 1, count_include_pad=False),
        "palette": torch.from_numpy(labels_to_rgb(labels.numpy())).permute(0, 3, 1, 2).float() / 127.5 - 1,
    }
    return as_written(a), {k: as_written(v) for k, v in rows.items()}, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", nargs="*", default=[], help="generators of the synthetic preset (64x128)")
    ap.add_argument("--no-validation", action="store_true", help="only the checkpoints")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    real, rows, labels = sets(N)
    if args.no_validation:
        rows = {}
    for path in args.checkpoints:
        g = load_generator(path)
        rows[f"{path} (step {g.step})"] = as_written(generate_images(g.G, labels, list(range(N)), batch_size=50))
    out = {}
    for name, other in rows.items():
        t = time.perf_counter()
        out[name] = [classifier_two_sample_test(real, other, seed=s) for s in (0, 1)]
        cells = "  ".join(f"{r['c2st']:.3f} / {r['c2st_loss']:.4f}" for r in out[name])
        print(f"{name:48s} {cells}   ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
