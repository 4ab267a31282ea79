"""The evaluation protocol shared by ``usis evaluate`` and periodic evaluation during training: which
metrics exist, which validation images an evaluation reads and in what order, and the key under which
real-image statistics are cached (PAPER.md, "Evaluation protocol").

Image i of an evaluation has noise seed ``seed + i`` (:mod:`usis.nn.noise`), so any generated image can be
made again with ``usis generate --seed <seed + i> --n 1``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

from torch import Tensor
from torch.utils.data import Subset

from usis.config import Config, ConfigError
from usis.data.synthetic import DATA_VERSION
from usis.data.unpaired import make_eval_loader
from usis.errors import EvaluateError
from usis.metrics.fid import feature_extractor_id, real_stats_key

ALL_METRICS = ("fid", "kid", "miou", "msssim", "sfid", "c2st")

# Every value an evaluation reports: its label and which way is better (None: neither, e.g. a spread).
# The one registry behind best.pt tracking, the report's table and the demo's table.
METRICS: dict[str, tuple[str, bool | None]] = {
    "fid": ("FID", False),
    "kid_mean": ("KID", False),
    "kid_std": ("KID std", None),
    "miou": ("mIoU %", True),
    "pixel_accuracy": ("pixel accuracy %", True),
    "miou_ceiling": ("mIoU ceiling %", None),
    "msssim": ("MS-SSIM", False),  # lower = more diverse
    "sfid": ("synthetic FID", False),
    "c2st": ("C2ST accuracy (0.5 = indistinguishable)", False),  # usis.metrics.c2st
    "c2st_loss": ("C2ST held-out loss", True),  # higher = harder to tell from photos
}


def higher_is_better(key: str) -> bool:
    """Which way ``key`` improves; a :class:`~usis.errors.ConfigError` for a value with no direction."""
    direction = METRICS.get(key, (None, None))[1]
    if direction is None:
        known = ", ".join(k for k, (_, d) in METRICS.items() if d is not None)
        raise ConfigError(f"eval.best_metric={key}: not a metric with a better direction; use one of {known}")
    return direction


def is_better(key: str, new: float, old: float | None) -> bool:
    """``new`` improves on ``old`` (``None``: nothing yet) for metric ``key``."""
    return old is None or (new > old if higher_is_better(key) else new < old)


def new_best(best: dict[str, float], key: str, metrics: dict[str, float], step: int) -> dict[str, float] | None:
    """A run's best record (``{key: value, "step": step}``) after an evaluation at ``step``, if ``metrics``
    improves on ``best`` in ``key``; ``None`` if not (or if ``key`` was not computed)."""
    if key in metrics and is_better(key, metrics[key], best.get(key)):
        return {key: metrics[key], "step": step}
    return None


SEGMENTERS = ("drn", "segformer", "torchscript")
RESULT_ORDER = ("fid", "kid_mean", "kid_std", "miou", "pixel_accuracy", "miou_ceiling", "sfid", "c2st", "c2st_loss",
                "msssim")


def parse_metrics(text: str | list[str] | tuple[str, ...], kind: str) -> list[str]:
    """``"fid,kid,miou"`` -> ``["fid", "kid", "miou"]`` (order kept, duplicates dropped, names checked)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name in ("miou_ceiling",):
            name = "miou"
        if name not in ALL_METRICS:
            raise EvaluateError(f"unknown metric {name!r}; choose from fid, kid, miou, msssim, c2st "
                                "(and sfid for the synthetic preset)")
        if name == "sfid" and kind != "synthetic":
            raise EvaluateError("sfid is the synthetic preset's metric; on real data use fid")
        if name not in out:
            out.append(name)
    if not out:
        raise EvaluateError("no metrics requested; e.g. --metrics fid,miou")
    return out


def dataset_fingerprint(cfg: Config, photos, n: int) -> str:
    """What identifies the first ``n`` validation photos, for the real-statistics cache key."""
    if cfg.data.kind == "synthetic":
        return f"synthetic:data{DATA_VERSION}:seed{cfg.data.synthetic_seed}"
    h = hashlib.sha1()
    for p in list(getattr(photos, "paths", []))[:n]:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return f"{cfg.data.kind}:{h.hexdigest()[:16]}"


def real_key(cfg: Config, photos, n: int, extractor) -> str:
    """The :func:`usis.metrics.fid.real_stats_key` of the first ``n`` validation photos."""
    return real_stats_key(dataset_fingerprint(cfg, photos, n), "val", (cfg.data.height, cfg.data.width),
                          feature_extractor_id(extractor), n)


def photo_batches(photos, n: int, batch_size: int, num_workers: int = 0) -> Callable[[], Iterator[Tensor]]:
    """A factory of iterators over the first ``n`` photos, in batches (float N x 3 x H x W in [-1, 1])."""
    def factory() -> Iterator[Tensor]:
        for batch in make_eval_loader(Subset(photos, range(n)), batch_size, num_workers):
            yield batch["image"]

    return factory


def label_batches(labels, n: int, batch_size: int, num_workers: int = 0) -> Iterator[Tensor]:
    """The first ``n`` label maps in order, in batches (int64 N x H x W)."""
    for batch in make_eval_loader(Subset(labels, range(n)), batch_size, num_workers):
        yield batch["label"]
