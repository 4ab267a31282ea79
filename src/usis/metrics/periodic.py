"""Periodic evaluation during a training run: which evaluator a dataset gets (the synthetic preset's own
network, or FID/KID with cached real statistics on real data). The evaluators take the trainer (its
``generate``, ``device`` and ``step``) and import nothing from ``usis.train``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from usis.config import Config
from usis.data.synthetic import stack
from usis.errors import PeriodicEvaluationWarning
from usis.metrics.c2st import as_written, classifier_two_sample_test
from usis.metrics.diversity import msssim_diversity
from usis.metrics.fid import MetricsError, build_inception, compute_fid
from usis.metrics.protocol import label_batches, parse_metrics, photo_batches, real_key
from usis.metrics.scoring import scoring_segmenter

EVAL_SEED = 1234  # image i of a periodic evaluation has noise seed EVAL_SEED + i


def make_synthetic_evaluator(cfg: Config, val) -> Callable[[Any], dict[str, float]]:
    """mIoU / ceiling / sFID with the synthetic preset's own segmentation network."""
    n = min(cfg.eval.num_images or len(val.labels), len(val.labels), len(val.photos))
    labels = stack(val.labels, "label", n)
    real = stack(val.photos, "image", n)
    state: dict[str, Any] = {}

    wanted = parse_metrics(cfg.eval.metrics, cfg.data.kind)
    diversity, realism = "msssim" in wanted, "c2st" in wanted

    def evaluate(trainer) -> dict[str, float]:
        if "ev" not in state:
            state["ev"] = scoring_segmenter(cfg, "synthetic", device=str(trainer.device))
        fake = trainer.generate(labels, range(EVAL_SEED, EVAL_SEED + len(labels)), batch_size=cfg.eval.batch_size)
        out = {k: float(v) for k, v in state["ev"].evaluate(fake, labels, real).items()}
        # realism and diversity: not at initialisation, where every image is caught and the seeds differ by the
        # untrained weights alone (not worth a demo's seconds)
        if realism and trainer.step > 0:
            out.update(classifier_two_sample_test(real, as_written(fake), device=trainer.device))
        if diversity and trainer.step > 0:
            out["msssim"] = msssim_of(trainer, labels[:MSSSIM_MAPS])
        return out

    return evaluate


MSSSIM_MAPS, MSSSIM_SAMPLES = 10, 20  # the paper's 20 images per label map; its first 10 validation maps


def msssim_of(trainer, labels) -> float:
    """MS-SSIM diversity (:mod:`usis.metrics.diversity`) of the trainer's EMA generator: ``MSSSIM_SAMPLES``
    images per label map with their own fixed seeds (the same at every evaluation)."""
    return msssim_with(lambda batch, seeds: trainer.generate(batch, seeds, batch_size=MSSSIM_SAMPLES), labels)


def msssim_with(generate: Callable[[Any, list[int]], Any], labels) -> float:
    """The periodic evaluation's MS-SSIM protocol for any generator: ``generate(label_batch, seeds)`` makes one
    image per map with those noise seeds; each map gets ``MSSSIM_SAMPLES`` seeds of its own, the same every time
    (so a checkpoint scored later, e.g. by benchmarks/peers.py, gets the figure its training run logged)."""
    seeds = iter(range(EVAL_SEED + 100_000, EVAL_SEED + 100_000 + len(labels) * MSSSIM_SAMPLES))
    return msssim_diversity(lambda batch: generate(batch, [next(seeds) for _ in range(len(batch))]), labels,
                            n_samples=MSSSIM_SAMPLES, batch_size=MSSSIM_SAMPLES)


def make_fid_evaluator(cfg: Config, val) -> Callable[[Any], dict[str, float]] | None:
    """FID (and KID if ``kid`` is in ``eval.metrics``) of EMA samples from the first ``eval.num_images``
    validation label maps against as many validation photos, with cached real statistics; with ``c2st`` the
    classifier two-sample test (:mod:`usis.metrics.c2st`) of the same images against the photos.

    The Inception weights are loaded here, before training starts: if they cannot be obtained (offline,
    ``eval.fid_weights`` wrong), a :class:`PeriodicEvaluationWarning` says how to fix it and FID is left out
    (training runs without it instead of crashing at its first evaluation).
    """
    requested = parse_metrics(cfg.eval.metrics, cfg.data.kind)
    wanted = [m for m in requested if m in ("fid", "kid", "c2st")]
    others = [m for m in requested if m not in wanted]
    if others:
        warnings.warn(f"eval.metrics: {', '.join(others)} are not computed during training on real data (they need "
                      "a pretrained segmenter or many samples per map); run `usis evaluate` on a checkpoint",
                      PeriodicEvaluationWarning, stacklevel=2)
    extractor = None
    if "fid" in wanted or "kid" in wanted:
        try:
            extractor = build_inception(cfg.eval.fid_weights or None)
        except MetricsError as e:
            warnings.warn(f"periodic FID is disabled for this run (training continues; best.pt by "
                          f"{cfg.eval.best_metric} will not be written): {e}", PeriodicEvaluationWarning, stacklevel=2)
    realism = "c2st" in wanted
    if extractor is None and not realism:
        return None
    limit = cfg.eval.num_images
    n = len(val.labels) if limit <= 0 else min(limit, len(val.labels))
    n_real = len(val.photos) if limit <= 0 else min(limit, len(val.photos))
    if n < 2 or n_real < 2:
        warnings.warn(f"periodic evaluation is disabled: it needs at least 2 validation label maps and photos (found "
                      f"{len(val.labels)} and {len(val.photos)})", PeriodicEvaluationWarning, stacklevel=2)
        return None
    key = real_key(cfg, val.photos, n_real, extractor) if extractor is not None else None
    bs, workers = cfg.eval.batch_size, cfg.data.num_workers
    kid = "kid" in wanted

    def evaluate(trainer) -> dict[str, float]:
        written: list = []  # the generated images as 8-bit, for the two-sample test

        def fakes():
            for b, labels in enumerate(label_batches(val.labels, n, bs, workers)):
                fake = trainer.generate(labels, range(EVAL_SEED + b * bs, EVAL_SEED + b * bs + len(labels)),
                                        batch_size=bs)
                if realism:
                    written.append(as_written(fake))
                yield fake

        out: dict[str, float] = {}
        try:  # a metric must not end a long run; the warning says what happened
            if extractor is not None:
                extractor.to(trainer.device)
                res = compute_fid(fakes(), photo_batches(val.photos, n_real, bs, workers), key,
                                  cfg.eval.cache_dir or None, extractor, kid=kid)
                out["fid"] = float(res["fid"])
                if kid:
                    out.update(kid_mean=float(res["kid_mean"]), kid_std=float(res["kid_std"]))
            else:
                for _ in fakes():
                    pass
            if realism:
                real = torch.cat([as_written(x) for x in photo_batches(val.photos, n_real, bs, workers)()])
                out.update(classifier_two_sample_test(real, torch.cat(written), device=trainer.device))
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"periodic evaluation at step {trainer.step} failed and was skipped: {type(e).__name__}: "
                          f"{e}", PeriodicEvaluationWarning, stacklevel=2)
            return {}
        return out

    return evaluate


def make_evaluator(cfg: Config, val) -> Callable[[Any], dict[str, float]] | None:
    """The periodic evaluation of a run: synthetic preset -> its own evaluator; real data -> FID/KID."""
    if cfg.data.kind == "synthetic":
        return make_synthetic_evaluator(cfg, val)
    return make_fid_evaluator(cfg, val)
