"""Where the synthetic preset's artefacts come from, one thing changed at a time at inference (issue 31).

For a trained checkpoint of the synthetic preset, the same 200 label maps (the realism test's: the test split
of another seed, image i with noise seed i) through the generator as shipped and through variants that each
change one thing:

* ``ema`` : the EMA generator, its BN statistics refreshed (what ``usis generate`` gives);
* ``ema, batch statistics``: the same weights, BN normalising with each batch's own statistics (batches of 8);
* ``G, not averaged``: the trained (not averaged) generator with its running BN statistics;
* ``pixel noise zero`` / ``pixel noise x2``: the EMA generator with its per-pixel noise channels set to 0 /
  doubled (the preset's extension: is the grain that noise?);

and for each: the realism measure (``usis.metrics.c2st``, classifier seeds 0 and 1), mIoU and per-class IoU
(the synthetic evaluator), and the grain per class: the mean absolute response to a 3x3 Laplacian inside each
class's regions (borders excluded), beside the same statistic on real photos; and the energy of the Haar
detail bands (LH, HL, HH) at the three finest levels (the bands the wavelet D reads), as a ratio to the
photos' (above 1: more fine detail than the photos at that scale, grain; below 1: too smooth). One grid of the first 4 maps
per variant (a column each) goes to ``--grid``.

And whether G and S agree on cues the photos do not have: the run's own segmenter S (it only ever saw G's
images) scored on G's images and on real photos with their own maps (per-class IoU). If S reads G's images
far better than photos, what G paints for a class is a code the two share, not the class's look.

``--reads-only``: just what a lost class is painted as: for each class, the shares of its pixels in G's images
that the evaluator (trained on real renderings) and the run's own S read as each class (rows of the confusion
matrices), beside the IoU; the variants, the realism test and the grain are skipped (seconds, not minutes).

    python benchmarks/diagnose.py runs/ds/g2/checkpoints/latest.pt --json docs/results/diagnose_g2.json \
        --grid docs/results/diagnose_g2.png
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from usis.data.synthetic import CLASS_NAMES, NUM_CLASSES, SyntheticPaired
from usis.generate import load_generator, run_generator
from usis.metrics.c2st import as_written, classifier_two_sample_test
from usis.metrics.miou import ConfusionMatrix
from usis.metrics.synthetic_eval import SyntheticEvaluator
from usis.metrics.synthetic_eval.fit import EVAL_SEED
from usis.nn.build import build_generator, build_segmenter
from usis.nn.noise import seeded_noise
from usis.nn.wavelets import dwt
from usis.utils.images import save_grid

N = 200
OTHER_SEED = 777  # benchmarks/realism.py's maps
LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def grain(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean |Laplacian| (grey levels of 0..255; ``images`` as written, uint8) per class, over pixels whose 3x3
    neighbourhood is that class."""
    x = images.float()
    lap = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), LAPLACE[None, None], padding=1).abs()
    lap = lap.reshape(x.shape).mean(1)  # over the colours
    out = {}
    for c in range(1, NUM_CLASSES):
        inside = (labels == c).float()[:, None]
        interior = F.avg_pool2d(inside, 3, 1, 1) > 0.999  # no border pixel: texture, not edges
        interior = interior[:, 0]
        interior[:, [0, -1]] = False
        interior[:, :, [0, -1]] = False
        if interior.any():
            out[CLASS_NAMES[c]] = float(lap[interior].mean())
    return out


@torch.no_grad()
def band_energy(images: torch.Tensor, levels: int = 3) -> list[float]:
    """Mean squared Haar detail coefficient (LH, HL, HH together; ``images`` as written, uint8, scaled to [-1, 1])
    at levels 1 (finest: 2x2 pixels) to ``levels``."""
    ll = images.float() / 127.5 - 1
    out = []
    for _ in range(levels):
        bands = dwt(ll)
        c = ll.shape[1]
        out.append(bands[:, c:].square().mean().item())
        ll = bands[:, :c]
    return out


def variants(ckpt: str, labels: torch.Tensor, only_ema: bool = False) -> dict[str, torch.Tensor]:
    gen = load_generator(ckpt)
    G = gen.G
    seeds = list(range(len(labels)))
    z, pn = seeded_noise(seeds, G.z_dim, G.pixel_noise, *labels.shape[-2:], labels=labels, num_classes=G.num_classes,
                         class_style=G.class_style)

    def run(net, scale=1.0, bs=8):
        out = []
        for i in range(0, len(labels), bs):
            p = None if pn is None else pn[i:i + bs] * scale
            out.append(run_generator(net, labels[i:i + bs], z[i:i + bs], p))
        return torch.cat(out)

    rows = {"ema": run(G)}
    if only_ema:
        return rows
    batch_stats = copy.deepcopy(G).eval()
    for m in batch_stats.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False
    rows["ema, batch statistics"] = run(batch_stats)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw = build_generator(gen.cfg)
    raw.load_state_dict(state["G"])
    rows["G, not averaged"] = run(raw.eval())
    if G.pixel_noise:
        rows["pixel noise zero"] = run(G, 0.0)
        rows["pixel noise x2"] = run(G, 2.0)
    return rows


