"""``usis synthesize``: a labelled dataset made from label maps, each pair scored and filtered.

A folder of label maps (read as ``usis generate`` reads them) becomes::

    OUT/images/<relative stem>_s<seed>.png   the generated photo (RGB, the model's size)
    OUT/labels/<relative stem>_s<seed>.png   its class ids at the image's size (nearest neighbour; 8-bit
                                             grayscale, 16-bit for label sets of more than 256 ids)
    OUT/classes.json                         ids, names, colours, the ignore id (a ``data.class_file`` for
                                             the folder preset)
    OUT/manifest.jsonl                       one line per pair, kept or rejected: files, source map, seed,
                                             class pixel counts, score (and with the options below: the
                                             ignored fraction per class, the map's hardness and pair count)
    OUT/synthesize.json                      what made it (generator, scorer, arguments) and the counts
    OUT/class_losses.json                    with --pixel-filter / --resample: the class means (cached)
    OUT/README.md                            the dataset card (Hugging Face Hub metadata; the generator, the
                                             counts, the filters, the layout and how loaders read it;
                                             :func:`usis.cards.dataset_card`), written with the manifest

Seeds. Pair ``k`` of a map has the seed :func:`usis.synthesis.pair_seed` derives from ``--seed``, the map's path
relative to ``--labels`` and ``k``: every map gets noise of its own, so the dataset has the generator's
many styles. ``one_style`` (``--one-style``): seed ``seed + k`` for every map, the image ``usis generate --seed``
writes for it (same noise, :mod:`usis.nn.noise`; same batches for the same ``--batch-size``), one style per k.

Pixel filter and re-sampling (FreeMask; :mod:`usis.synthesis` says how). A segmenter trained on real photos
(``--filter-segmenter``: the synthetic preset's evaluator by default there, else DRN / SegFormer / TorchScript)
gives each class its mean cross entropy over real labelled photos (``--real-photos`` / ``--real-labels``; the
synthetic preset's held-out renderings by default), cached in ``class_losses.json``. ``--pixel-filter MARGIN``
writes a pixel whose loss exceeds MARGIN x its class's mean as the ignore id (``classes.json``'s
``ignore_id``: the don't-care id, else 255). ``--resample hard`` gives each map 1 to ``n`` pairs by the rank of
its hardness (the pixel-weighted mean of its classes' mean losses).

Score. A segmenter reads each image and its reading is compared with the input map (mIoU and pixel
accuracy in percent; :mod:`usis.synthesis`, the library core this command shares with
``USISPipeline.synthesize``, says how). It is the checkpoint's own S by default, or one of ``usis
evaluate``'s (DRN-D-105, SegFormer, TorchScript, the synthetic evaluator). ``keep`` (the best fraction by
mIoU) or ``min_score`` (an mIoU threshold) filter the pairs: rejected pairs are listed in the manifest but
their files are not in ``images/`` and ``labels/``.

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

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from usis.cards import dataset_card
from usis.config import Config
from usis.data.datasets import label_png, label_set
from usis.errors import GenerateError
from usis.generate import (
    EXPORT_WEIGHTS,
    LoadedGenerator,
    check_label_maps,
    generator_digest,
    list_label_files,
    load_label_map,
    no_noise_note,
    output_stems,
    resize_note,
)
from usis.hub import HUB_URL
from usis.nn.pretrained import CARD_NAME
from usis.synthesis import (
    FILTER_MARGIN,
    PixelFilter,
    PixelLosses,
    RealPairs,
    Scorer,
    check_filter,
    class_mean_losses,
    class_pixels,
    filter_batch,
    hardness,
    ignore_id,
    load_own_segmenter,
    no_segmenter_message,
    own_segmenter_scorer,
    pair_seed,
    pretrained_scorer,
    resample_counts,
    select,
    synthesize_batch,
)
from usis.utils.io import atomic_write

FORMAT = "usis-synthesized"
VERSION = 1
MANIFEST, CLASSES, SETTINGS, CLASS_LOSSES = "manifest.jsonl", "classes.json", "synthesize.json", "class_losses.json"
RECORD_KEYS = ("source", "seed", "pixels", "score", "ignored")
# settings a folder made before they existed was made with (it resumes as it was made)
LEGACY_SETTINGS = {"seeds": "one-style", "pixel_filter": None, "resample": None}
STAGING = ".synthesize"  # inside OUT: images generated and scored but not yet selected, and their records
RECORDS = "records.jsonl"
PAUSE_ENV = "USIS_SYNTHESIZE_PAUSE"  # seconds to wait after each batch (tests interrupt a run with it)


# ------------------------------------------------------------------------------------------- scoring


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


# ------------------------------------------------------------------------------------------ the jobs


@dataclass(frozen=True)
class Job:
    """One pair to make: label file ``path`` (``rel``: relative to --labels, POSIX; ``stem``: the same
    without the extension, :func:`usis.generate.output_stems`), noise ``seed``."""

    path: Path
    rel: str
    stem: str
    seed: int

    @property
    def name(self) -> str:
        """``<relative stem>_s<seed>.png``: the file name under images/ and labels/."""
        return f"{self.stem}_s{self.seed}.png"

    @property
    def key(self) -> str:
        return f"{self.rel}#{self.seed}"


def plan_jobs(labels: str | os.PathLike, n: int, seed: int, one_style: bool = False,
              counts: dict[str, int] | None = None) -> list[Job]:
    """Every label file under ``labels`` (or the one file) times ``n`` seeds (or ``counts[rel]`` for the map at
    relative path ``rel``), in order (maps sorted, then k); seeds by :func:`usis.synthesis.pair_seed`."""
    if n < 1:
        raise GenerateError(f"--n {n}: make at least one image per label map")
    src = Path(labels).expanduser()
    files = list_label_files(src)
    stems = output_stems(src, files)
    rels = [f.relative_to(src).as_posix() if src.is_dir() else f.name for f in files]
    return [Job(f, rel, stem, pair_seed(seed, rel, k, one_style)) for f, rel, stem in zip(files, rels, stems, strict=True)
            for k in range(n if counts is None else counts[rel])]


# ----------------------------------------------------------------------------- class means (FreeMask)


def cached_class_means(out: Path, losses: PixelLosses, real: RealPairs, num_classes: int,
                       progress: bool = True) -> tuple[list[float | None], bool]:
    """The class means (:func:`usis.synthesis.class_mean_losses`) from ``out/class_losses.json`` when it was
    computed with this segmenter on these real photos, else computed now. Returns them and whether they
    still need to be written."""
    path = out / CLASS_LOSSES
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = {}
        if cached.get("segmenter") == losses.identity and cached.get("real") == real.identity:
            return [None if m is None else float(m) for m in cached["class_means"]], False
    batches = tqdm(real.batches(), total=-(-real.count // 50), desc="class means on real photos", unit="batch",
                   disable=None if progress else True, leave=False)
    return class_mean_losses(losses, batches, num_classes), True


# --------------------------------------------------------------------------------------- the folder


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
                records[f"{r['source']}#{r['seed']}"] = {k: r[k] for k in RECORD_KEYS if k in r}
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


def _identity(gen: LoadedGenerator, scorer: Scorer | None, local_style: bool, one_style: bool,
              pixel_filter: float | None, resample: str | None, measure: dict[str, str] | None) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "generator": generator_digest(gen.G), "step": gen.step,
            "local_style": bool(local_style), "size": list(gen.size), "num_classes": gen.num_classes,
            "scorer": None if scorer is None else scorer.identity,
            "seeds": "one-style" if one_style else "per-map",
            "pixel_filter": None if pixel_filter is None else {"margin": pixel_filter, **(measure or {})},
            "resample": None if resample is None else {"mode": resample, **(measure or {})}}


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
    diff = [k for k in identity if old.get(k, LEGACY_SETTINGS.get(k)) != identity[k]]
    if diff:
        what = ", ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in diff)
        raise GenerateError(f"--out {out} was synthesized with other settings ({what}): rerun with the settings "
                            "of that folder to resume it, or choose a new --out")


def generator_facts(gen: LoadedGenerator) -> dict[str, str | None]:
    """What the dataset card says of the generator: where it was loaded from, its Hub reference, and where its
    model card is (the Hub page; an export folder's ``README.md``; a training checkpoint has none)."""
    card = None
    source = Path(gen.source)
    folder = source if source.is_dir() else source.parent
    if gen.hub is not None:
        card = f"{HUB_URL}/{gen.hub.split('@')[0]}"
    elif (folder / CARD_NAME).is_file() and (folder / EXPORT_WEIGHTS).is_file():
        card = str((folder / CARD_NAME).resolve())
    return {"source": str(source.resolve()) if gen.hub is None else gen.source, "hub": gen.hub, "card": card}


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
                      batch_size: int = 8, progress: bool = True, log: Callable[[str], None] | None = None,
                      one_style: bool = False, pixel_filter: float | None = None, resample: str | None = None,
                      measure: tuple[PixelLosses, RealPairs] | None = None) -> Summary:
    """``usis synthesize``: ``n`` pairs per label file under ``labels`` into ``out`` (see the module
    docstring for the layout, the seeds, the score, the filters and resuming). ``pixel_filter``: FreeMask's
    margin; ``resample="hard"``: 1 to ``n`` pairs per map by hardness; both measure with ``measure``
    (:func:`usis.synthesis.real_statistics`: a segmenter trained on real photos, and real labelled photos). Every map is read
    and checked, and ``out`` checked against the settings it was made with, before anything is written."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_filter(keep, min_score)
    if (keep is not None or min_score is not None) and scorer is None:
        raise GenerateError("--keep / --min-score filter by the score, but no segmenter scores the pairs"
                            + (f" ({note})" if note else ""))
    if batch_size < 1:
        raise GenerateError(f"--batch-size {batch_size}: use at least 1")
    if pixel_filter is not None and not pixel_filter > 0:
        raise GenerateError(f"--pixel-filter {pixel_filter}: give the margin over the class's mean loss, > 0 "
                            f"(FreeMask's {FILTER_MARGIN}: a pixel 1.25x as hard as its class's real pixels is ignored)")
    if resample not in (None, "hard"):
        raise GenerateError(f"--resample {resample!r}: the one mode is hard (more pairs for maps of hard classes)")
    if (pixel_filter is not None or resample is not None) and measure is None:
        raise GenerateError("--pixel-filter / --resample need a segmenter trained on real photos and real labelled "
                            "photos (usis.synthesis.real_statistics)")
    out = Path(out).expanduser()
    losses, real = measure if measure is not None else (None, None)
    identity = _identity(gen, scorer, local_style, one_style, pixel_filter, resample,
                         None if measure is None else {"segmenter": losses.identity, "real": real.identity})
    _check_out(out, identity)
    means, means_new = ([], False) if measure is None else cached_class_means(out, losses, real, gen.num_classes,
                                                                              progress)
    counts: dict[str, int] | None = None
    hardness_of: dict[str, float | None] = {}
    if resample is not None:  # each map's hardness from its class pixels at the model's size
        src = Path(labels).expanduser()
        for f in list_label_files(src):
            rel = f.relative_to(src).as_posix() if src.is_dir() else f.name
            hardness_of[rel] = hardness(class_pixels(load_label_map(f, gen)), means)
        counts = dict(zip(hardness_of, resample_counts(list(hardness_of.values()), n), strict=True))
    jobs = plan_jobs(labels, n, seed, one_style, counts)
    files = list(dict.fromkeys(j.path for j in jobs))
    resized = check_label_maps(files, gen, progress)
    records = _read_records(out)
    wanted = {j.key for j in jobs}
    stale = sorted(k for k in records if k not in wanted)
    if stale:
        source, _, s = stale[0].rpartition("#")
        raise GenerateError(f"--out {out} holds {len(stale)} pair(s) these arguments do not make (e.g. {source} with "
                            f"seed {s}): rerun with the --labels / --n / --seed of that folder (a superset is fine), "
                            "or choose a new --out")
    notes = [resize_note(resized, len(files), gen)]
    if note:
        notes.append(f"note: {note}")
    if min_score is not None and 0 < min_score <= 1:
        notes.append(f"note: scores are mIoU in percent (0-100): --min-score {min_score} keeps nearly every pair")
    notes.append(no_noise_note(gen, n, local_style))
    for line in filter(None, notes):
        log(line)

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
    k = gen.num_classes
    ignored_as = ignore_id(gen.cfg)
    classes = {**classes_entry(gen.cfg), "ignore_id": ignored_as}
    _write_if_changed(out / CLASSES, _json(classes))
    if means_new:
        atomic_write(out / CLASS_LOSSES, _json({"segmenter": losses.identity, "segmenter_name": losses.name,
                                                "real": real.identity, "real_pairs": real.count,
                                                "class_means": means}))
    filt = None if pixel_filter is None else PixelFilter(losses, means, pixel_filter, ignored_as)
    stage = out / STAGING
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    generated = 0

    def make(chunk: list[Job]):
        """The chunk's maps, images, scores, and (pixel filter) filtered maps and ignored fractions."""
        read = {p: load_label_map(p, gen) for p in dict.fromkeys(j.path for j in chunk)}  # each map once per batch
        maps = np.stack([read[j.path] for j in chunk])
        images, scores = synthesize_batch(gen.G, torch.from_numpy(maps), [j.seed for j in chunk], scorer, local_style)
        if filt is None:
            return maps, images, scores, None, [None] * len(chunk)
        filtered, ignored = filter_batch(filt, images, torch.from_numpy(maps), gen.device)
        return maps, images, scores, filtered, ignored

    def stage_pair(job: Job, image: np.ndarray, filtered: np.ndarray | None) -> None:
        atomic_write(stage / "images" / job.name, lambda f: Image.fromarray(image).save(f, format="PNG"))
        if filtered is not None:  # the filtered map depends on the batch's numbers: staged with its image
            atomic_write(stage / "labels" / job.name, lambda f: label_png(filtered, k).save(f, format="PNG"))

    # 1. generate and score every pair without a record (whole batches: the same batches as a run that was
    #    never interrupted, so the same bytes)
    done = sum(1 for j in jobs if j.key in records)
    bar = tqdm(total=len(jobs), initial=done, desc="synthesize", unit="pair", disable=None if progress else True)
    for chunk in chunks:
        todo = [i for i, j in enumerate(chunk) if j.key not in records]
        if not todo:
            continue
        maps, images, scores, filtered, ignored = make(chunk)
        lines = []
        for i in todo:
            job = chunk[i]
            stage_pair(job, images[i], None if filtered is None else filtered[i])
            rec = {"source": job.rel, "seed": job.seed, "pixels": class_pixels(maps[i]), "score": scores[i]}
            if filt is not None:
                rec["ignored"] = ignored[i]
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

    # 3. kept pairs whose image (or filtered map) is gone (rejected by an earlier selection, or deleted): made
    #    again from their seeds, in their batches
    images_dir, labels_dir = out / "images", out / "labels"

    def missing(j: Job) -> bool:
        image_gone = not (images_dir / j.name).is_file() and not (stage / "images" / j.name).is_file()
        label_gone = filt is not None and not (labels_dir / j.name).is_file() and not (stage / "labels" / j.name).is_file()
        return kept[j.key] and (image_gone or label_gone)

    for chunk in chunks:
        need = [i for i, j in enumerate(chunk) if missing(j)]
        if need:
            _, images, _, filtered, _ = make(chunk)
            for i in need:
                stage_pair(chunk[i], images[i], None if filtered is None else filtered[i])
            generated += len(need)

    # 4. the final folders: kept pairs in, rejected ones out; then the manifest
    lines = []
    last: tuple[Path | None, np.ndarray | None] = (None, None)
    for j in jobs:
        final_img, final_lab = images_dir / j.name, labels_dir / j.name
        staged, staged_lab = stage / "images" / j.name, stage / "labels" / j.name
        if kept[j.key]:
            for src_, dst in ((staged, final_img), (staged_lab, final_lab)):
                if src_.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src_, dst)
            if not final_lab.is_file():
                if last[0] != j.path:  # the seeds of a map follow each other: read it once
                    last = (j.path, load_label_map(j.path, gen))
                ids = last[1]
                atomic_write(final_lab, lambda f, ids=ids: label_png(ids, k).save(f, format="PNG"))
        else:
            for p in (final_img, final_lab, staged, staged_lab):
                p.unlink(missing_ok=True)
        rec = records[j.key]
        entry = {"image": f"images/{j.name}", "label": f"labels/{j.name}", "source": j.rel, "seed": j.seed,
                 "pixels": rec["pixels"], "score": rec["score"], "kept": kept[j.key]}
        if filt is not None:
            entry["ignored"] = rec["ignored"]
        if counts is not None:
            h = hardness_of[j.rel]
            entry.update(hardness=None if h is None else round(h, 6), samples=counts[j.rel])
        lines.append(json.dumps(entry) + "\n")
    _write_if_changed(out / MANIFEST, "".join(lines))
    n_kept = sum(kept.values())
    finished = {**settings, "complete": True, "pairs": len(jobs), "kept": n_kept}
    _write_if_changed(out / SETTINGS, _json(finished))
    means_record = None if measure is None else {"segmenter_name": losses.name, "real_pairs": real.count}
    _write_if_changed(out / CARD_NAME, dataset_card(finished, classes, len(files), generator_facts(gen), means_record))
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
