"""Dataset checks: find set-up mistakes in seconds, each reported with the file and the fix.

``usis data check`` (:func:`run_check`) prints a report per split; ``usis train`` calls
:func:`preflight` before the first step, which raises :class:`~usis.data.datasets.DatasetError` listing
every problem at once. Checked: missing or empty folders, label ids outside ``[0, num_classes)``
(e.g. 0/255 binary masks), colour label maps where class-id maps are expected, corrupt or truncated
images, photos smaller than the training crop, and empty sets (also after skipping corrupt files).

A check inspects all files, or a deterministic sample of ``data.check_samples`` of each kind (always
including the first files in sorted order). Decoding runs in a thread pool (PIL releases the GIL).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from usis.config import Config, ConfigError
from usis.data.datasets import (
    STANDARD_CLASSES,
    CorruptImageError,
    DatasetError,
    _join_problems,
    build_datasets,
    label_array,
    label_range_message,
    open_image,
    remap_coco,
    resolve_layout,
)
from usis.data.labelled import build_labelled
from usis.errors import DataWarning

MAX_PER_KIND = 5  # files listed per kind of problem; the rest are counted
SMALL_PHOTO_TOLERANCE = 0.10  # share of sampled photos that may be smaller than the crop (warning only)


@dataclass
class CheckReport:
    """What a dataset check found for one split. ``problems`` block training; ``warnings`` do not."""

    kind: str
    split: str
    label_source: str = ""
    photo_source: str = ""
    num_labels: int = 0  # files found
    num_photos: int = 0
    inspected_labels: int = 0  # files opened
    inspected_photos: int = 0
    label_sizes: dict[str, Any] = field(default_factory=dict)  # {"min", "max", "common": [[w, h, count]]}
    photo_sizes: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    dontcare: int | None = None
    class_names: list[str] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)  # pixels per class id over the inspected labels
    class_images: list[int] = field(default_factory=list)  # inspected label maps containing each id
    dontcare_share: float | None = None  # share of inspected label pixels with the don't-care id
    skipped: list[str] = field(default_factory=list)  # unreadable files skipped (data.skip_corrupt)
    labelled: dict[str, Any] = field(default_factory=dict)  # data.labelled: {"count", "available", "source", "pairs"}
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class _Findings:
    """Per-file messages grouped by kind, capped at MAX_PER_KIND listed files each."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.groups.setdefault(kind, []).append(message)

    def flat(self) -> list[str]:
        out = []
        for msgs in self.groups.values():
            out += msgs[:MAX_PER_KIND]
            if len(msgs) > MAX_PER_KIND:
                out.append(f"... and {len(msgs) - MAX_PER_KIND} more files with the same problem as above")
        return out


