"""``usis synthesize``: a labelled dataset made from label maps, each pair scored and filtered.

A folder of label maps (read as ``usis generate`` reads them) becomes::

    OUT/images/<relative stem>_s<seed>.png   the generated photo (RGB, the model's size)
    OUT/labels/<relative stem>_s<seed>.png   its class ids at the image's size (nearest neighbour; 8-bit
                                             grayscale, 16-bit for label sets of more than 256 ids)
    OUT/classes.json                         ids, names, colours (a ``data.class_file`` for the folder preset)
    OUT/manifest.jsonl                       one line per pair, kept or rejected: files, source map, seed,
                                             class pixel counts, score
    OUT/synthesize.json                      what made it (generator, scorer, arguments) and the counts

Image ``k`` of a map has seed ``seed + k`` and is the image ``usis generate --seed`` writes for it (same
noise, :mod:`usis.nn.noise`; same batches for the same ``--batch-size``).

Score. A segmenter reads each image (exactly the 8-bit image written) and its reading is compared with
the input map: pixel accuracy and mIoU over the classes present in the map (the don't-care id and ids the
segmenter has no class for are not scored), both in percent. The segmenter is the checkpoint's own S by
default (trained with G on its fakes: it measures whether each class is still readable, not realism), or
one of ``usis evaluate``'s (DRN-D-105, SegFormer, TorchScript, the synthetic evaluator). ``keep`` (the
best fraction by mIoU) or ``min_score`` (an mIoU threshold) filter the pairs: rejected pairs are listed in
the manifest but their files are not in ``images/`` and ``labels/``.

Resumable. Pairs are generated in fixed batches of the job list (maps sorted, then seeds) into
``OUT/.synthesize/`` (every image written to a temporary file and renamed, so a kill leaves none half
written) with a record (score, pixel counts) appended per batch. Only when every pair is scored does the
selection run; then the kept images move into ``images/``, their label files are written and the manifest
replaces the old one. A rerun with the same arguments finds every pair recorded and writes nothing; an
interrupted one regenerates only the batches without records, so it ends with the files of an
uninterrupted run, byte for byte. A rerun with another ``keep`` / ``min_score`` only re-selects
(regenerating, from their seeds, images that are now kept but were rejected before).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from usis.checkpoint import load_checkpoint
from usis.config import Config
from usis.data.datasets import label_set
from usis.errors import GenerateError
from usis.generate import LoadedGenerator, generate_images, list_label_files, read_label_map, resize_nearest
from usis.metrics.miou import IGNORE_INDEX, ConfusionMatrix
from usis.metrics.segmenters import build_segmenter
from usis.metrics.synthetic_eval import SyntheticEvaluator, cache_key
from usis.nn.build import build_segmenter as build_own_segmenter
from usis.nn.generator import BaseGenerator
from usis.nn.pretrained import load_state
from usis.utils.images import to_uint8
from usis.utils.io import atomic_write

FORMAT = "usis-synthesized"
VERSION = 1
MANIFEST, CLASSES, SETTINGS = "manifest.jsonl", "classes.json", "synthesize.json"
STAGING = ".synthesize"  # inside OUT: images generated and scored but not yet selected, and their records
RECORDS = "records.jsonl"
PAUSE_ENV = "USIS_SYNTHESIZE_PAUSE"  # seconds to wait after each batch (tests interrupt a run with it)
SCORE_DIGITS = 4  # scores are stored rounded (percent): the manifest's bytes do not hang on the last float bit


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """Reads generated images into class ids and compares them with the label maps they came from.

    ``read(images, labels)``: images ``N x 3 x H x W`` in [-1, 1] and int64 label maps ``N x H x W`` (the
    model's ids) -> ``(prediction, target)``, int64 ``N x H x W`` each in the segmenter's ids, target -1
    where a pixel is not scored (don't-care, or a class the segmenter lacks).
    """

    name: str
    num_classes: int
    read: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    identity: str = ""  # what a resumed run must score with too (the name plus weights / paths)

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> list[dict[str, float] | None]:
        """Per image ``{"miou", "pixel_accuracy"}`` (percent; mIoU over the classes present in the map), or
        None when no pixel of the map is scored."""
        pred, target = self.read(images, labels)
        out: list[dict[str, float] | None] = []
        for p, t in zip(pred.cpu(), target.cpu(), strict=True):
            cm = ConfusionMatrix(self.num_classes, ignore_index=-1)
            cm.update(p, t)
            if int(cm.hist.sum()) == 0:
                out.append(None)
                continue
            out.append({"miou": round(cm.miou(over="gt"), SCORE_DIGITS),
                        "pixel_accuracy": round(cm.pixel_accuracy(), SCORE_DIGITS)})
        return out


def _ignore(labels: Tensor, dontcare: int | None) -> Tensor:
    labels = labels.long()
    return labels if dontcare is None else torch.where(labels == dontcare, -1, labels)


def own_segmenter_scorer(S: torch.nn.Module, cfg: Config, device: torch.device | str = "cpu",
                         source: str = "") -> Scorer:
    """The run's segmenter S as a scorer (eval mode; the reference's extra "fake" channel and the
    don't-care id are never predicted)."""
    S = S.to(device).eval().requires_grad_(False)
    k, dontcare, extra = cfg.model.num_classes, cfg.data.dontcare, cfg.model.s_extra_channel

    def read(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        p = next(S.parameters())
        logits = S(images.to(p.device, p.dtype)).float()
        if extra:
            logits = logits[:, 1:]
        if dontcare is not None and 0 <= dontcare < k:
            logits[:, dontcare] = -math.inf
        return logits.argmax(1), _ignore(labels, dontcare)

    return Scorer(f"S (the checkpoint's segmenter{', ' + source if source else ''})", k, read, identity="S")


def load_own_segmenter(source: str | os.PathLike, cfg: Config) -> torch.nn.Module | None:
    """The segmenter S saved with a generator: a training checkpoint holds it, an export folder does not
    (None). ``source``: the checkpoint file a generator was loaded from (``LoadedGenerator.source``)."""
    src = Path(source)
    if src.is_dir() or src.suffix == ".safetensors":
        return None
    state = load_checkpoint(src)
    if not isinstance(state, dict) or "S" not in state:
        return None
    S = build_own_segmenter(cfg)
    load_state(S, state["S"], f"{src} (S)")
    return S.eval().requires_grad_(False)


def no_segmenter_message(source: str, cfg: Config, api: bool = False) -> str:
    """Why an export cannot score its pairs, and the fix (the CLI's options, or the Python API's)."""
    if api:
        fix = "segmenter=usis.synthesize.pretrained_scorer(...), or score=False"
    else:
        kinds = "drn|segformer|torchscript" + ("|synthetic" if cfg.data.kind == "synthetic" else "")
        fix = f"--segmenter {kinds} (with --segmenter-path)"
    return (f"{source} is an exported generator without the segmenter S: the score needs a training checkpoint "
            f"(RUN/checkpoints/latest.pt, which holds S) or {fix}")


def pretrained_scorer(kind: str, path: str | None, cfg: Config, mapping: str | None = None,
                      device: torch.device | str = "cpu") -> Scorer:
    """One of ``usis evaluate``'s segmenters as a scorer: ``drn``, ``segformer``, ``torchscript`` (real
    data), or ``synthetic`` (the synthetic preset's evaluator)."""
    if kind == "synthetic":
        if cfg.data.kind != "synthetic":
            raise GenerateError(f"--segmenter synthetic: the synthetic evaluator reads only the synthetic preset's "
                                f"scenes; this generator was trained on {cfg.data.kind} (use drn, segformer, "
                                "torchscript or the checkpoint's S)")
        ev = SyntheticEvaluator.load_or_train(cfg.data.height, cfg.data.width, cache_dir=cfg.eval.cache_dir or None,
                                              device=device)
        dontcare = cfg.data.dontcare

        def read_synthetic(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
            return ev.segment(images), _ignore(labels, dontcare)

        return Scorer("synthetic evaluator (usis.metrics.synthetic_eval)", cfg.model.num_classes, read_synthetic,
                      identity=f"synthetic:{cache_key(cfg.data.height, cfg.data.width)}")
    if not path:
        raise GenerateError(f"--segmenter {kind} needs --segmenter-path (the weights file, model folder or "
                            "TorchScript file)")
    seg = build_segmenter(kind, path, cfg.data.kind, mapping, device)

    def read(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        pred = seg(images, size=tuple(labels.shape[-2:]))
        target = seg.map_labels(labels.to(pred.device))
        return pred, torch.where(target == IGNORE_INDEX, -1, target)

    return Scorer(seg.name, seg.num_classes, read, identity=f"{kind}:{Path(path).expanduser().resolve()}")


def make_scorer(gen: LoadedGenerator, segmenter: str | None = "own", segmenter_path: str | None = None,
                segmenter_mapping: str | None = None, required: bool = False) -> tuple[Scorer | None, str]:
    """The scorer ``segmenter`` names (``own``: the checkpoint's S; ``none``: no scores), and a note when
    there is none. ``required``: no scorer is an error (filtering asked for)."""
    kind = (segmenter or "own").lower()
    if kind == "none":
        if required:
            raise GenerateError("--keep / --min-score filter by the score: drop --segmenter none")
        return None, "pairs are not scored (--segmenter none)"
    if kind != "own":
        return pretrained_scorer(kind, segmenter_path, gen.cfg, segmenter_mapping, gen.device), ""
    S = load_own_segmenter(gen.source, gen.cfg)
    if S is None:
        msg = no_segmenter_message(gen.source, gen.cfg)
        if required:
            raise GenerateError(f"--keep / --min-score: {msg}")
        return None, f"pairs are not scored: {msg}"
    return own_segmenter_scorer(S, gen.cfg, gen.device, source=f"step {gen.step}"), ""


# ------------------------------------------------------------------------------------ the shared core


@dataclass
class Pair:
    """One synthesized pair: ``image`` uint8 ``H x W x 3`` (exactly what is written), ``label`` int64
    ``H x W`` ids at the image's size, its noise ``seed``, ``score`` (None: not scored) and ``kept``."""

    image: np.ndarray
    label: np.ndarray
    seed: int
    score: dict[str, float] | None = None
    kept: bool = True
    source: str = ""  # the label map it came from (a path relative to --labels, or label_map[i])
    index: int = 0  # which of the label maps given to USISPipeline.synthesize

    @property
    def pixels(self) -> dict[str, int]:
        """Pixels per class id present (string keys, as in the manifest)."""
        return class_pixels(self.label)

    def image_pil(self) -> Image.Image:
        return Image.fromarray(self.image)

    def label_pil(self, num_classes: int) -> Image.Image:
        return label_image(self.label, num_classes)


def class_pixels(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel().astype(np.int64))
    return {str(i): int(c) for i, c in enumerate(counts) if c}


def label_image(ids: np.ndarray, num_classes: int) -> Image.Image:
    """Class ids as a PNG-ready image: 8-bit grayscale (``L``), 16-bit (``I;16``) for more than 256 ids."""
    if num_classes <= 256:
        return Image.fromarray(ids.astype(np.uint8), "L")
    return Image.fromarray(ids.astype(np.uint16))


@torch.no_grad()
def synthesize_batch(G: BaseGenerator, labels: Tensor, seeds: Sequence[int], scorer: Scorer | None = None,
                     local_style: bool = False) -> tuple[np.ndarray, list[dict[str, float] | None]]:
    """The pairs of one batch: uint8 images ``N x H x W x 3`` for int64 ``labels`` (``N x H x W``, the
    model's size) with noise ``seeds`` (one forward pass), and their scores (None without a scorer).
    The score reads the 8-bit image, so a file read back scores the same."""
    images = to_uint8(generate_images(G, labels, list(seeds), local_style, batch_size=max(1, len(seeds))))
    if scorer is None:
        return images, [None] * len(images)
    dev = next(G.parameters()).device
    x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, scorer(x, labels)


def select(scores: Sequence[dict[str, float] | None], keep: float | None = None,
           min_score: float | None = None) -> list[bool]:
    """Which pairs to keep: the best ``round(keep * N)`` by mIoU (ties: the earlier pair), or those with
    mIoU >= ``min_score``, or all. Unscored pairs (no scored pixel) rank last and fail any threshold."""
    n = len(scores)
    if keep is None and min_score is None:
        return [True] * n
    value = [(-math.inf if s is None else float(s["miou"])) for s in scores]
    if min_score is not None:
        return [v >= min_score for v in value]
    count = int(math.floor(keep * n + 0.5))
    order = sorted(range(n), key=lambda i: (-value[i], i))
    kept = [False] * n
    for i in order[:count]:
        kept[i] = True
    return kept


def check_filter(keep: float | None, min_score: float | None) -> None:
    if keep is not None and min_score is not None:
        raise GenerateError("--keep and --min-score both given: filter by one of them")
    if keep is not None and not 0 < keep <= 1:
        raise GenerateError(f"--keep {keep}: give the fraction of pairs to keep, in (0, 1] (0.7 keeps the best 70 %)")


# ------------------------------------------------------------------------------------------ the jobs


@dataclass(frozen=True)
class Job:
    """One pair to make: label file ``path`` (``rel``: relative to --labels, POSIX), noise ``seed``."""

    path: Path
    rel: str
    seed: int

    @property
    def name(self) -> str:
        """``<relative stem>_s<seed>.png``: the file name under images/ and labels/."""
        stem = self.rel.rsplit(".", 1)[0]
        return f"{stem}_s{self.seed}.png"

    @property
    def key(self) -> str:
        return f"{self.rel}#{self.seed}"


def plan_jobs(labels: str | os.PathLike, n: int, seed: int) -> tuple[list[Job], Path | None]:
    """Every label file under ``labels`` (or the one file) times ``n`` seeds, in order (maps sorted)."""
    if n < 1:
        raise GenerateError(f"--n {n}: make at least one image per label map")
    src = Path(labels).expanduser()
    files = list_label_files(src)
    root = src if src.is_dir() else None
    rels = [f.relative_to(root).as_posix() if root is not None else f.name for f in files]
    stems = [r.rsplit(".", 1)[0] for r in rels]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise GenerateError(f"--labels {src}: two label files share the name {dup!r} (different extensions); "
                            "rename one")
    return [Job(f, r, seed + k) for f, r in zip(files, rels, strict=True) for k in range(n)], root


def check_maps(files: Sequence[Path], gen: LoadedGenerator, progress: bool = True) -> list[str]:
    """Read and check every label map before anything is generated (a bad one raises, naming the file);
    returns the sizes (``HxW``) of the maps that will be resized."""
    height, width = gen.size
    resized = []
    for f in tqdm(files, desc="checking label maps", unit="map", disable=None if progress else True, leave=False):
        ids = read_label_map(f, gen.cfg)
        if ids.shape != (height, width):
            resized.append(f"{ids.shape[0]}x{ids.shape[1]}")
    return resized


def load_map(path: Path, gen: LoadedGenerator) -> np.ndarray:
    return resize_nearest(read_label_map(path, gen.cfg), *gen.size)


# --------------------------------------------------------------------------------------- the folder


def generator_digest(G: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the generator's weights: what a resumed run must generate with."""
    h = hashlib.sha256()
    for k, v in sorted(G.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def classes_entry(cfg: Config) -> dict[str, Any]:
    names, palette = label_set(cfg)
    k = cfg.model.num_classes
    return {"num_classes": k, "dontcare": cfg.data.dontcare, "label_set": cfg.data.kind,
            "classes": [{"id": i, "name": names[i], "color": list(palette[i])} for i in range(k)]}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, text)


def _read_records(out: Path) -> dict[str, dict[str, Any]]:
    """Pairs already made in ``out``: from its manifest (a finished run) and the staging records (a run
    under way); a torn last line (a kill mid-write) is ignored (:func:`_repair_records` cuts it off)."""
    records: dict[str, dict[str, Any]] = {}
    manifest = out / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                records[f"{r['source']}#{r['seed']}"] = {k: r[k] for k in ("source", "seed", "pixels", "score")}
    staged = out / STAGING / RECORDS
    if staged.is_file():
        raw = staged.read_bytes()
        end = raw.rfind(b"\n") + 1  # past it: a record cut off by a kill (its batch is made again)
        for line in raw[:end].decode("utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                records[f"{r['source']}#{r['seed']}"] = r
    return records


def _repair_records(out: Path) -> None:
    """Cut a torn last record off the staging records, so that the next one starts on its own line."""
    staged = out / STAGING / RECORDS
    if staged.is_file():
        raw = staged.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end != len(raw):
            with open(staged, "r+b") as f:
                f.truncate(end)


@dataclass
class Summary:
    """What a :func:`synthesize_folder` call left in ``out``."""

    out: Path
    pairs: int
    kept: int
    generated: int  # pairs generated by this call (0 for a finished folder)
    scorer: str | None
    note: str = ""
    resized: list[str] = field(default_factory=list)
    check_command: str = ""


def _identity(gen: LoadedGenerator, scorer: Scorer | None, local_style: bool) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "generator": generator_digest(gen.G), "step": gen.step,
            "local_style": bool(local_style), "size": list(gen.size), "num_classes": gen.num_classes,
            "scorer": None if scorer is None else scorer.identity}


def _check_out(out: Path, identity: dict[str, Any]) -> None:
    """``out`` is new, empty, or a synthesize folder made with the same generator, noise mode and scorer."""
    if not out.exists():
        return
    if not out.is_dir():
        raise GenerateError(f"--out {out} is a file; pass a folder")
    settings = out / SETTINGS
    if not settings.is_file():
        if any(out.iterdir()):
            raise GenerateError(f"--out {out} is not empty and holds no {SETTINGS} (it was not written by usis "
                                "synthesize): choose a new or empty folder")
        return
    try:
        old = json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GenerateError(f"{settings}: unreadable ({e}); choose a new --out") from e
    diff = [k for k in identity if old.get(k) != identity[k]]
    if diff:
        what = ", ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in diff)
        raise GenerateError(f"--out {out} was synthesized with other settings ({what}): rerun with the settings "
                            "of that folder to resume it, or choose a new --out")


def _check_command(out: Path, gen: LoadedGenerator, kept: int) -> str:
    h, w = gen.size
    parts = ["usis data check --preset folder", f"--set data.labels={out / 'labels'}",
             f"--set data.photos={out / 'images'}", f"--set data.num_classes={gen.num_classes}",
             f"--set data.class_file={out / CLASSES}",
             f"--set data.dontcare={'none' if gen.cfg.data.dontcare is None else gen.cfg.data.dontcare}",
             f"--set data.height={h} --set data.width={w} --set data.load_size=0"]
    if kept < 8:  # the folder preset's batch of 8
        parts.append(f"--set train.batch_size={max(1, kept)}")
    return " ".join(parts)


def synthesize_folder(gen: LoadedGenerator, labels: str | os.PathLike, out: str | os.PathLike, n: int = 1,
                      seed: int = 0, local_style: bool = False, keep: float | None = None,
                      min_score: float | None = None, scorer: Scorer | None = None, note: str = "",
                      batch_size: int = 8, progress: bool = True, log: Callable[[str], None] | None = None) -> Summary:
    """``usis synthesize``: ``n`` pairs per label file under ``labels`` into ``out`` (see the module
    docstring for the layout, the score, the filter and resuming). Every map is read and checked, and
    ``out`` checked against the settings it was made with, before anything is written."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_filter(keep, min_score)
    if (keep is not None or min_score is not None) and scorer is None:
        raise GenerateError("--keep / --min-score filter by the score, but no segmenter scores the pairs"
                            + (f" ({note})" if note else ""))
    if batch_size < 1:
        raise GenerateError(f"--batch-size {batch_size}: use at least 1")
    out = Path(out).expanduser()
    jobs, _ = plan_jobs(labels, n, seed)
    files = list(dict.fromkeys(j.path for j in jobs))
    resized = check_maps(files, gen, progress)
    identity = _identity(gen, scorer, local_style)
    _check_out(out, identity)
    records = _read_records(out)
    wanted = {j.key for j in jobs}
    stale = sorted(k for k in records if k not in wanted)
    if stale:
        source, _, s = stale[0].rpartition("#")
        raise GenerateError(f"--out {out} holds {len(stale)} pair(s) these arguments do not make (e.g. {source} with "
                            f"seed {s}): rerun with the --labels / --n / --seed of that folder (a superset is fine), "
                            "or choose a new --out")
    if resized:
        log(f"note: resizing {len(resized)} of {len(files)} label maps ({', '.join(sorted(set(resized)))}) to the "
            f"model's {gen.size[0]}x{gen.size[1]} (nearest neighbour)")
    if note:
        log(f"note: {note}")
    if min_score is not None and 0 < min_score <= 1:
        log(f"note: scores are mIoU in percent (0-100): --min-score {min_score} keeps nearly every pair")
    if gen.G.z_dim == 0 and (n > 1 or local_style):
        log("note: this generator was trained without noise (model.noise_3d=false): every seed gives the same image")

    # --- nothing written before this line ---
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.rglob("*.tmp"):  # atomic_write's temporary files of a killed run (the folder is ours)
        tmp.unlink(missing_ok=True)
    _repair_records(out)
    settings = {**identity, "checkpoint": str(Path(gen.source).resolve()), "labels": str(Path(labels).resolve()),
                "n": n, "seed": seed, "keep": keep, "min_score": min_score,
                "scorer_name": None if scorer is None else scorer.name}
    if not (out / SETTINGS).is_file():
        atomic_write(out / SETTINGS, _json({**settings, "complete": False}))
    _write_if_changed(out / CLASSES, _json(classes_entry(gen.cfg)))
    stage = out / STAGING
    k = gen.num_classes
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    generated = 0

    def make(chunk: list[Job]) -> tuple[np.ndarray, np.ndarray, list[dict[str, float] | None]]:
        read = {p: load_map(p, gen) for p in dict.fromkeys(j.path for j in chunk)}  # each map once per batch
        maps = np.stack([read[j.path] for j in chunk])
        images, scores = synthesize_batch(gen.G, torch.from_numpy(maps), [j.seed for j in chunk], scorer, local_style)
        return maps, images, scores

    def stage_image(job: Job, image: np.ndarray) -> None:
        atomic_write(stage / "images" / job.name, lambda f: Image.fromarray(image).save(f, format="PNG"))

    # 1. generate and score every pair without a record (whole batches: the same batches as a run that was
    #    never interrupted, so the same bytes)
    done = sum(1 for j in jobs if j.key in records)
    bar = tqdm(total=len(jobs), initial=done, desc="synthesize", unit="pair", disable=None if progress else True)
    for chunk in chunks:
        todo = [i for i, j in enumerate(chunk) if j.key not in records]
        if not todo:
            continue
        maps, images, scores = make(chunk)
        lines = []
        for i in todo:
            job = chunk[i]
            stage_image(job, images[i])
            rec = {"source": job.rel, "seed": job.seed, "pixels": class_pixels(maps[i]), "score": scores[i]}
            records[job.key] = rec
            lines.append(json.dumps(rec) + "\n")
        stage.mkdir(parents=True, exist_ok=True)
        with open(stage / RECORDS, "a", encoding="utf-8") as f:
            f.write("".join(lines))
        generated += len(todo)
        bar.update(len(todo))
        if pause:
            time.sleep(pause)
    bar.close()

    # 2. select
    kept = dict(zip((j.key for j in jobs), select([records[j.key]["score"] for j in jobs], keep, min_score),
                    strict=True))

    # 3. kept pairs whose image is gone (rejected by an earlier selection, or deleted): made again from their seeds
    images_dir, labels_dir = out / "images", out / "labels"
    for chunk in chunks:
        need = [i for i, j in enumerate(chunk) if kept[j.key] and not (images_dir / j.name).is_file()
                and not (stage / "images" / j.name).is_file()]
        if need:
            _, images, _ = make(chunk)
            for i in need:
                stage_image(chunk[i], images[i])
            generated += len(need)

    # 4. the final folders: kept pairs in, rejected ones out; then the manifest
    lines = []
    last: tuple[Path | None, np.ndarray | None] = (None, None)
    for j in jobs:
        final_img, final_lab, staged = images_dir / j.name, labels_dir / j.name, stage / "images" / j.name
        if kept[j.key]:
            if staged.is_file():
                final_img.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final_img)
            if not final_lab.is_file():
                if last[0] != j.path:  # the seeds of a map follow each other: read it once
                    last = (j.path, load_map(j.path, gen))
                ids = last[1]
                atomic_write(final_lab, lambda f, ids=ids: label_image(ids, k).save(f, format="PNG"))
        else:
            for p in (final_img, final_lab, staged):
                p.unlink(missing_ok=True)
        rec = records[j.key]
        lines.append(json.dumps({"image": f"images/{j.name}", "label": f"labels/{j.name}", "source": j.rel,
                                 "seed": j.seed, "pixels": rec["pixels"], "score": rec["score"],
                                 "kept": kept[j.key]}) + "\n")
    _write_if_changed(out / MANIFEST, "".join(lines))
    n_kept = sum(kept.values())
    _write_if_changed(out / SETTINGS, _json({**settings, "complete": True, "pairs": len(jobs), "kept": n_kept}))
    if stage.exists():
        shutil.rmtree(stage)
    for d in (images_dir, labels_dir):  # folders emptied by a stricter selection
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(sub.iterdir()):
                    sub.rmdir()
    return Summary(out=out, pairs=len(jobs), kept=n_kept, generated=generated,
                   scorer=None if scorer is None else scorer.name, note=note, resized=resized,
                   check_command=_check_command(out, gen, n_kept))
