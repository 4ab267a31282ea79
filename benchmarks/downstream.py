"""Do USIS images help a segmenter? The downstream test of `usis synthesize` on the synthetic benchmark.

One fixed segmentation network is trained, with the same recipe and the same number of steps, on each
row's training set, and evaluated on held-out REAL photos with their true labels (mIoU over the classes
present in labels or prediction, and IoU per class). Rows:

* ``oracle``: real photos with their true labels (the upper bound);
* ``no_translation``: the same label maps painted in the palette's colours (the lower bound);
* ``usis_all``: the USIS images of the same label maps, one noise seed for every map (``usis synthesize
  --one-style --seed 0``: the whole set in one style, as before issue 30);
* ``usis_kept``: those kept by ``--keep KEEP`` (scored by the checkpoint's own S), one style;
* ``usis_seeds``: a noise seed of its own per map (``usis synthesize``'s default since issue 30);
* ``usis_filtered``: per-map seeds, ``--pixel-filter 1.25`` (FreeMask's pixel filter; the filter's segmenter
  is the synthetic evaluator, trained on real renderings, its class means from its own held-out renderings);
* ``usis_resampled``: per-map seeds, ``--resample hard --n RESAMPLE_N``;
* ``usis_filtered_resampled``: both (the recipe the mixing rows below use);
* ``few_real`` (``FEW`` real pairs, default 50) and ``few10`` (``FEW_SMALL``, default 10): the first real pairs
  alone;
* ``few_real+usis``: the ``FEW`` real pairs plus every ``usis_all`` pair (a uniform union: batches are drawn
  uniformly from it, so no source is up-weighted; the row as before issue 30);
* ``fewK+usis``, ``fewK+usis_half``, ``fewK_ft`` (K = 10, 50), with the ``usis_filtered_resampled`` pairs: the
  uniform union; half of every batch real (4 of 8, SYNTHIA's balanced batches); the segmenter of the
  ``usis_filtered_resampled`` row fine-tuned on the K real pairs (the same recipe and steps again: this row
  has twice the steps of the others, so ``fewK_2x`` trains the K real pairs alone for as many steps).

Data. Every row's label maps are the layouts of one pool, ``SyntheticPaired(MAPS, seed=POOL_SEED,
split="train")``: a paired stream, which no USIS training stream draws from, so the generator never saw
these maps; the oracle's photos are the pool's own renderings of them. The test photos are
``SyntheticPaired(TEST, seed=POOL_SEED, split="test")``: in none of the training streams (not the
generator's, not the pool, not the synthetic evaluator's).

The network: the synthetic evaluator's ``EvalNet`` (:mod:`usis.metrics.synthetic_eval.net`, ~0.3M
parameters), trained from scratch by the evaluator's own recipe (:mod:`usis.metrics.synthetic_eval.fit`:
AdamW, one-cycle LR 8e-3, 400 steps of 8, crops, flips, mild gain/offset jitter, class weights from the
training labels, don't-care ignored) and evaluated with its test-time flip. Why it: it is built for these
scenes and trains in about a minute on a CPU, so 6 rows x 3 seeds fit a CPU, and its number on real
photos is known: trained on 800 real pairs it is the evaluator whose ceiling the README reports (~86 %),
so the oracle row checks the protocol. The U-Net S of :mod:`usis.nn.segmenter` is not used: it is the
generator's partner in training (and S scores the ``usis_kept`` filter), a neutral third network is not.

Seeds. Generator checkpoint ``i`` (``--checkpoints a b c``) goes with segmenter seed ``i`` (its init and
batches) in EVERY row, so the rows that do not use a generator (oracle, no translation, few real) are
repeated with the same three segmenter seeds: their std is the segmenter's own spread, the generator rows'
std adds the generator's.

Outputs: ``REPORT_DIR/NAME.{md,json,png}`` (table mean +- std over the seeds, per-class IoU, plot) and
``REPORT_DIR/NAME_pairs.png`` (the best and the worst pairs by S score of the first generator: label map |
USIS image). Work (label maps, synthesized datasets, one result file per row and seed) goes to ``--work``
and is reused by a rerun with the same protocol.

    python benchmarks/downstream.py --checkpoints runs/ds/g0 runs/ds/g1 runs/ds/g2
    python benchmarks/downstream.py --checkpoints ... --report-only   # tabulate what is there
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usis.data.datasets import label_png
from usis.data.synthetic import CLASS_NAMES, DONTCARE, NUM_CLASSES, SyntheticPaired, labels_to_rgb
from usis.generate import load_generator
from usis.metrics.miou import ConfusionMatrix
from usis.metrics.synthetic_eval.fit import CROP, TRAIN_IMAGES, TRAIN_STEPS, fit_evalnet
from usis.metrics.synthetic_eval.net import EvalNet, work_size
from usis.synthesis import real_statistics
from usis.synthesize import make_scorer, synthesize_folder
from usis.utils.device import resolve_device
from usis.utils.images import save_grid
from usis.utils.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]
POOL_SEED = 4242  # the paired pool and the test photos: a seed no other stream of the project uses
SEGMENTER_SEED = 1000  # + the seed index: the downstream network's init and batches
ROWS = ["oracle", "no_translation", "usis_all", "usis_kept", "usis_seeds", "usis_filtered", "usis_resampled",
        "usis_filtered_resampled", "few10", "few10_2x", "few10+usis", "few10+usis_half", "few10_ft", "few_real",
        "few50_2x", "few_real+usis", "few50+usis", "few50+usis_half", "few50_ft"]
LONGER = {"few10_2x", "few50_2x"}  # twice the steps: what the fine-tuned rows train in all
RECIPE = "usis_filtered_resampled"  # the synthetic pairs the mixing rows use
FILTER_MARGIN = 1.25
RESAMPLE_N = 4
REAL_CLASSES = [c for c in range(NUM_CLASSES) if c != DONTCARE]


# ----------------------------------------------------------------------------------------------- data


def paired(n: int, height: int, width: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real photos (float N x 3 x H x W in [-1, 1]) and their layouts (int64 N x H x W)."""
    data = SyntheticPaired(n, height, width, seed=POOL_SEED, split=split)
    items = [data[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def painted(labels: torch.Tensor) -> torch.Tensor:
    """Label maps in the palette's colours, as images in [-1, 1] (the no-translation baseline)."""
    rgb = torch.from_numpy(labels_to_rgb(labels.numpy())).float()
    return rgb.permute(0, 3, 1, 2) / 127.5 - 1.0


def write_maps(labels: torch.Tensor, folder: Path) -> Path:
    """The pool's layouts as 8-bit label PNGs (``map_00000.png``, ...), written once."""
    for i, lab in enumerate(labels.numpy()):
        path = folder / f"map_{i:05d}.png"
        if not path.is_file():
            atomic_write(path, lambda f, lab=lab: label_png(lab, NUM_CLASSES).save(f, format="PNG"))
    return folder


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def read_pairs(out: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """A ``usis synthesize`` folder's kept pairs as tensors (images in [-1, 1], int64 labels) + manifest rows."""
    rows = [r for r in manifest(out) if r["kept"]]
    images, labels = [], []
    for r in rows:
        with Image.open(out / r["image"]) as im:
            images.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()))
        with Image.open(out / r["label"]) as im:
            labels.append(torch.from_numpy(np.asarray(im).astype(np.int64)))
    return torch.stack(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, torch.stack(labels), rows


def synthesize(ckpt: str, maps: Path, out: Path, keep: float | None, per_map: int, device: torch.device,
               batch_size: int, one_style: bool = True, pixel_filter: float | None = None,
               resample: str | None = None) -> Path:
    """``usis synthesize --checkpoint CKPT --labels MAPS --out OUT --seed 0 --n PER_MAP [--one-style] [--keep KEEP]
    [--pixel-filter M] [--resample hard]`` (resumable); the filter measures with the synthetic evaluator."""
    gen = load_generator(ckpt, device)
    if gen.cfg.data.kind != "synthetic":
        raise SystemExit(f"{ckpt}: trained on {gen.cfg.data.kind}; the downstream test runs on the synthetic preset")
    scorer, note = make_scorer(gen, "own", required=keep is not None)
    measure = real_statistics(gen.cfg, gen.device) if pixel_filter is not None or resample is not None else None
    synthesize_folder(gen, maps, out, n=per_map, seed=0, keep=keep, scorer=scorer, note=note,
                      batch_size=batch_size, progress=False, log=lambda m: print(f"[downstream] {m}", file=sys.stderr),
                      one_style=one_style, pixel_filter=pixel_filter, resample=resample, measure=measure)
    return out


# ------------------------------------------------------------------------------------- the segmenter


def train_segmenter(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int,
                    device: torch.device, mix: tuple[int, int] | None = None, init: EvalNet | None = None) -> EvalNet:
    """An ``EvalNet`` trained on (images, labels) by the synthetic evaluator's recipe (``mix``: balanced batches;
    ``init``: fine-tune this net; see :func:`usis.metrics.synthetic_eval.fit.fit_evalnet`)."""
    height, width = images.shape[-2:]
    f = height / work_size(height, width)[0]
    ch, cw = min(height, round(CROP[0] * f)), min(width, round(CROP[1] * f))
    return fit_evalnet(images, labels, steps, seed, (ch, cw), device, mix=mix, init=init)[0].eval()


@torch.no_grad()
def evaluate(net: EvalNet, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """mIoU (percent, over the classes in labels or prediction) and IoU per class on the test photos, with
    the evaluator's test-time flip; the don't-care id is neither scored nor predicted."""
    cm = ConfusionMatrix(NUM_CLASSES, ignore_index=DONTCARE)
    for i in range(0, len(images), 64):
        x = images[i:i + 64].to(device).contiguous(memory_format=torch.channels_last)
        logits = 0.5 * (net(x) + net(x.flip(-1)).flip(-1))
        logits[:, DONTCARE] = -math.inf
        cm.update(logits.argmax(1).cpu(), labels[i:i + 64])
    iou = cm.iou()
    return {"miou": cm.miou(over="union"), "pixel_accuracy": cm.pixel_accuracy(),
            "iou": {CLASS_NAMES[c]: float(iou[c]) * 100.0 for c in REAL_CLASSES}}


# ------------------------------------------------------------------------------------------- the study


def protocol(args, size: tuple[int, int]) -> dict:
    return {"maps": args.maps, "per_map": args.per_map, "keep": args.keep, "few": args.few,
            "few_small": args.few_small, "test": args.test, "steps": args.steps, "size": list(size),
            "pool_seed": POOL_SEED, "segmenter_seed": SEGMENTER_SEED, "filter_margin": FILTER_MARGIN,
            "resample_n": RESAMPLE_N, "version": 2}


def digest(path: str) -> str:
    from usis.checkpoint import find_checkpoint

    p = find_checkpoint(path) or Path(path)
    h = hashlib.sha256()
    target = p / "generator.safetensors" if p.is_dir() else p
    with open(target, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_study(args) -> dict[str, dict[int, dict]]:
    device = resolve_device(args.device, setting="--device")
    sizes = {load_generator(c, "cpu").size for c in args.checkpoints}
    if len(sizes) != 1:
        raise SystemExit(f"the checkpoints make images of different sizes ({sorted(sizes)}): use one preset")
    height, width = sizes.pop()
    proto = protocol(args, (height, width))
    work = Path(args.work)
    t0 = time.perf_counter()
    pool_images, pool_labels = paired(args.maps, height, width, "train")
    test_images, test_labels = paired(args.test, height, width, "test")
    maps = write_maps(pool_labels, work / "maps")
    print(f"[downstream] pool of {args.maps} pairs and {args.test} test photos at {height}x{width} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    few = min(args.few, args.maps)
    results: dict[str, dict[int, dict]] = {r: {} for r in ROWS}
    for i, ckpt in enumerate(args.checkpoints):
        if args.only is not None and i not in args.only:
            continue
        ident = {"protocol": proto, "checkpoint": str(Path(ckpt).resolve()), "digest": digest(ckpt), "seed": i}
        data = None
        nets: dict[str, EvalNet] = {}
        for row in args.rows:
            path = work / "results" / row / f"seed{i}.json"
            if path.is_file():
                old = json.loads(path.read_text())
                if {k: old.get(k) for k in ident} == ident:
                    results[row][i] = old
                    continue
            if data is None:
                data = _row_data(ckpt, i, maps, work, pool_images, pool_labels, few, args, device)
            images, labels, mix, init = data[row]
            t = time.perf_counter()
            start = None
            if init is not None:  # fine-tuning: the row's segmenter first (the same net as that row's)
                if init not in nets:
                    img0, lab0, mix0, _ = data[init]
                    nets[init] = train_segmenter(img0, lab0, args.steps, SEGMENTER_SEED + i, device, mix0)
                start = nets[init]
            steps = 2 * args.steps if row in LONGER else args.steps
            net = train_segmenter(images, labels, steps, SEGMENTER_SEED + i, device, mix, start)
            if row == RECIPE:
                nets[row] = net
            res = {**ident, "row": row, "train_pairs": len(images), **evaluate(net, test_images, test_labels, device),
                   "train_seconds": time.perf_counter() - t}
            if row in data.get("ignored", {}):
                res["ignored"] = data["ignored"][row]
            if row in data["scores"]:
                res["s_score"] = data["scores"][row]
            atomic_write(path, json.dumps(res, indent=1) + "\n")
            results[row][i] = res
            print(f"[downstream] seed {i} {row:>14}: mIoU {res['miou']:.2f} ({len(images)} pairs, "
                  f"{res['train_seconds']:.0f} s)", file=sys.stderr)
    return results


def _row_data(ckpt, i, maps, work, pool_images, pool_labels, few, args, device) -> dict:
    """Each row's training set ``(images, labels, mix, init)`` (``mix``: balanced batches; ``init``: the row whose
    segmenter this one fine-tunes), the S scores of the one-style sets and the ignored share of the filtered."""
    synth = work / "synth" / f"g{i}"
    b = args.batch_size
    make = {"usis_all": lambda: synthesize(ckpt, maps, synth / "all", None, args.per_map, device, b),
            "usis_kept": lambda: synthesize(ckpt, maps, synth / "kept", args.keep, args.per_map, device, b),
            "usis_seeds": lambda: synthesize(ckpt, maps, synth / "seeds", None, args.per_map, device, b,
                                             one_style=False),
            "usis_filtered": lambda: synthesize(ckpt, maps, synth / "filtered", None, args.per_map, device, b,
                                                one_style=False, pixel_filter=FILTER_MARGIN),
            "usis_resampled": lambda: synthesize(ckpt, maps, synth / "resampled", None, RESAMPLE_N, device, b,
                                                 one_style=False, resample="hard"),
            "usis_filtered_resampled": lambda: synthesize(ckpt, maps, synth / "filtered_resampled", None, RESAMPLE_N,
                                                          device, b, one_style=False, pixel_filter=FILTER_MARGIN,
                                                          resample="hard")}
    # only the sets the requested rows need (--rows): the mixing rows take the recipe's set and the one-style set
    needed = {r for r in args.rows if r in make}
    if any(r.startswith("few") for r in args.rows):
        needed |= {RECIPE, "usis_all"}
    if "usis_all" in needed:
        needed.add("usis_kept")  # its S scores are reported beside the one-style set's
    dirs = {row: make[row]() for row in make if row in needed}
    sets = {row: read_pairs(d) for row, d in dirs.items()}
    every = manifest(dirs["usis_kept"]) if "usis_kept" in dirs else []

    def mean_score(rows):
        vals = [r["score"]["miou"] for r in rows if r["score"] is not None]
        return statistics.fmean(vals) if vals else math.nan

    def ignored_share(rows):  # the share of all pixels written as the ignore id
        total = sum(sum(r["pixels"].values()) for r in rows)
        dropped = sum(r["pixels"][c] * f for r in rows for c, f in r["ignored"].items())
        return dropped / total if total else math.nan

    rejected = [r for r in every if not r["kept"]]
    if i == 0 and "usis_all" in sets:
        pairs_grid(dirs["usis_all"], sets["usis_all"][2], Path(args.report_dir) / f"{args.name}_pairs.png")
    out = {
        "oracle": (pool_images, pool_labels, None, None),
        "no_translation": (painted(pool_labels), pool_labels, None, None),
        **{row: (img, lab, None, None) for row, (img, lab, _) in sets.items()},
        "scores": {},
        "ignored": {row: ignored_share(sets[row][2]) for row in ("usis_filtered", "usis_filtered_resampled")
                    if row in sets},
    }
    if "usis_all" in sets:
        out["few_real+usis"] = (torch.cat([pool_images[:few], sets["usis_all"][0]]),
                                torch.cat([pool_labels[:few], sets["usis_all"][1]]), None, None)
        out["scores"] = {"usis_all": {"mean": mean_score(sets["usis_all"][2])},
                         "usis_kept": {"mean_kept": mean_score(sets["usis_kept"][2]),
                                       "mean_rejected": mean_score(rejected), "kept": len(sets["usis_kept"][2]),
                                       "rejected": len(rejected)}}
    if RECIPE not in sets:
        return out
    r_img, r_lab, _ = sets[RECIPE]
    for k, name in ((min(args.few_small, args.maps), "few10"), (few, "few50")):
        real_img, real_lab = pool_images[:k], pool_labels[:k]
        out["few_real" if name == "few50" else name] = (real_img, real_lab, None, None)
        out[f"{name}_2x"] = (real_img, real_lab, None, None)
        union = (torch.cat([real_img, r_img]), torch.cat([real_lab, r_lab]))
        out[f"{name}+usis"] = (*union, None, None)
        out[f"{name}+usis_half"] = (*union, (k, 4), None)
        out[f"{name}_ft"] = (real_img, real_lab, None, RECIPE)
    return out


def filter_grid(work: Path, path: Path, k: int = 8) -> None:
    """The pixel filter at work (first generator, first ``k`` maps of ``usis_filtered``): the map | the USIS
    image | the label written for it (pixels over the margin in the don't-care colour, black)."""
    folder = work / "synth" / "g0" / "filtered"
    if not (folder / "manifest.jsonl").is_file():
        return
    rows = manifest(folder)[:k]
    imgs, maps, written = [], [], []
    for r in rows:
        with Image.open(folder / r["image"]) as im:
            imgs.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()))
        with Image.open(work / "maps" / r["source"]) as im:
            maps.append(torch.from_numpy(np.asarray(im).astype(np.int64)))
        with Image.open(folder / r["label"]) as im:
            written.append(torch.from_numpy(np.asarray(im).astype(np.int64)))
    save_grid([painted(torch.stack(maps)), torch.stack(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
               painted(torch.stack(written))], path)


def pairs_grid(folder: Path, rows: list[dict], path: Path, k: int = 6) -> None:
    """The best and the worst ``k`` pairs by S score: label colours | image, best on the left."""
    scored = sorted((r for r in rows if r["score"] is not None), key=lambda r: -r["score"]["miou"])
    if len(scored) < 2:
        return
    k = min(k, len(scored) // 2)
    cols = []
    for sel in (scored[:k], scored[-k:]):
        imgs, labs = [], []
        for r in sel:
            with Image.open(folder / r["image"]) as im:
                imgs.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()))
            with Image.open(folder / r["label"]) as im:
                labs.append(torch.from_numpy(np.asarray(im).astype(np.int64)))
        cols += [painted(torch.stack(labs)), torch.stack(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0]
    save_grid(cols, path)


# ------------------------------------------------------------------------------------------- reporting


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: dict[str, dict[int, dict]]) -> dict[str, dict]:
    agg = {}
    for row, seeds in results.items():
        if not seeds:
            continue
        runs = list(seeds.values())
        agg[row] = {"n": len(runs), "miou": mean_std([r["miou"] for r in runs]),
                    "pixel_accuracy": mean_std([r["pixel_accuracy"] for r in runs]),
                    "train_pairs": statistics.fmean(r["train_pairs"] for r in runs),
                    "iou": {c: mean_std([r["iou"][c] for r in runs]) for c in runs[0]["iou"]},
                    "seeds": {str(s): r["miou"] for s, r in seeds.items()}}
        if "s_score" in runs[0]:
            agg[row]["s_score"] = {k: statistics.fmean(r["s_score"][k] for r in runs) for k in runs[0]["s_score"]}
        if "ignored" in runs[0]:
            agg[row]["ignored"] = [r["ignored"] for r in runs]
    return agg


ABOUT = {
    "oracle": "real photos, true labels",
    "no_translation": "label maps in palette colours",
    "usis_all": "USIS images, all pairs, one seed for every map",
    "usis_kept": "USIS images, kept by S score, one seed",
    "usis_seeds": "USIS images, a seed per map",
    "usis_filtered": "per-map seeds, pixel filter 1.25",
    "usis_resampled": f"per-map seeds, hard maps re-sampled (1-{RESAMPLE_N})",
    "usis_filtered_resampled": "per-map seeds, filtered and re-sampled",
    "few10": "10 real pairs alone",
    "few10_2x": "10 real pairs alone, twice the steps (as the fine-tuned row in all)",
    "few10+usis": "10 real + filtered/re-sampled USIS, uniform union",
    "few10+usis_half": "10 real + filtered/re-sampled USIS, half of each batch real",
    "few10_ft": "filtered/re-sampled USIS, then fine-tuned on 10 real",
    "few_real": "50 real pairs alone",
    "few50_2x": "50 real pairs alone, twice the steps (as the fine-tuned row in all)",
    "few_real+usis": "50 real + one-style USIS, uniform union (as before)",
    "few50+usis": "50 real + filtered/re-sampled USIS, uniform union",
    "few50+usis_half": "50 real + filtered/re-sampled USIS, half of each batch real",
    "few50_ft": "filtered/re-sampled USIS, then fine-tuned on 50 real",
}


def _pm(t: tuple[float, float], digits: int = 2) -> str:
    return "-" if math.isnan(t[0]) else f"{t[0]:.{digits}f} +- {t[1]:.{digits}f}"


def markdown(agg: dict, proto: dict, checkpoints: list[str], name: str) -> str:
    classes = [CLASS_NAMES[c] for c in REAL_CLASSES]
    lines = [f"# Downstream test of `usis synthesize` (`{name}`)", "",
             f"Command: `python benchmarks/downstream.py --checkpoints {' '.join(checkpoints)} --maps {proto['maps']} "
             f"--per-map {proto['per_map']} --keep {proto['keep']} --few {proto['few']} "
             f"--few-small {proto['few_small']} --test {proto['test']} "
             f"--steps {proto['steps']}`. One EvalNet per row and seed, {proto['steps']} steps of 8, evaluated on "
             f"{proto['test']} held-out real photos ({proto['size'][0]}x{proto['size'][1]}); mean +- std over "
             f"{len(checkpoints)} seeds (generator checkpoint i with segmenter seed i).", "",
             "| row | training set | pairs | mIoU (%) | pixel acc. (%) | / oracle |", "|---|---|---:|---:|---:|---:|"]
    oracle = agg.get("oracle", {}).get("miou", (math.nan, 0))[0]
    for row, a in agg.items():
        ratio = a["miou"][0] / oracle if oracle and not math.isnan(oracle) else math.nan
        lines.append(f"| {row} | {ABOUT[row]} | {a['train_pairs']:.0f} | {_pm(a['miou'])} | "
                     f"{_pm(a['pixel_accuracy'])} | {ratio:.3f} |")
    lines += ["", "IoU per class (%), mean +- std:", "",
              "| row | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for row, a in agg.items():
        lines.append(f"| {row} | " + " | ".join(_pm(a["iou"][c], 1) for c in classes) + " |")
    if "usis_kept" in agg and "s_score" in agg["usis_kept"]:
        s = agg["usis_kept"]["s_score"]
        lines += ["", f"S score (mIoU % of the checkpoint's S on each USIS image vs its map) of the kept pairs "
                      f"{s['mean_kept']:.1f}, of the rejected {s['mean_rejected']:.1f} ({s['kept']:.0f} kept, "
                      f"{s['rejected']:.0f} rejected per seed)."]
    if "few_real" in agg and "few_real+usis" in agg:
        d = agg["few_real+usis"]["miou"][0] - agg["few_real"]["miou"][0]
        lines += ["", f"few real + USIS minus few real alone: {d:+.2f} mIoU points."]
    for k, alone in (("10", "few10"), ("50", "few_real")):
        if alone not in agg:
            continue
        diffs = [f"{row} {agg[row]['miou'][0] - agg[alone]['miou'][0]:+.2f}"
                 for row in (f"few{k}_2x", f"few{k}+usis", f"few{k}+usis_half", f"few{k}_ft") if row in agg]
        if diffs:
            lines += ["", f"Against {k} real pairs alone (mIoU points): " + ", ".join(diffs) + "."]
    ign = {row: statistics.fmean(v for v in agg[row]["ignored"] if not math.isnan(v))
           for row in agg if "ignored" in agg[row]}
    if ign:
        lines += ["", "Pixels written as the ignore id by the pixel filter: " + ", ".join(
            f"{row} {100 * v:.1f} %" for row, v in ign.items()) + "."]
    lines += ["", f"Plot: `{name}.png`; best and worst pairs by S score (first generator, one style): "
                  f"`{name}_pairs.png`; the pixel filter at work (first generator: map | image | label written, "
                  f"ignored pixels black): `{name}_filtered.png`."]
    return "\n".join(lines) + "\n"


def plot(agg: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("[downstream] matplotlib is not installed: no plot", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(agg)
    classes = [CLASS_NAMES[c] for c in REAL_CLASSES]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 2.2]})
    for j, row in enumerate(rows):
        mean, std = agg[row]["miou"]
        ax0.bar(j, mean, yerr=std, color=plt.cm.tab20(j % 20), capsize=3)
        ax0.scatter([j] * len(agg[row]["seeds"]), list(agg[row]["seeds"].values()), color="k", s=8, zorder=3)
    ax0.set_xticks(range(len(rows)), rows, rotation=30, ha="right", fontsize=8)
    ax0.set_ylabel("mIoU on real test photos (%)")
    ax0.grid(axis="y", alpha=0.3)
    width = 0.8 / max(1, len(rows))
    for j, row in enumerate(rows):
        xs = [c + (j - (len(rows) - 1) / 2) * width for c in range(len(classes))]
        ax1.bar(xs, [agg[row]["iou"][c][0] for c in classes], width, yerr=[agg[row]["iou"][c][1] for c in classes],
                color=plt.cm.tab20(j % 20), label=row, capsize=1.5)
    ax1.set_xticks(range(len(classes)), classes, fontsize=8)
    ax1.set_ylabel("IoU (%)")
    ax1.legend(fontsize=7, ncol=3)
    ax1.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: dict, args, size: tuple[int, int]) -> str:
    agg = aggregate(results)
    if not agg:
        return "(no results yet)"
    proto = protocol(args, size)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(agg, proto, args.checkpoints, args.name)
    atomic_write(out / f"{args.name}.md", text)
    atomic_write(out / f"{args.name}.json", json.dumps({"protocol": proto, "checkpoints": args.checkpoints,
                                                        "rows": agg}, indent=1) + "\n")
    plot(agg, out / f"{args.name}.png", f"{args.name}: segmenter trained on each row, tested on real photos")
    filter_grid(Path(args.work), out / f"{args.name}_filtered.png")
    return text


def _rows(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    return [r for r in ROWS if r in names]


def saved_results(args, seeds) -> dict[str, dict[int, dict]]:
    """The results in ``--work`` of these seed indices (row -> seed -> result), as a run left them."""
    results: dict[str, dict[int, dict]] = {r: {} for r in ROWS}
    for r in ROWS:
        for i in seeds:
            p = Path(args.work) / "results" / r / f"seed{i}.json"
            if p.is_file():
                results[r][i] = json.loads(p.read_text())
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True,
                    help="USIS generators of the synthetic preset (training checkpoints or run folders: their S "
                         "scores the filter), one per seed")
    ap.add_argument("--maps", type=int, default=TRAIN_IMAGES, help="label maps in the pool (default %(default)s)")
    ap.add_argument("--per-map", type=int, default=1, help="USIS images per label map (default 1)")
    ap.add_argument("--keep", type=float, default=0.7, help="usis_kept: the fraction kept (default 0.7)")
    ap.add_argument("--few", type=int, default=50, help="real pairs of the few_real / few50 rows (default 50)")
    ap.add_argument("--few-small", type=int, default=10, help="real pairs of the few10 rows (default 10)")
    ap.add_argument("--test", type=int, default=200, help="held-out real test photos (default 200)")
    ap.add_argument("--steps", type=int, default=TRAIN_STEPS, help="training steps per row (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="synthesis batch (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu (default), auto, cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch's default)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "downstream" / "work"), help="work folder (reused)")
    ap.add_argument("--report-dir", default=str(ROOT / "docs" / "results"), help="table and plots go here")
    ap.add_argument("--name", default="downstream", help="report file names (default downstream)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; tabulate the results in --work")
    ap.add_argument("--rows", type=_rows, default=list(ROWS),
                    metavar="A,B", help="compute only these rows (e.g. oracle,usis_seeds: the USIS-only row and its "
                                        "upper bound), then tabulate whatever --work holds")
    ap.add_argument("--only", type=lambda t: {int(x) for x in t.split(",")}, default=None, metavar="I,J",
                    help="compute only these seed indices (0-based; e.g. two processes side by side), then tabulate "
                         "whatever --work holds")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = load_generator(args.checkpoints[0], "cpu").size
    if args.report_only:
        results = saved_results(args, range(len(args.checkpoints)))
    else:
        results = run_study(args)
        if args.only is not None:  # the other seeds' results, from --work
            others = saved_results(args, [i for i in range(len(args.checkpoints)) if i not in args.only])
            for r in ROWS:
                results[r].update(others[r])
    print(report(results, args, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
