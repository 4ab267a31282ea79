"""Final evaluation of a trained generator: FID / KID / mIoU / MS-SSIM and a JSON + Markdown report.

Realism without downloaded weights: ``c2st``, the classifier two-sample test (:mod:`usis.metrics.c2st`) of the
generated images against as many validation photos.

Protocol (PAPER.md, "Evaluation protocol"): the EMA generator turns the validation label maps into
images (image i with noise seed ``seed + i``, so any of them can be regenerated with
``usis generate --seed <seed + i> --n 1``); these are compared with the validation photos (FID/KID,
TF-FID Inception-v3 pool features), segmented by a pretrained network and scored against the label
maps they came from (mIoU), and for MS-SSIM diversity ``msssim_samples`` images are generated for each
of the first ``msssim_maps`` label maps.

The synthetic preset has no pretrained networks, so it is scored by
:class:`usis.metrics.synthetic_eval.SyntheticEvaluator` (``miou``, ``miou_ceiling``, ``sfid`` and the
per-class table); ``fid`` / ``kid`` (Inception) and ``msssim`` can be asked for as well.

Real statistics for FID are cached by :func:`usis.metrics.fid.compute_fid` under a key made of the
dataset (its kind plus a fingerprint of the photo files used: path, size, modification time -- so two
different folders, or changed files, never share statistics), the split, the resolution, the feature
extractor id and the number of photos.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from usis.config import Config, apply_overrides
from usis.data import build_datasets
from usis.data.datasets import label_set
from usis.errors import DiskFullError, EvaluateError
from usis.generate import LoadedGenerator, generate_images, load_generator
from usis.metrics.c2st import as_written, chance_spread, classifier_two_sample_test
from usis.metrics.diversity import msssim_diversity
from usis.metrics.fid import FeatureDistance, compute_distances
from usis.metrics.protocol import (
    RESULT_ORDER,
    label_batches,
    parse_metrics,
    photo_batches,
    real_key,
)
from usis.metrics.report import write_report
from usis.metrics.scoring import evaluation_tools
from usis.utils.device import resolve_device
from usis.utils.images import colorize_tensor, save_grid
from usis.utils.io import disk_full_cause, disk_full_error

# ------------------------------------------------------------------------------------------- evaluate


def _eval_config(gen: LoadedGenerator, overrides: list[str] | None) -> Config:
    cfg = Config.from_dict(gen.cfg.to_dict()).sync()
    apply_overrides(cfg, overrides)
    if dataclasses.asdict(cfg.model) != dataclasses.asdict(gen.cfg.model):
        raise EvaluateError("--set model.*: the generator's architecture comes from the checkpoint and cannot be "
                            "overridden at evaluation")
    for name in ("num_classes", "height", "width"):
        old, new = getattr(gen.cfg.data, name), getattr(cfg.data, name)
        if old != new:
            raise EvaluateError(f"--set data.{name}={new}: this generator was trained with data.{name}={old}; "
                                "evaluate on data of the same label set and size")
    return cfg


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def evaluate_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                        metrics: str | list[str] | None = None, segmenter: str | None = None,
                        segmenter_path: str | None = None, segmenter_mapping: str | None = None,
                        fid_weights: str | None = None, num_images: int | None = None,
                        overrides: list[str] | None = None, device: str = "auto", seed: int = 0,
                        batch_size: int | None = None, msssim_maps: int = 50, msssim_samples: int = 20,
                        log: Callable[[str], None] = _log, revision: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint (or export folder) on its validation split; write ``report.json`` / ``report.md``.

    ``metrics``: comma list of ``fid``, ``kid``, ``miou``, ``msssim`` (``sfid`` on the synthetic preset);
    default: the run's ``eval.metrics`` (plus ``miou`` when a ``segmenter`` is given).
    ``num_images``: validation label maps (and photos) used; default ``eval.num_images``, 0 = all.
    ``overrides``: ``--set`` strings applied to the run's config (``data.root=...``; not ``model.*``).
    ``revision``: for a Hub model (``org/name``), its branch, tag or commit.
    Returns ``{"results", "per_class", "meta", "report_json", "report_md"}``.
    """
    dev = resolve_device(device, setting="--device")
    gen = load_generator(checkpoint, dev, revision=revision)
    cfg = _eval_config(gen, overrides)
    if fid_weights:
        cfg.eval.fid_weights = fid_weights
    kind = cfg.data.kind
    if metrics is None:
        wanted = parse_metrics(cfg.eval.metrics, kind)
        if segmenter and "miou" not in wanted:
            wanted.append("miou")
    else:
        wanted = parse_metrics(metrics, kind)
    bs = int(batch_size or cfg.eval.batch_size)
    meta: dict[str, Any] = {"checkpoint": gen.source, "step": gen.step, "preset": cfg.preset, "kind": kind,
                            "resolution": f"{cfg.data.height}x{cfg.data.width}", "seed": seed,
                            "metrics": ",".join(wanted), "device": str(dev)}

    # --- the measuring tools first: a missing weights file should fail before any image is generated
    tools = evaluation_tools(cfg, wanted, dev, segmenter, segmenter_path, segmenter_mapping)
    meta.update(tools.meta)

    # --- data
    val = build_datasets(cfg, "val")
    if val.num_classes != gen.num_classes:
        raise EvaluateError(f"the validation label maps have {val.num_classes} classes but the generator was "
                            f"trained with {gen.num_classes}")
    requested = cfg.eval.num_images if num_images is None else int(num_images)
    n = len(val.labels) if requested <= 0 else min(requested, len(val.labels))
    n_real = len(val.photos) if requested <= 0 else min(requested, len(val.photos))
    if n < 2:
        raise EvaluateError(f"only {n} validation label map(s) available; evaluation needs at least 2")
    meta.update(num_images=n, num_real_images=n_real)
    log(f"evaluating {gen.source} (step {gen.step}) on {n} {kind} validation label maps: {', '.join(wanted)}")

    # --- one pass over the label maps: generate, then feed every metric that looks at single images
    preview: list[Tensor] = []
    preview_labels: list[Tensor] = []
    written: list[Tensor] = []  # the generated images as 8-bit, for the two-sample test

    def fakes() -> Iterator[Tensor]:
        start = 0
        for labels in label_batches(val.labels, n, bs, cfg.data.num_workers):
            seeds = list(range(seed + start, seed + start + len(labels)))
            fake = generate_images(gen.G, labels, seeds, batch_size=bs)
            start += len(labels)
            if tools.scorer is not None:
                tools.scorer.update(fake, labels)
            if "c2st" in wanted:
                written.append(as_written(fake))
            if sum(len(p) for p in preview) < 8:
                preview.append(fake[:8])
                preview_labels.append(labels[:8])
            yield fake

    results: dict[str, Any] = {}
    if tools.extractors:  # FID / KID / sFID: the same Frechet-distance code, real statistics cached
        distances = {name: FeatureDistance(ext, real_key(cfg, val.photos, n_real, ext), kid=name == "fid" and "kid" in wanted)
                     for name, ext in tools.extractors.items()}
        res = compute_distances(fakes(), photo_batches(val.photos, n_real, bs, cfg.data.num_workers), distances,
                                cfg.eval.cache_dir or None)
        if "fid" in res:
            results["fid"] = float(res["fid"]["fid"])
            if "kid" in wanted:
                results["kid_mean"], results["kid_std"] = float(res["fid"]["kid_mean"]), float(res["fid"]["kid_std"])
            meta["fid_real_stats"] = res["fid"]["cache"]
        if "sfid" in res:
            results["sfid"] = float(res["sfid"]["fid"])
    else:
        for _ in fakes():
            pass

    per_class: list[tuple[str, float]] | None = None
    if tools.scorer is not None:
        scores, per_class = tools.scorer.results()
        results.update(scores)
    if "c2st" in wanted:  # the generated images against as many validation photos (8-bit both)
        real = torch.cat([as_written(x) for x in photo_batches(val.photos, n_real, bs, cfg.data.num_workers)()])
        c2st = classifier_two_sample_test(real, torch.cat(written), seed=seed, device=dev)
        results.update(c2st=c2st["c2st"], c2st_loss=c2st["c2st_loss"])
        meta.update(c2st_images=int(c2st["c2st_n"]), c2st_chance_spread=chance_spread(int(c2st["c2st_n"])))
    if "msssim" in wanted:
        results["msssim"] = _msssim(gen, val.labels, min(msssim_maps, n), msssim_samples, seed + n, bs,
                                    cfg.data.num_workers)
        meta.update(msssim_maps=min(msssim_maps, n), msssim_samples=msssim_samples)

    results = {k: results[k] for k in RESULT_ORDER if k in results}
    try:  # the report first: on a full disk the measured numbers are what must not be lost
        json_path, md_path = write_report(out_dir, kind, results, per_class, meta)
    except DiskFullError as e:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
        raise DiskFullError(f"{e}; the results were: {shown}", e.path, e.free, e.needed, e.errno) from e
    _save_preview(out_dir, preview, preview_labels, val, n_real, cfg)
    return {"results": results, "per_class": per_class, "meta": meta, "report_json": json_path,
            "report_md": md_path}


