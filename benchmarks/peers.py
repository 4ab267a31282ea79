"""The peers on the synthetic benchmark (issue 33): CUT, FastCUT and CycleGAN run from their own code beside usis,
every method scored by the same tools.

Steps (each resumable; ``all`` runs them in order):

1. ``prepare``: the synthetic benchmark's unpaired training streams as the peers read them (``unaligned``):
   ``trainA`` = the label stream's maps in the palette's colours (exact colours, no resize), ``trainB`` = the photo
   stream (``--train-images`` of each; default 1,500), ``testA`` = the 200 validation maps the synthetic evaluation
   scores (palette colours), ``testB`` = the 200 validation photos.
2. ``train``: each method's own ``train.py`` (``benchmarks/peers/<code>/``, fetched by ``get_peers.sh``), on the
   CPU (``--gpu_ids -1``), ``--preprocess none`` at 64x128, batch 1, ``--ngf/--ndf --width`` (16 by default: ``flops``
   prints the forward FLOPs of their networks at a width beside the preset's: at 64x128 their G is 1.06 GFLOP
   at 16 and 16.0 at their default 64, the preset's G 0.72; their D 0.10 at 16, the preset's 0.29), for ``--images`` training images (default 9,000: the synthetic preset's 4,500 steps at
   batch 2), the learning rate decayed to 0 over the last third (their linear policy). The global RNG is seeded
   (``--seed``) before their script runs; nothing of theirs is changed. On a CPU their DataParallel wrapper saves
   weights with a ``module.`` prefix their own ``test.py`` cannot load: the prefix is stripped after training.
3. ``test``: their ``test.py`` on ``testA`` (``--num_test 200``): one image per validation map, no noise (neither
   CUT nor CycleGAN takes any: no MS-SSIM between samples for them).
4. ``score``: every method's 200 images (and usis checkpoints given with ``--usis NAME=CKPT``, image i with the
   evaluation's seed ``EVAL_SEED + i``, as written to 8 bits like the peers' PNGs) through the same tools: the
   synthetic evaluator's mIoU / ceiling and per-class IoU, sFID, and the realism measure (``usis.metrics.c2st``,
   against the 200 validation photos), and for usis, which draws noise, MS-SSIM between samples as the periodic
   evaluation measures it (10 maps x 20 samples); the palette images themselves as a row (no translation).
5. ``downstream``: the downstream study's USIS-only row for every method, by ``benchmarks/downstream.py``'s own
   protocol and functions (nothing re-implemented): its pool of 800 label maps (a paired stream no training stream
   draws from) written in the palette's colours as a test set of theirs (``pool/testA``), translated by their
   ``test.py``; usis checkpoints synthesize the same maps with a noise seed per map (``usis_seeds``); the palette
   images (``no_translation``) and the pool's real photos (``oracle``) as bounds. One fixed segmenter (the
   evaluator's net and recipe, seed ``SEGMENTER_SEED + seed``) per row and seed, scored on 200 held-out real photos.
   A usis row that ``downstream.py`` already measured (the same checkpoint by content, seed and protocol, under
   ``runs/downstream/``) is taken from there, not recomputed.
6. ``report``: a table (mean +- std over seeds) and a grid (the same maps through every method) in ``--report``,
   and every seed's figures in JSON beside it.

    bash benchmarks/get_peers.sh                                     # the peers' code, into benchmarks/peers/
    python benchmarks/peers.py all --methods cut fastcut cyclegan --seeds 0 1 2 --work runs/peers \\
        --usis "usis (paper recipe)@0=runs/ds/g0/checkpoints/latest.pt" --report docs/results/peers.md
    python benchmarks/peers.py train --methods cut --seeds 0 --images 200 --work /tmp/peers   # a smoke run
    python benchmarks/peers.py downstream --methods cut --seeds 0 1 2 --usis "usis@0=runs/ds/g0" ...  # the row
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
HEIGHT, WIDTH = 64, 128
# method -> (checkout under benchmarks/peers, their model options)
METHODS = {
    "cut": ("cut", ["--model", "cut", "--CUT_mode", "CUT"]),
    "fastcut": ("cut", ["--model", "cut", "--CUT_mode", "FastCUT"]),
    "cyclegan": ("cyclegan", ["--model", "cycle_gan"]),
    # the same authors' CycleGAN model as it ships in CUT's code (where the CycleGAN checkout cannot be fetched)
    "cyclegan_cut": ("cut", ["--model", "cycle_gan"]),
}
FETCH = "bash benchmarks/get_peers.sh"
# Run before their script, for a method whose code does not run as shipped. The CycleGAN model in CUT's code is an
# older copy that no longer fits CUT's scripts in two places: its ``data_dependent_initialize`` takes no ``data``
# (a no-op, ``return``) though CUT's train.py and test.py pass it, and it reads ``opt.amp`` (apex mixed precision),
# an option CUT's parsers no longer define. The shim gives their no-op the argument their scripts pass and the
# option its only possible value here (off); nothing they compute changes.
SHIMS = {
    "cyclegan_cut": "import models.cycle_gan_model as _m\n"
                    "_m.CycleGANModel.data_dependent_initialize = lambda self, data=None: None\n"
                    "_init = _m.CycleGANModel.__init__\n"
                    "def _no_amp(self, opt):\n"
                    "    opt.amp = getattr(opt, 'amp', False)\n"
                    "    _init(self, opt)\n"
                    "_m.CycleGANModel.__init__ = _no_amp\n",
}


class PeersError(Exception):
    pass


# ------------------------------------------------------------------------------------------- 1. prepare


def _palette_png(label: torch.Tensor, path: Path) -> None:
    from usis.data.synthetic import labels_to_rgb

    Image.fromarray(labels_to_rgb(label.numpy())).save(path)


def _photo_png(image: torch.Tensor, path: Path) -> None:
    from usis.utils.images import to_uint8

    Image.fromarray(to_uint8(image)).save(path)


def evaluation_set(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation maps and photos the synthetic preset's evaluation scores (the trainer's val bundle)."""
    from usis.config import get_preset
    from usis.data import build_datasets
    from usis.data.synthetic import stack

    val = build_datasets(get_preset("synthetic"), "val")
    return stack(val.labels, "label", n), stack(val.photos, "image", n)


