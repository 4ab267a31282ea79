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

import hashlib
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

from usis.config import Config
from usis.data.datasets import label_png, label_set
from usis.errors import GenerateError
from usis.generate import (
    LoadedGenerator,
    check_label_maps,
    list_label_files,
    load_label_map,
    no_noise_note,
    output_stems,
    resize_note,
)
from usis.synthesis import (
    Scorer,
    check_filter,
    class_pixels,
    load_own_segmenter,
    no_segmenter_message,
    own_segmenter_scorer,
    pretrained_scorer,
    select,
    synthesize_batch,
)
from usis.utils.io import atomic_write

FORMAT = "usis-synthesized"
VERSION = 1
MANIFEST, CLASSES, SETTINGS = "manifest.jsonl", "classes.json", "synthesize.json"
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


def plan_jobs(labels: str | os.PathLike, n: int, seed: int) -> list[Job]:
    """Every label file under ``labels`` (or the one file) times ``n`` seeds, in order (maps sorted)."""
    if n < 1:
        raise GenerateError(f"--n {n}: make at least one image per label map")
    src = Path(labels).expanduser()
    files = list_label_files(src)
    stems = output_stems(src, files)
    rels = [f.relative_to(src).as_posix() if src.is_dir() else f.name for f in files]
    return [Job(f, rel, stem, seed + k) for f, rel, stem in zip(files, rels, stems, strict=True) for k in range(n)]


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
    jobs = plan_jobs(labels, n, seed)
    files = list(dict.fromkeys(j.path for j in jobs))
    resized = check_label_maps(files, gen, progress)
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
    _write_if_changed(out / CLASSES, _json(classes_entry(gen.cfg)))
    stage = out / STAGING
    k = gen.num_classes
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    generated = 0

    def make(chunk: list[Job]) -> tuple[np.ndarray, np.ndarray, list[dict[str, float] | None]]:
        read = {p: load_label_map(p, gen) for p in dict.fromkeys(j.path for j in chunk)}  # each map once per batch
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
                    last = (j.path, load_label_map(j.path, gen))
                ids = last[1]
                atomic_write(final_lab, lambda f, ids=ids: label_png(ids, k).save(f, format="PNG"))
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