@torch.no_grad()
def s_confusion(ckpt: str, images: torch.Tensor, labels: torch.Tensor) -> ConfusionMatrix:
    """The run's own S on ``images`` (float in [-1, 1]) against ``labels``: its confusion matrix."""
    gen = load_generator(ckpt)
    S = build_segmenter(gen.cfg)
    S.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["S"])
    S.eval()
    cm = ConfusionMatrix(NUM_CLASSES, ignore_index=0)
    for i in range(0, len(images), 16):
        logits = S(images[i:i + 16])
        if logits.shape[1] == NUM_CLASSES + 1:  # the reference's extra channel 0: never a class
            logits = logits[:, 1:]
        cm.update(logits.argmax(1), labels[i:i + 16])
    return cm


def segmenter_reads(ckpt: str, images: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict:
    """The run's S on each set of images (float in [-1, 1]) against its maps: mIoU and IoU per class."""
    out = {}
    for name, x in images.items():
        cm = s_confusion(ckpt, x, labels[name])
        iou = cm.iou()
        out[name] = {"miou": cm.miou(over="union"),
                     "iou": {CLASS_NAMES[c]: 100 * float(iou[c]) for c in range(1, NUM_CLASSES)}}
    return out


def reads(hist: torch.Tensor, top: int = 3) -> dict[str, dict[str, float]]:
    """Per true class (a row of a confusion matrix ``hist[true, predicted]``): the ``top`` classes its pixels are
    read as, in percent of the class's pixels."""
    out = {}
    for c in range(1, NUM_CLASSES):
        total = int(hist[c].sum())
        if total:
            shares = hist[c].float() / total * 100
            best = shares.argsort(descending=True)[:top]
            out[CLASS_NAMES[c]] = {CLASS_NAMES[int(k)]: round(float(shares[k]), 1) for k in best if shares[k] > 0.5}
    return out


@torch.no_grad()
def what_classes_are_read_as(ckpt: str, labels: torch.Tensor, evaluator: SyntheticEvaluator) -> dict:
    """The EMA generator's images of ``labels``: the evaluator's and the run's S's reading of every class."""
    images = as_written(variants(ckpt, labels, only_ema=True)["ema"]).float() / 127.5 - 1
    s_cm = s_confusion(ckpt, images, labels)
    ev_cm = evaluator.confusion(images, labels)
    ev_iou, s_iou = ev_cm.iou(), s_cm.iou()
    return {CLASS_NAMES[c]: {"evaluator_iou": round(100 * float(ev_iou[c]), 1), "evaluator_reads": reads(ev_cm.hist)
                             .get(CLASS_NAMES[c], {}), "s_iou": round(100 * float(s_iou[c]), 1),
                             "s_reads": reads(s_cm.hist).get(CLASS_NAMES[c], {})} for c in range(1, NUM_CLASSES)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reads-only", action="store_true", help="only what each class is read as (see above)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    real = SyntheticPaired(N, 64, 128, seed=EVAL_SEED, split="val")
    other = SyntheticPaired(N, 64, 128, seed=OTHER_SEED, split="test")
    real_images = as_written(torch.stack([real[i]["image"] for i in range(N)]))
    real_labels = torch.stack([real[i]["label"] for i in range(N)])
    labels = torch.stack([other[i]["label"] for i in range(N)])
    evaluator = SyntheticEvaluator.load_or_train(64, 128)
    if args.reads_only:
        out = what_classes_are_read_as(args.checkpoint, labels, evaluator)
        for name, r in out.items():
            print(f"{name:9s} evaluator IoU {r['evaluator_iou']:5.1f} reads {r['evaluator_reads']}  |  S IoU "
                  f"{r['s_iou']:5.1f} reads {r['s_reads']}")
        if args.json:
            Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "reads": out}, indent=1))
        return 0
    real_bands = band_energy(real_images)
    results = {"checkpoint": args.checkpoint,
               "real photos": {"grain": grain(real_images, real_labels), "band_energy": real_bands}}
    rows = variants(args.checkpoint, labels)
    for name, images in rows.items():
        t0 = time.time()
        images = as_written(images)
        bands = band_energy(images)
        row: dict = {"grain": grain(images, labels), "band_energy": bands,
                     "band_ratio": [round(b / r, 3) for b, r in zip(bands, real_bands, strict=True)]}
        for s in (0, 1):
            r = classifier_two_sample_test(real_images, images, seed=s)
            row[f"c2st_seed{s}"] = [round(r["c2st"], 3), round(r["c2st_loss"], 4)]
        floats = images.float() / 127.5 - 1
        row["miou"] = evaluator.miou(floats, labels)
        row["iou"] = evaluator.per_class_iou(floats, labels)
        results[name] = row
        print(f"{name:24s} c2st {row['c2st_seed0']} {row['c2st_seed1']}  mIoU {row['miou']:.1f}  grain sky "
              f"{row['grain'].get('sky', float('nan')):.1f} road {row['grain'].get('road', float('nan')):.1f}  "
              f"Haar detail / photos' (levels 1-3) {row['band_ratio']}  ({time.time() - t0:.0f} s)", flush=True)
    results["S reads"] = segmenter_reads(args.checkpoint, {
        "G's images": as_written(rows["ema"]).float() / 127.5 - 1, "real photos": real_images.float() / 127.5 - 1},
        {"G's images": labels, "real photos": real_labels})
    for name, r in results["S reads"].items():
        print(f"S on {name:12s} mIoU {r['miou']:.1f}  " + " ".join(f"{k} {v:.0f}" for k, v in r["iou"].items()))
    g = results["real photos"]["grain"]
    print(f"{'real photos':24s} grain sky {g.get('sky', float('nan')):.1f} road {g.get('road', float('nan')):.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.grid:
        save_grid([as_written(v[:4]).float() / 127.5 - 1 for v in rows.values()], Path(args.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
