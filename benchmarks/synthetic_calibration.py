"""How the synthetic evaluator's sFID and mIoU respond to known image sets (calibrating the demo's bars).

    python benchmarks/synthetic_calibration.py [--checkpoint RUN/checkpoints/latest.pt] [--n 200]

Scores, against the real validation photos used by periodic evaluation: other real photos, the same
photos without per-pixel grain, with white noise, blurred, down- and up-sampled, and flat class colours.
With ``--checkpoint`` it also scores the generator's images of paired layouts composited with the real
photos of those layouts one class at a time (which class's appearance costs how much). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

import usis.data.synthetic as S
import usis.data.synthetic.rendering as R
from usis.data.synthetic import stack
from usis.metrics.synthetic_eval import SyntheticEvaluator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="", help="a synthetic-preset training checkpoint (optional)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    n, h, w = args.n, args.height, args.width
    ev = SyntheticEvaluator.load_or_train(h, w)
    real = stack(S.SyntheticPhotos(n, h, w, split="val"), "image", n)  # periodic evaluation's reference
    paired = S.SyntheticPaired(n, h, w, split="val")
    labels, photos = stack(paired, "label", n), stack(paired, "image", n)

    def report(name, images):
        r = ev.evaluate(images, labels, real)
        per_class = {k[4:]: round(v, 1) for k, v in r.items() if k.startswith("iou/")}
        print(json.dumps({"set": name, "sfid": round(r["sfid"], 3), "miou": round(r["miou"], 2),
                          "iou": per_class}), flush=True)

    g = torch.Generator().manual_seed(0)
    report("real photos of the paired layouts", photos)
    original = R._Canvas  # the renderer's per-pixel white noise lives in the canvas

    def no_grain(**kw):
        kw["fine"] = kw["fine"] * np.float32(0)
        return original(**kw)

    R._Canvas = no_grain
    try:
        report("same photos without per-pixel grain", stack(S.SyntheticPaired(n, h, w, split="val"), "image", n))
    finally:
        R._Canvas = original
    report("photos + white noise sigma 0.1", (photos + 0.1 * torch.randn(photos.shape, generator=g)).clamp(-1, 1))
    report("photos, 2x2 box blur", F.avg_pool2d(F.pad(photos, (1, 0, 1, 0), mode="replicate"), 2, 1))
    report("photos, 3x3 box blur", F.avg_pool2d(F.pad(photos, (1, 1, 1, 1), mode="replicate"), 3, 1))
    report("photos, 2x down + bilinear up", F.interpolate(F.avg_pool2d(photos, 2), scale_factor=2, mode="bilinear"))
    mean = torch.zeros(S.NUM_CLASSES, 3)
    for c in range(S.NUM_CLASSES):
        px = photos.permute(0, 2, 3, 1)[labels == c]
        if len(px):
            mean[c] = px.mean(0)
    report("flat mean colour per class", mean[labels].permute(0, 3, 1, 2))

    if args.checkpoint:
        from usis.generate import generate_images, load_generator

        G = load_generator(args.checkpoint).G
        fake = generate_images(G, labels, list(range(n)))
        report("generated", fake)
        for c in range(S.NUM_CLASSES):
            if c == S.DONTCARE:
                continue
            m = (labels == c)[:, None]
            report(f"generated, real {S.CLASS_NAMES[c]} pixels", torch.where(m, photos, fake))
            report(f"real, generated {S.CLASS_NAMES[c]} pixels", torch.where(m, fake, photos))


if __name__ == "__main__":
    main()