def sample_paths(paths: list[str], k: int | None) -> list[str]:
    """All ``paths`` if ``k`` is None/0 or covers them; else the first few plus a seeded sample, in order."""
    if not k or k >= len(paths):
        return list(paths)
    head = min(len(paths), max(1, min(10, k // 4)))
    rest = random.Random(0).sample(range(head, len(paths)), k - head)
    return [paths[i] for i in list(range(head)) + sorted(rest)]


def _size_summary(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {}
    counts = Counter(sizes)
    by_area = sorted(counts, key=lambda s: (s[0] * s[1], s))
    return {"min": list(by_area[0]), "max": list(by_area[-1]),
            "common": [[w, h, c] for (w, h), c in counts.most_common(3)]}


def _inspect_label(path: str, kind: str, coco_shift: bool, num_classes: int) -> dict[str, Any]:
    try:
        with open_image(path) as img:
            size = img.size
            raw = label_array(img, path, kind)
    except CorruptImageError as e:
        return {"corrupt": str(e)}
    except DatasetError as e:  # colour label map or unsupported mode
        return {"size": size, "bad_mode": str(e)}
    ids = remap_coco(raw) if coco_shift else raw
    bad = (ids < 0) | (ids >= num_classes)
    out: dict[str, Any] = {"size": size}
    if bad.any():
        out["range"] = label_range_message(path, np.unique(ids[bad]), num_classes, kind, np.unique(raw))
    counts = np.bincount(ids[~bad].ravel(), minlength=num_classes)[:num_classes]
    out["counts"] = counts
    return out


def _inspect_photo(path: str) -> dict[str, Any]:
    try:
        with open_image(path) as img:
            return {"size": img.size}
    except CorruptImageError as e:
        return {"corrupt": str(e)}


def _map(fn, items: list, *args) -> list:
    workers = min(8, os.cpu_count() or 1, max(1, len(items)))
    if workers <= 1:
        return [fn(x, *args) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda x: fn(x, *args), items))


def _min_photo_size(cfg: Config, split: str) -> tuple[int, int, int]:
    """``(min_width, min_height, min_short_side)`` below which a photo gets upsampled."""
    d = cfg.data
    short = d.load_size if split == "train" and d.load_size > 0 else 0
    return d.width, d.height, short


def check_dataset(cfg: Config, split: str = "train", max_files: int | None = None) -> CheckReport:
    """Locate and inspect the label maps and photos of ``split`` (and in the train split, the labelled pairs
    of ``data.labelled``); never raises for data problems.

    ``max_files``: files inspected per kind (None -> ``cfg.data.check_samples``; 0 -> all).
    """
    rep = _check_split(cfg, split, max_files)
    if split == "train" and str(cfg.data.labelled).strip() != "0" and rep.num_classes >= 2:
        try:
            found = build_labelled(cfg, rep.num_classes, coco_shift=cfg.data.kind == "coco")
        except (ConfigError, DatasetError) as e:
            rep.problems.append(str(e))
        else:
            rep.labelled = found.record() if found is not None else {}
    return rep


def _check_split(cfg: Config, split: str, max_files: int | None) -> CheckReport:
    d = cfg.data
    k = d.check_samples if max_files is None else max_files
    if d.kind == "synthetic":
        return _check_synthetic(cfg, split, k)
    layout = resolve_layout(cfg, split)
    rep = CheckReport(kind=d.kind, split=split, label_source=layout.label_source, photo_source=layout.photo_source,
                      num_labels=len(layout.label_paths), num_photos=len(layout.photo_paths),
                      num_classes=layout.num_classes, dontcare=layout.dontcare, class_names=layout.class_names,
                      problems=list(layout.problems), warnings=list(layout.warnings))
    if d.kind in STANDARD_CLASSES and d.num_classes != layout.num_classes or layout.num_classes < 2:
        return rep  # a wrong class count would flood the report with range errors
    found = _Findings()
    nc = layout.num_classes

    # label maps
    lpaths = sample_paths(layout.label_paths, k)
    pixels = np.zeros(nc, dtype=np.int64)
    images = np.zeros(nc, dtype=np.int64)
    sizes = []
    bad_labels = 0
    for path, res in zip(lpaths, _map(_inspect_label, lpaths, d.kind, layout.coco_shift, nc), strict=True):
        if "corrupt" in res:
            bad_labels += 1
            if d.skip_corrupt:
                rep.skipped.append(path)
            else:
                found.add("corrupt", res["corrupt"])
            continue
        sizes.append(res["size"])
        if "bad_mode" in res:
            found.add("mode", res["bad_mode"])
            continue
        if "range" in res:
            found.add("range", res["range"])
        pixels += res["counts"]
        images += res["counts"] > 0
    rep.inspected_labels = len(lpaths)
    rep.label_sizes = _size_summary(sizes)
    rep.class_pixels, rep.class_images = pixels.tolist(), images.tolist()
    if pixels.sum() and layout.dontcare is not None:
        rep.dontcare_share = float(pixels[layout.dontcare] / pixels.sum())
        if rep.dontcare_share > 0.9:
            rep.warnings.append(f"{rep.dontcare_share:.0%} of the inspected label pixels have the don't-care id "
                                f"{layout.dontcare}: is data.dontcare right?")

    # photos
    ppaths = sample_paths(layout.photo_paths, k)
    sizes = []
    bad_photos = 0
    small = []
    mw, mh, mshort = _min_photo_size(cfg, split)
    for path, res in zip(ppaths, _map(_inspect_photo, ppaths), strict=True):
        if "corrupt" in res:
            bad_photos += 1
            if d.skip_corrupt:
                rep.skipped.append(path)
            else:
                found.add("corrupt", res["corrupt"])
            continue
        w, h = res["size"]
        sizes.append((w, h))
        if w < mw or h < mh or min(w, h) < mshort:
            small.append(f"{path} ({w}x{h})")
    rep.inspected_photos = len(ppaths)
    rep.photo_sizes = _size_summary(sizes)
    if small:
        need = f"{mw}x{mh}" + (f" with short side >= data.load_size={mshort}" if mshort else "")
        msg = (f"{len(small)} of {len(sizes)} inspected photos are smaller than the training size {need} and "
               f"would be upsampled (blurry): {', '.join(small[:MAX_PER_KIND])}"
               f"{', ...' if len(small) > MAX_PER_KIND else ''}")
        if len(small) > SMALL_PHOTO_TOLERANCE * max(1, len(sizes)):
            rep.problems.append(msg + "; remove the small photos, or lower data.height/data.width"
                                + (" and data.load_size" if mshort else "") + " (multiples of 32)")
        else:
            rep.warnings.append(msg)

    # empty sets, also after skipping unreadable files
    for what, n, bad, sample, src in (("label maps", rep.num_labels, bad_labels, lpaths, layout.label_source),
                                      ("photos", rep.num_photos, bad_photos, ppaths, layout.photo_source)):
        if n and bad == len(sample):
            rest = "all of them" if len(sample) == n else f"all {len(sample)} inspected"
            rep.problems.append(f"no readable {what} left: {rest} of the {n} files under {src} are unreadable "
                                f"(e.g. {sample[0]}); re-download or re-export them")
        elif bad and d.skip_corrupt:
            rep.warnings.append(f"skipping {bad} unreadable {what} (data.skip_corrupt=true), e.g. "
                                f"{rep.skipped[0] if what == 'label maps' else rep.skipped[-1]}")
    if split == "train" and 0 < min(rep.num_labels or 10**9, rep.num_photos or 10**9) < cfg.train.batch_size:
        rep.problems.append(f"only {min(rep.num_labels, rep.num_photos)} files in the smaller set for "
                            f"train.batch_size={cfg.train.batch_size}: lower --set train.batch_size or add data")
    rep.problems += found.flat()
    return rep


def _check_synthetic(cfg: Config, split: str, k: int) -> CheckReport:
    """The embedded set needs no files; inspect a few items through the datasets themselves."""
    bundle = build_datasets(cfg, split)
    nc = bundle.num_classes
    rep = CheckReport(kind="synthetic", split=split, label_source="(procedural)", photo_source="(procedural)",
                      num_labels=len(bundle.labels), num_photos=len(bundle.photos), num_classes=nc,
                      dontcare=bundle.dontcare, class_names=list(bundle.class_names))
    n = min(len(bundle.labels), k or 16, 16)
    pixels = np.zeros(nc, dtype=np.int64)
    images = np.zeros(nc, dtype=np.int64)
    lsizes, psizes = [], []
    for i in range(n):
        lab = bundle.labels[i]["label"].numpy()
        if lab.min() < 0 or lab.max() >= nc:
            rep.problems.append(f"synthetic label map {i}: ids outside [0, {nc}) (a bug in usis.data.synthetic)")
            continue
        c = np.bincount(lab.ravel(), minlength=nc)[:nc]
        pixels += c
        images += c > 0
        lsizes.append((lab.shape[1], lab.shape[0]))
    for i in range(min(len(bundle.photos), n)):
        img = bundle.photos[i]["image"]
        psizes.append((img.shape[2], img.shape[1]))
    rep.inspected_labels, rep.inspected_photos = len(lsizes), len(psizes)
    rep.label_sizes, rep.photo_sizes = _size_summary(lsizes), _size_summary(psizes)
    rep.class_pixels, rep.class_images = pixels.tolist(), images.tolist()
    if pixels.sum() and bundle.dontcare is not None:
        rep.dontcare_share = float(pixels[bundle.dontcare] / pixels.sum())
    return rep


# ------------------------------------------------------------------------------------------- output


def _fmt_sizes(s: dict[str, Any]) -> str:
    if not s:
        return "-"
    common = ", ".join(f"{w}x{h} ({c})" for w, h, c in s["common"])
    return f"{common}; min {s['min'][0]}x{s['min'][1]}, max {s['max'][0]}x{s['max'][1]}"


def format_report(report: CheckReport) -> str:
    """A human-readable table of ``report`` (counts, sizes, class histogram, warnings, problems)."""
    r = report
    lines = [f"dataset check: {r.kind} ({r.split})",
             f"  label maps : {r.num_labels} found ({r.label_source}), {r.inspected_labels} inspected",
             f"  photos     : {r.num_photos} found ({r.photo_source}), {r.inspected_photos} inspected",
             f"  label sizes: {_fmt_sizes(r.label_sizes)}",
             f"  photo sizes: {_fmt_sizes(r.photo_sizes)}"]
    total = sum(r.class_pixels)
    if r.dontcare is not None and r.dontcare < len(r.class_names):
        share = "-" if r.dontcare_share is None else f"{r.dontcare_share:.1%} of label pixels"
        lines.append(f"  don't care : id {r.dontcare} ({r.class_names[r.dontcare]}), {share}")
    else:
        lines.append("  don't care : none")
    if total:
        seen = [i for i, p in enumerate(r.class_pixels) if p]
        lines.append(f"  classes    : {len(seen)} of {r.num_classes} ids seen in the inspected label maps")
        width = max([len(r.class_names[i]) for i in seen if i < len(r.class_names)] + [4])
        lines.append(f"    {'id':>4}  {'name':<{width}}  {'pixels':>8}  {'images':>6}")
        for i in seen:
            name = r.class_names[i] if i < len(r.class_names) else f"class_{i}"
            lines.append(f"    {i:>4}  {name:<{width}}  {r.class_pixels[i] / total:>8.2%}  {r.class_images[i]:>6}")
        unseen = [i for i, p in enumerate(r.class_pixels) if not p]
        if unseen:
            shown = ", ".join(map(str, unseen[:30])) + (", ..." if len(unseen) > 30 else "")
            lines.append(f"    not seen: {shown}")
    if r.labelled:
        lines.append(f"  labelled   : {r.labelled['count']} of {r.labelled['available']} pairs (data.labelled="
                     f"{'all' if r.labelled['count'] == r.labelled['available'] else r.labelled['count']}), from "
                     f"{r.labelled['source']}")
    if r.skipped:
        lines.append(f"  skipped    : {len(r.skipped)} unreadable files (data.skip_corrupt=true)")
    for w in r.warnings:
        lines.append(f"  warning: {w}")
    if r.problems:
        lines.append(f"  PROBLEMS ({len(r.problems)}):")
        lines += [f"    - {p}" for p in r.problems]
        lines.append("  FAILED: fix the problems above, then run the check again")
    else:
        lines.append("  OK")
    return "\n".join(lines)


def _splits(cfg: Config) -> list[str]:
    d = cfg.data
    if d.kind == "folder" and not (d.val_labels or d.val_photos):
        return ["train"]  # val would re-check the training folders
    return ["train", "val"]


def run_check(cfg: Config, json_out: bool = False, splits: list[str] | None = None,
              max_files: int | None = None) -> int:
    """Check ``splits`` (default: train and, if it has its own files, val), print the report (text or
    JSON) and return the exit status: 0 if no problems, 1 otherwise."""
    reports = [check_dataset(cfg, s, max_files) for s in (splits or _splits(cfg))]
    if json_out:
        print(json.dumps({r.split: r.to_dict() for r in reports}, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0 if all(r.ok for r in reports) else 1


def preflight(cfg: Config, splits: list[str] | None = None) -> list[CheckReport]:
    """Check a sample (``data.check_samples``) of each split before training; raise
    :class:`DatasetError` with every problem in one message, emit warnings for the rest."""
    if cfg.data.kind == "synthetic":
        return []
    reports = [check_dataset(cfg, s) for s in (splits or _splits(cfg))]
    problems = [f"[{r.split}] {p}" for r in reports for p in r.problems]
    if problems:
        raise DatasetError(_join_problems(f"{cfg.data.kind} dataset", problems)
                           + "\n(run `usis data check` for the full report)")
    for r in reports:
        for w in r.warnings:
            warnings.warn(f"[{r.split}] {w}", DataWarning, stacklevel=2)
    return reports
