"""``usis train`` as a library function: :func:`train` checks a resolved config, then trains it in this
process, in N data-parallel workers, or as one rank of a torchrun launch. The CLI and ``make demo`` call
it; so can a script::

    from usis import config as C
    from usis.train.run import train
    summary = train(C.apply_overrides(C.get_preset("synthetic"), ["train.iters=100"]), "runs/mine")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from usis import config as C
from usis.data.check import preflight
from usis.metrics.protocol import higher_is_better
from usis.nn.build import check_image_size
from usis.train import distributed
from usis.train.trainer import train_process
from usis.utils.device import resolve_device


def check(cfg: C.Config) -> None:
    """Everything that can be known wrong before a process starts: the config's structure, the image size
    the networks need, the tracked metric, and the data (a quick sample of the files)."""
    C.validate(cfg)
    check_image_size(cfg)
    if cfg.train.eval_every >= 0:
        higher_is_better(cfg.eval.best_metric)  # best.pt needs a metric with a direction
    preflight(cfg)


def train(cfg: C.Config, out_dir: str | os.PathLike, resume: str | os.PathLike | None = None,
          progress: bool = True, deadline: float | None = None, log=None) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir`` (continuing from the checkpoint ``resume``) until ``cfg.train.iters``,
    its time budget, ``deadline`` (a Unix time) or a Ctrl-C / SIGTERM; returns :meth:`Trainer.fit`'s summary
    (``step``, ``interrupted``, ``final_metrics``, ``diverged``, ...) on rank 0 and ``{"rank": r, ...}``
    on the other ranks of a torchrun launch. Raises :class:`~usis.errors.UsisError` for what the user
    can fix, before anything is trained, and :class:`~usis.errors.DiskFullError` when a checkpoint save meets
    a full disk (the run stops there; torchrun ranks other than 0 return ``summary["disk_full"]``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check(cfg)
    out = Path(out_dir)
    env = distributed.from_environment(cfg.train.dist_timeout)  # torchrun
    use_cuda = resolve_device(cfg.train.device, setting="train.device").type == "cuda"
    nproc = distributed.resolve_nproc(cfg.train.nproc, cfg.train.batch_size, use_cuda)
    if env.enabled or nproc == 1:
        try:
            summary = train_process(env, cfg, out, resume, progress, deadline)
            distributed.shutdown()  # torchrun: every rank done before any leaves the group
        except distributed.CollectiveFailed as e:  # torchrun: another rank died (its agent names it) or hung
            raise e.with_hint(distributed.resume_hint(out)) from None
        if not env.is_main:
            summary["rank"] = env.rank
            return summary
        return _raise_disk_full(summary)
    log(f"training with {nproc} data-parallel processes ({'one GPU' if use_cuda else 'CPU'} each, "
        f"{cfg.train.batch_size // nproc} of the batch of {cfg.train.batch_size} each)")
    return _raise_disk_full(distributed.launch(train_process, nproc, (cfg, out, resume, progress, deadline), use_cuda,
                                               cfg.train.dist_timeout, lambda: distributed.resume_hint(out)))


def _raise_disk_full(summary: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint save that met a full disk ended every rank cleanly with the error as its result
    (:func:`~usis.train.trainer.train_process`); raise it here, once, for the CLI's one ``error:`` line."""
    if summary and summary.get("disk_full") is not None:
        raise summary["disk_full"]
    return summary
