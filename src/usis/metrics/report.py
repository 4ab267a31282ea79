"""Evaluation report: ``report.json`` (all numbers + run metadata) and ``report.md`` (a table with the
paper's Table 5 numbers beside ours, then the per-class IoU table). Both files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from usis.metrics.protocol import METRICS
from usis.utils.io import atomic_write

#: Table 5 of the paper (unsupervised methods; OASIS is the supervised reference). ``msssim`` for USIS
#: on Cityscapes is from Table 3. GTA-V -> Cityscapes and the synthetic preset have no paper numbers.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "cityscapes": {
        "USIS": {"fid": 53.67, "miou": 44.78, "msssim": 0.51},
        "CUT": {"fid": 57.3, "miou": 29.8},
        "CycleGAN": {"fid": 87.2, "miou": 24.5},
        "OASIS": {"fid": 47.7, "miou": 69.3},
    },
    "ade20k": {
        "USIS": {"fid": 33.2, "miou": 17.38},
        "CUT": {"fid": 79.1, "miou": 6.9},
        "CycleGAN": {"fid": 96.3, "miou": 5.4},
        "OASIS": {"fid": 28.3, "miou": 48.8},
    },
    "coco": {
        "USIS": {"fid": 27.8, "miou": 14.06},
        "CUT": {"fid": 85.6, "miou": 2.21},
        "CycleGAN": {"fid": 104.7, "miou": 2.08},
        "OASIS": {"fid": 17.0, "miou": 44.1},
    },
}
PAPER_METHODS = ("USIS", "CUT", "CycleGAN", "OASIS")
_ALIASES = {"coco-stuff": "coco", "cocostuff": "coco", "coco_stuff": "coco", "ade": "ade20k"}

# metric key -> (label, direction), from the one registry
METRIC_LABELS: dict[str, tuple[str, str]] = {
    k: (label, {True: "higher is better", False: "lower is better", None: ""}[higher])
    for k, (label, higher) in METRICS.items()
}
METRIC_LABELS["msssim"] = (METRICS["msssim"][0], "lower = more diverse")
METRIC_LABELS["c2st"] = ("C2ST accuracy", "0.5 = the classifier cannot tell them from photos, 1.0 = it always can")
METRIC_LABELS["c2st_loss"] = ("C2ST held-out loss", "higher = harder to tell; 0.69 at chance")


def paper_results(dataset: str) -> dict[str, dict[str, float]]:
    """The paper's numbers for a dataset (empty dict when the paper reports none)."""
    key = dataset.lower()
    return PAPER_RESULTS.get(_ALIASES.get(key, key), {})


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # tensors / numpy scalars
        return _json_safe(obj.item())
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def render_markdown(dataset: str, results: dict[str, Any], per_class: list[tuple[str, float]] | None,
                    meta: dict[str, Any]) -> str:
    paper = paper_results(dataset)
    lines = [f"# Evaluation report: {dataset}", ""]
    for key in ("checkpoint", "step", "num_images", "segmenter", "fid_extractor", "date"):
        if key in meta:
            lines.append(f"- {key}: {_fmt(meta[key])}")
    lines.append("")
    header = "| metric | ours | " + " | ".join(
        "USIS (paper)" if m == "USIS" else (f"{m} (supervised)" if m == "OASIS" else m) for m in PAPER_METHODS)
    lines += [header + " |", "|" + "---|" * (2 + len(PAPER_METHODS))]
    for key, value in results.items():
        label, direction = METRIC_LABELS.get(key, (key, ""))
        name = f"{label} ({direction})" if direction else label
        cells = [_fmt(paper.get(m, {}).get(key)) for m in PAPER_METHODS]
        lines.append(f"| {name} | {_fmt(value)} | " + " | ".join(cells) + " |")
    if not paper:
        lines += ["", f"The paper reports no numbers for {dataset!r}."]
    else:
        lines += ["", "Paper numbers: Table 5 of Eskandar et al., USIS (Computers & Graphics 2023); "
                  "MS-SSIM of USIS from Table 3. The paper's mIoU used DRN-D-105 (Cityscapes), UperNet-101 "
                  "(ADE20K) and DeepLabV2 (COCO-Stuff); mIoU from another segmenter is not comparable."]
    if per_class:
        lines += ["", "## Per-class IoU", "", "| class | IoU (%) |", "|---|---|"]
        lines += [f"| {name} | {_fmt(float(iou))} |" for name, iou in per_class]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, dataset: str, results: dict[str, Any],
                 per_class: list[tuple[str, float]] | None = None,
                 meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths.

    ``results``: metric name -> value (``fid``, ``kid_mean``, ``kid_std``, ``miou``, ``msssim``, ...);
    ``per_class``: ``[(class name, IoU %)]``; ``meta``: anything describing the run (checkpoint, step...).
    NaN values are stored as ``null`` in the JSON.
    """
    out = Path(out_dir)
    meta = dict(meta or {})
    meta.setdefault("date", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    payload = {
        "dataset": dataset,
        "results": results,
        "per_class_iou": [{"class": n, "iou": v} for n, v in per_class] if per_class else None,
        "paper": paper_results(dataset),
        "meta": meta,
    }
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write(json_path, json.dumps(_json_safe(payload), indent=2, sort_keys=False) + "\n")
    atomic_write(md_path, render_markdown(dataset, results, per_class, meta))
    return json_path, md_path