def _msssim(gen: LoadedGenerator, labels_ds, maps: int, samples: int, first_seed: int, bs: int,
            workers: int) -> float:
    counter = itertools.count(first_seed)

    def generate_fn(labels: Tensor) -> Tensor:
        return generate_images(gen.G, labels, [next(counter) for _ in range(len(labels))], batch_size=bs)

    labels = torch.cat(list(label_batches(labels_ds, maps, bs, workers)))
    return msssim_diversity(generate_fn, labels, n_samples=samples, batch_size=min(samples, max(bs, 2)))


def _save_preview(out_dir, preview: list[Tensor], preview_labels: list[Tensor], val, n_real: int,
                  cfg: Config) -> None:
    """``samples.png``: label | generated | a real photo, for the first (up to 8) label maps. Written after the
    report: a full disk here is one :class:`~usis.errors.DiskFullError` that says the report is there."""
    if not preview:
        return
    fake = torch.cat(preview)[:8]
    labels = torch.cat(preview_labels)[:8]
    real = torch.stack([val.photos[i]["image"] for i in range(min(len(fake), n_real))])
    _, palette = label_set(cfg)
    path = Path(out_dir) / "samples.png"
    existed = path.exists()
    try:
        save_grid([colorize_tensor(labels, palette), fake, real], path)
    except Exception as e:
        if disk_full_cause(e) is None:
            raise
        if not existed:
            path.unlink(missing_ok=True)  # no torn PNG
        raise disk_full_error(e, path, 3 * int(fake[0].numel()) * len(fake),
                              hint=f"the report was written ({path.parent / 'report.json'}, report.md); samples.png "
                                   "is only its preview: free some space and evaluate again for it") from e