def prepare(work: Path, train_images: int) -> Path:
    from usis.config import get_preset
    from usis.data import build_datasets

    data = work / "data"
    done = data / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("train_images") == train_images:
        return data
    cfg = get_preset("synthetic")
    cfg.data.flip = False  # the peers flip on their own
    train = build_datasets(cfg, "train")
    labels, photos = evaluation_set()
    for sub in ("trainA", "trainB", "testA", "testB"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for i in range(train_images):
        _palette_png(train.labels[i]["label"], data / "trainA" / f"{i:05d}.png")
        _photo_png(train.photos[i]["image"], data / "trainB" / f"{i:05d}.png")
    for i in range(len(labels)):
        _palette_png(labels[i], data / "testA" / f"{i:05d}.png")
        _photo_png(photos[i], data / "testB" / f"{i:05d}.png")
    done.write_text(json.dumps({"train_images": train_images}))
    return data


# -------------------------------------------------------------------------------------- 2. train, 3. test


def checkout(method: str) -> Path:
    code = PEERS / METHODS[method][0]
    if not (code / "train.py").is_file():
        raise PeersError(f"{code} is missing: fetch the peers' code with `{FETCH}` (for {method})")
    return code


def _run_theirs(code: Path, script: str, args: list[str], seed: int, log: Path, shim: str = "") -> None:
    """Their ``script`` as ``python script args``, run from their checkout, the global RNGs seeded first (and
    ``shim``, from ``SHIMS``, run before it)."""
    boot = (f"import random, sys, numpy, torch; random.seed({seed}); numpy.random.seed({seed}); "
            f"torch.manual_seed({seed})\n{shim}import runpy; sys.argv = [{script!r}] + sys.argv[1:]; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONHASHSEED=str(seed), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log, "a") as f:
        f.write(f"$ {script} {shlex.join(args)}\n")
        f.flush()
        rc = subprocess.call([sys.executable, "-c", boot, *args], cwd=code, stdout=f, stderr=subprocess.STDOUT,
                             env=env)
    if rc:
        tail = log.read_text().splitlines()[-5:]
        hint = " (their code needs `pip install dominate`)" if any("dominate" in t for t in tail) else ""
        raise PeersError(f"{script} of {code.name} failed (exit {rc}){hint}; see {log}:\n  " + "\n  ".join(tail))


def _common(method: str, data: Path, work: Path, name: str, width: int) -> list[str]:
    args = ["--dataroot", str(data.resolve()), "--name", name, "--checkpoints_dir", str((work / "checkpoints").resolve()),
            "--gpu_ids", "-1", "--preprocess", "none", "--batch_size", "1", "--ngf", str(width), "--ndf", str(width),
            "--num_threads", "0", *METHODS[method][1]]
    if method in ("cut", "fastcut"):
        args += ["--netF_nc", str(4 * width)]
    return args


def train(method: str, seed: int, data: Path, work: Path, images: int, train_images: int, width: int) -> Path:
    name = run_name(method, seed, width)
    out = work / "checkpoints" / name
    if (out / "done.json").is_file():
        return out
    code = checkout(method)
    epochs = max(1, round(images / train_images))
    decay = max(1, epochs // 3)  # their linear policy: the rate falls to 0 over the last third of the epochs
    args = _common(method, data, work, name, width) + [
        "--n_epochs", str(epochs - decay), "--n_epochs_decay", str(decay), "--display_id", "0", "--no_html",
        "--print_freq", "500", "--save_epoch_freq", str(epochs), "--save_latest_freq", str(10 ** 9)]  # saved at the end
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _run_theirs(code, "train.py", args, seed, out / "train.log", SHIMS.get(method, ""))
    for weights in out.glob("*.pth"):  # their DataParallel wrapper on a CPU: a "module." prefix test.py cannot load
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if any(k.startswith("module.") for k in state):
            torch.save({k.removeprefix("module."): v for k, v in state.items()}, weights)
    (out / "done.json").write_text(json.dumps({"seconds": time.time() - t0, "images": epochs * train_images,
                                               "epochs": epochs, "decay_epochs": decay, "args": args}))
    return out


def run_name(method: str, seed: int, width: int) -> str:
    """A peer run's name: its checkpoint and results folders."""
    return f"{method}_w{width}_seed{seed}"


def usis_rows(usis: dict[str, str]) -> list[tuple[str, int, str]]:
    """``--usis NAME[@SEED]=CKPT`` items as (row, seed, checkpoint); no ``@SEED`` is seed 0."""
    return [(name.rsplit("@", 1)[0], int(name.rsplit("@", 1)[1]) if "@" in name else 0, ckpt)
            for name, ckpt in usis.items()]


def trained_runs(work: Path, methods: list[str], seeds: list[int], width: int) -> list[tuple[str, int]]:
    """The (method, seed) runs whose training finished; the others are named and left out (``train`` makes them)."""
    done = [(m, s) for m in methods for s in seeds if (work / "checkpoints" / run_name(m, s, width) / "done.json").is_file()]
    missing = [f"{m} seed {s}" for m in methods for s in seeds if (m, s) not in done]
    if missing:
        print(f"[peers] not trained yet, left out: {', '.join(missing)}", file=sys.stderr)
    return done


def test(method: str, seed: int, data: Path, work: Path, width: int) -> Path:
    name = run_name(method, seed, width)
    images = work / "results" / name / "test_latest" / "images" / "fake_B"
    if len(list(images.glob("*.png"))) >= 200:
        return images
    args = _common(method, data, work, name, width) + [
        "--results_dir", str((work / "results").resolve()), "--phase", "test", "--epoch", "latest", "--num_test", "200"]
    _run_theirs(checkout(method), "test.py", args, seed, work / "checkpoints" / name / "test.log", SHIMS.get(method, ""))
    return images


# ------------------------------------------------------------------------------------ the width: flops


def flops(widths: list[int]) -> list[str]:
    """Forward FLOPs per 64x128 image of CUT's generator and discriminator (its code, their defaults but the
    width) beside the synthetic preset's G and D: the basis of ``--width``."""
    from torch.utils.flop_counter import FlopCounterMode

    from usis.config import get_preset
    from usis.nn.build import build_networks
    from usis.nn.generator import one_hot_labels

    def count(net, *inputs):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            net(*inputs)
        return fc.get_total_flops() / 1e9

    x = torch.zeros(1, 3, HEIGHT, WIDTH)
    nets = build_networks(get_preset("synthetic").sync())
    m = one_hot_labels(torch.zeros(1, HEIGHT, WIDTH, dtype=torch.long), nets.G.num_classes)
    lines = [f"usis, the synthetic preset: G {count(nets.G.eval(), m):.3f} GFLOP, D {count(nets.D, x):.3f} GFLOP"]
    sys.path.insert(0, str(checkout("cut")))
    from models import networks  # lazy: their code, from their checkout

    for w in widths:
        G = networks.define_G(3, 3, w, "resnet_9blocks", "instance", False, "xavier", 0.02, False, False, [])
        D = networks.define_D(3, w, "basic", 3, "instance", "xavier", 0.02, False, [])
        lines.append(f"CUT's code, --ngf {w} --ndf {w}: G {count(G, x):.3f} GFLOP, D {count(D, x):.3f} GFLOP")
    return lines


# ------------------------------------------------------------------------------------------- 4. score


def _load_pngs(folder: Path, n: int) -> torch.Tensor:
    paths = sorted(folder.glob("*.png"))[:n]
    if len(paths) < n:
        raise PeersError(f"{folder}: {len(paths)} images, expected {n}")
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])


def score(images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """uint8 ``N x 3 x H x W`` images for ``labels`` against the real validation photos."""
    from usis.metrics.c2st import as_written, classifier_two_sample_test
    from usis.metrics.synthetic_eval import SyntheticEvaluator

    ev = SyntheticEvaluator.load_or_train(HEIGHT, WIDTH)
    out = ev.evaluate(images.float() / 127.5 - 1, labels, real)
    out["miou_ratio"] = out["miou"] / out["miou_ceiling"]
    out.update(classifier_two_sample_test(as_written(real), images))
    return {k: float(v) for k, v in out.items()}


def usis_images(checkpoint: str, labels: torch.Tensor) -> torch.Tensor:
    from usis.generate import generate_images, load_generator
    from usis.metrics.c2st import as_written
    from usis.metrics.synthetic_eval.fit import EVAL_SEED

    G = load_generator(checkpoint).G
    return as_written(generate_images(G, labels, list(range(EVAL_SEED, EVAL_SEED + len(labels)))))


def usis_diversity(checkpoint: str, labels: torch.Tensor) -> float:
    """MS-SSIM between samples, as the periodic evaluation measures it (its maps, samples per map and seeds)."""
    from usis.generate import generate_images, load_generator
    from usis.metrics.periodic import MSSSIM_MAPS, msssim_with

    G = load_generator(checkpoint).G
    return msssim_with(lambda batch, seeds: generate_images(G, batch, seeds), labels[:MSSSIM_MAPS])


def score_all(work: Path, methods: list[str], seeds: list[int], width: int, usis: dict[str, str]) -> dict:
    from usis.data.synthetic import labels_to_rgb

    labels, real = evaluation_set()
    scores_file = work / "scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    rows: dict[str, torch.Tensor] = {}
    todo: list[tuple[str, str, object]] = [("palette (no translation)", "-", None)]
    todo += [(f"{m} (width {width})", str(s), (m, s)) for m, s in trained_runs(work, methods, seeds, width)]
    todo += [(row, str(seed), ckpt) for row, seed, ckpt in usis_rows(usis)]
    for row, seed, what in todo:
        if what is None:
            images = torch.from_numpy(labels_to_rgb(labels.numpy())).permute(0, 3, 1, 2)
        elif isinstance(what, tuple):
            folder = work / "results" / run_name(*what, width) / "test_latest" / "images" / "fake_B"
            images = _load_pngs(folder, len(labels))
        else:
            images = usis_images(what, labels)
        rows.setdefault(row, images)
        key = f"{row}|{seed}"
        if key not in scores:
            scores[key] = {"row": row, "seed": seed, "source": str(what), **score(images, labels, real)}
            if isinstance(what, str):  # usis draws noise: its diversity (the peers and the palette have none)
                scores[key]["msssim"] = usis_diversity(what, labels)
            scores_file.write_text(json.dumps(scores, indent=1))
            print(f"[peers] {row} seed {seed}: mIoU / ceiling {scores[key]['miou_ratio']:.3f}, "
                  f"sFID {scores[key]['sfid']:.2f}, c2st {scores[key]['c2st']:.3f}", flush=True)
    grid_cols = [torch.from_numpy(labels_to_rgb(labels[:6].numpy())).permute(0, 3, 1, 2)]
    grid_cols += [v[:6] for k, v in rows.items() if k != "palette (no translation)"]
    grid_cols.append(((real[:6] + 1) * 127.5).round().to(torch.uint8))
    return {"scores": scores, "grid": grid_cols, "grid_rows": [k for k in rows if k != "palette (no translation)"]}


# ---------------------------------------------------------------------------------------- 5. downstream


def _downstream_protocol():
    """``benchmarks/downstream.py`` as a module: its pool, segmenter and scoring are the protocol, used as is."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import downstream  # lazy: a sibling script, importable only once benchmarks/ is on the path

    return downstream


def _measured_by_downstream(ds, checkpoint: str, seed: int) -> dict | None:
    """The ``usis_seeds`` result ``benchmarks/downstream.py`` already wrote for this checkpoint (by content) with
    this segmenter seed under the same protocol (``runs/downstream/*/results``): the same computation, not redone."""
    digest = ds.digest(checkpoint)
    want = {"maps": ds.TRAIN_IMAGES, "per_map": 1, "test": 200, "steps": ds.TRAIN_STEPS, "size": [HEIGHT, WIDTH],
            "pool_seed": ds.POOL_SEED, "segmenter_seed": ds.SEGMENTER_SEED}
    for path in sorted((ROOT / "runs" / "downstream").glob(f"*/results/usis_seeds/seed{seed}.json")):
        old = json.loads(path.read_text())
        if old.get("digest") == digest and old.get("seed") == seed and \
                all(old.get("protocol", {}).get(k) == v for k, v in want.items()):
            return {"path": str(path), "miou": old["miou"], "pixel_accuracy": old["pixel_accuracy"], "iou": old["iou"]}
    return None


def downstream_rows(work: Path, methods: list[str], seeds: list[int], width: int, usis: dict[str, str]) -> dict:
    """``row|seed -> {"miou", "iou", ...}``: a segmenter trained on each method's images of the downstream pool's
    maps, scored on the held-out real photos (resumable: ``work/downstream.json``)."""
    for m in methods:
        checkout(m)  # before an hour of work, not after it
    ds = _downstream_protocol()
    pool_images, pool_labels = ds.paired(ds.TRAIN_IMAGES, HEIGHT, WIDTH, "train")
    test_images, test_labels = ds.paired(200, HEIGHT, WIDTH, "test")
    root = work / "pool"
    ds.write_maps(pool_labels, root / "maps")
    for sub in ("testA", "testB"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("trainA", "trainB"):  # CUT's test.py also opens the training set (its data-dependent init)
        if not (root / sub).exists():
            (root / sub).symlink_to((work / "data" / sub).resolve(), target_is_directory=True)
    for i in range(len(pool_labels)):
        if not (root / "testB" / f"{i:05d}.png").is_file():
            _palette_png(pool_labels[i], root / "testA" / f"{i:05d}.png")
            _photo_png(pool_images[i], root / "testB" / f"{i:05d}.png")
    results_file = work / "downstream.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    todo: list[tuple[str, int, object]] = [("oracle (real photos)", s, "oracle") for s in seeds]
    todo += [("palette (no translation)", s, "palette") for s in seeds]
    todo += [(f"{m} (width {width})", s, (m, s)) for m, s in trained_runs(work, methods, seeds, width)]
    todo += usis_rows(usis)
    for row, seed, what in todo:
        key = f"{row}|{seed}"
        if key in results:
            continue
        if what == "oracle":
            images = pool_images
        elif what == "palette":
            images = ds.painted(pool_labels)
        elif isinstance(what, tuple):
            name = run_name(*what, width)
            out = work / "results_pool" / name / "test_latest" / "images" / "fake_B"
            if len(list(out.glob("*.png"))) < len(pool_labels):
                args = _common(what[0], root, work, name, width) + [
                    "--results_dir", str((work / "results_pool").resolve()), "--phase", "test", "--epoch", "latest",
                    "--num_test", str(len(pool_labels))]
                _run_theirs(checkout(what[0]), "test.py", args, what[1], work / "checkpoints" / name / "test_pool.log",
                            SHIMS.get(what[0], ""))
            images = _load_pngs(out, len(pool_labels)).float() / 127.5 - 1
        elif (done := _measured_by_downstream(ds, str(what), seed)) is not None:
            results[key] = {"row": row, "seed": str(seed), "source": str(what), "reused": done.pop("path"), **done}
            results_file.write_text(json.dumps(results, indent=1))
            print(f"[peers] downstream {row} seed {seed}: mIoU {results[key]['miou']:.1f} (downstream.py's)", flush=True)
            continue
        else:
            synth = ds.synthesize(str(what), root / "maps", work / "synth_pool" / f"{row}_seed{seed}".replace(" ", "_")
                                  .replace("/", "_"), None, 1, torch.device("cpu"), 16, one_style=False)
            images, labels, _ = ds.read_pairs(synth)
            if not torch.equal(labels, pool_labels):
                raise PeersError(f"{synth}: its label maps are not the pool's (remove the folder and rerun)")
        t = time.perf_counter()
        net = ds.train_segmenter(images, pool_labels, ds.TRAIN_STEPS, ds.SEGMENTER_SEED + seed, torch.device("cpu"))
        results[key] = {"row": row, "seed": str(seed), "source": str(what),
                        **ds.evaluate(net, test_images, test_labels, torch.device("cpu")),
                        "train_seconds": time.perf_counter() - t}
        results_file.write_text(json.dumps(results, indent=1))
        print(f"[peers] downstream {row} seed {seed}: mIoU {results[key]['miou']:.1f}", flush=True)
    return results


# ------------------------------------------------------------------------------------------- 6. report

CLASSES = ("sky", "road", "building", "tree", "car", "sidewalk", "pole", "person", "sign")


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} +- {statistics.stdev(values):.2g}"


DOWNSTREAM_CLASSES = ("car", "person", "sign", "pole")


def downstream_table(results: dict) -> list[str]:
    """The downstream row per method: mIoU on real photos (mean +- std over seeds), its share of the oracle's, and
    the IoU of the classes the quality issue tracks."""
    by_row: dict[str, list[dict]] = {}
    for r in results.values():
        by_row.setdefault(r["row"], []).append(r)
    oracle = [r["miou"] for r in by_row.get("oracle (real photos)", [])]
    lines = ["| method | seeds | downstream mIoU | / oracle | " + " | ".join(DOWNSTREAM_CLASSES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(DOWNSTREAM_CLASSES)]
    for row, items in by_row.items():
        miou = [r["miou"] for r in items]
        share = f"{statistics.mean(miou) / statistics.mean(oracle):.2f}" if oracle else "-"
        ious = [_mean_std([r["iou"][c] for r in items]) for c in DOWNSTREAM_CLASSES]
        lines.append(f"| {row} | {', '.join(r['seed'] for r in items)} | {_mean_std(miou)} | {share} | "
                     + " | ".join(ious) + " |")
    return lines


def report(result: dict, path: Path, downstream: dict | None = None) -> None:
    from usis.utils.images import save_grid

    by_row: dict[str, list[dict]] = {}
    for s in result["scores"].values():
        by_row.setdefault(s["row"], []).append(s)
    lines = ["| method | seeds | mIoU / ceiling | sFID | c2st (acc) | c2st loss | MS-SSIM | " + " | ".join(CLASSES)
             + " |", "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(CLASSES)]
    for row, items in by_row.items():
        cells = [_mean_std([s[k] for s in items]) for k in ("miou_ratio", "sfid", "c2st", "c2st_loss")]
        cells.append(_mean_std([s["msssim"] for s in items]) if all("msssim" in s for s in items) else "- (no noise)")
        ious = [_mean_std([s[f"iou/{c}"] for s in items if not math.isnan(s[f"iou/{c}"])] or [math.nan])
                for c in CLASSES]
        lines.append(f"| {row} | {', '.join(s['seed'] for s in items)} | " + " | ".join(cells + ious) + " |")
    if downstream:
        lines += ["", "The downstream row (a segmenter trained on each method's images of 800 unseen maps, mIoU on "
                  "200 held-out real photos; benchmarks/downstream.py's protocol):", ""] + downstream_table(downstream)
    grid = path.with_suffix(".png")
    save_grid([c.float() / 127.5 - 1 for c in result["grid"]], grid)
    text = "\n".join(lines) + f"\n\n![the same maps through every method: palette | {' | '.join(result['grid_rows'])} " \
                              f"| a real photo]({grid.name})\n"
    path.write_text(text)
    # every seed's figures beside the table: the run folders are scratch, this is what a later row is added to
    path.with_suffix(".json").write_text(json.dumps({"scores": result["scores"], "downstream": downstream or {}},
                                                    indent=1))
    print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "train", "test", "score", "downstream", "all", "flops"])
    ap.add_argument("--methods", nargs="+", default=["cut", "fastcut", "cyclegan"], choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--width", type=int, default=16, help="--ngf and --ndf of the peers (16: ~our preset's compute)")
    ap.add_argument("--images", type=int, default=9000, help="training images each peer sees (default 9,000)")
    ap.add_argument("--train-images", type=int, default=1500, help="maps and photos written for training")
    ap.add_argument("--work", default=str(ROOT / "runs" / "peers"))
    ap.add_argument("--usis", action="append", default=[], metavar="NAME[@SEED]=CHECKPOINT",
                    help="a usis generator to score beside the peers (repeat; @SEED groups seeds of one row)")
    ap.add_argument("--report", default=None, help="write the table here (.md) and the grid beside it (.png)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.step == "flops":
        try:
            print("\n".join(flops([args.width, 64])))
        except PeersError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        usis = dict(item.split("=", 1) for item in args.usis)
    except ValueError:
        print("error: --usis takes NAME=CHECKPOINT", file=sys.stderr)
        return 2
    missing = [(name, ckpt) for name, ckpt in usis.items() if not Path(ckpt).is_file()]
    if missing:  # before any work; a name is what precedes the first "=", so it cannot hold one
        name, ckpt = missing[0]
        print(f"error: --usis {name + '=' + ckpt!r}: no checkpoint file {ckpt!r} (a row's NAME may not contain '='; "
              "CHECKPOINT is a training checkpoint, e.g. RUN/checkpoints/latest.pt)", file=sys.stderr)
        return 2
    try:
        data = prepare(work, args.train_images)
        if args.step in ("train", "all"):
            for m in args.methods:
                for s in args.seeds:
                    train(m, s, data, work, args.images, args.train_images, args.width)
        if args.step in ("test", "score", "all"):
            for m, s in trained_runs(work, args.methods, args.seeds, args.width):
                test(m, s, data, work, args.width)
        down = None
        if args.step in ("downstream", "all"):
            down = downstream_rows(work, args.methods, args.seeds, args.width, usis)
            print("\n".join(downstream_table(down)))
        if args.step in ("score", "all"):
            result = score_all(work, args.methods, args.seeds, args.width, usis)
            if args.report:
                saved = work / "downstream.json"
                report(result, Path(args.report), down or (json.loads(saved.read_text()) if saved.is_file() else None))
    except PeersError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
