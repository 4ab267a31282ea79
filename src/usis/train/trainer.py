"""The USIS trainer: sets a run up, runs its loop, keeps its state.

One iteration is :meth:`Trainer.train_step`: what each network learns is :mod:`usis.train.phases` (Eq. 2 of
the paper, a phase per network), how the work is done :mod:`usis.train.schedule` (order, shared forwards,
gradient averages, speed switches). Around it: the learning rates (:mod:`usis.train.lr`), sample grids and
the EMA generator's statistics (:mod:`usis.train.samples`), periodic evaluation (:mod:`usis.metrics.periodic`),
checkpoints (:mod:`usis.checkpoint`), logs (:mod:`usis.train.logging`, :mod:`usis.train.progress`).

Label maps and photos come from two independent streams: they never correspond.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usis.checkpoint import (
    CHECKPOINT_VERSION,
    all_finite,
    checkpoint_path,
    disk_full_message,
    load_checkpoint,
    remove_stale_temp,
    rng_state,
    save_atomic,
    set_rng_state,
)
from usis.config import Config, ConfigError
from usis.data import build_datasets
from usis.data.labelled import build_labelled
from usis.data.unpaired import make_loaders
from usis.errors import DiskFullError, TrainingDiverged
from usis.generate import generate_images
from usis.metrics.periodic import make_evaluator
from usis.metrics.protocol import new_best
from usis.nn.build import build_networks
from usis.train.distributed import Dist, cpu_cores
from usis.train.logging import RunLog
from usis.train.lr import LinearDecay
from usis.train.progress import progress_bar
from usis.train.samples import first_items, refresh_ema_batchnorm, write_grid
from usis.train.schedule import Schedule
from usis.train.speed import DivergenceCheck, Speed
from usis.utils.device import resolve_device
from usis.utils.io import atomic_write, disk_full_error


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class _StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, save, exit 0. A second signal aborts at once."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class Trainer:
    """Owns the networks, optimizers, data streams and the order of the updates.

    Args:
        cfg: the resolved run configuration.
        out_dir: run folder (``checkpoints/``, ``samples/``, ``stats.jsonl``, ``metrics.jsonl``, TensorBoard).
        data: a ``usis.data`` bundle pair ``(train, val)``; built from ``cfg`` when omitted.
        dist: the process group of a data-parallel run (:mod:`usis.train.distributed`); ``None`` = one
            process. ``train.batch_size`` is the global batch: each rank draws ``batch_size / world_size``.
            Every rank calls every method; files are written and evaluations computed on rank 0 only.
        evaluator: ``trainer -> metrics`` for periodic evaluation (needed on rank 0 only).
    """

    def __init__(self, cfg: Config, out_dir: str | Path, data=None, evaluator=None, progress: bool = True,
                 dist: Dist | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist if dist is not None else Dist()
        if cfg.train.batch_size % self.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly "
                              f"over train.nproc={self.world_size} processes")
        self.local_batch = cfg.train.batch_size // self.world_size
        self.progress = progress
        self.device = resolve_device(cfg.train.device, self.dist.local_rank if self.dist.enabled else None,
                                     setting="train.device")
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        elif self.dist.enabled and self.device.type == "cpu":  # processes on one CPU share its cores
            torch.set_num_threads(max(1, cpu_cores() // self.world_size))
        torch.manual_seed(cfg.train.seed + self.rank)  # per-rank noise; the weights come from rank 0

        if data is None:
            data = (build_datasets(cfg, "train"), build_datasets(cfg, "val"))
        self.train_data, self.val_data = data
        self.dontcare = self.train_data.dontcare
        self.num_classes = self.train_data.num_classes
        if self.num_classes != cfg.model.num_classes:
            raise ValueError(f"dataset has {self.num_classes} classes but model.num_classes="
                             f"{cfg.model.num_classes}; set --set data.num_classes={self.num_classes}")

        self.nets = build_networks(cfg)
        for net in self.nets.named().values():
            net.to(self.device)
        self.dist.broadcast_modules(self.nets.named().values())
        t = cfg.train
        # memory format, autocast, compiled forwards, cuDNN autotuning: set here, once (usis.train.speed)
        self.speed = Speed(t, self.nets, self.device)
        self.divergence = DivergenceCheck()
        betas = (t.beta1, t.beta2)
        d_params = list(self.nets.D.parameters())
        if self.nets.decoder is not None:  # the decoder trains with D (the reference forgot this)
            d_params += list(self.nets.decoder.parameters())
        # fused Adam: one kernel for all tensors (the per-tensor loop costs seconds per step on a CPU)
        adam = dict(betas=betas, fused=True)
        self.opt_g = torch.optim.Adam(self.nets.G.parameters(), lr=t.lr_g, **adam)
        self.opt_s = torch.optim.Adam(self.nets.S.parameters(), lr=t.lr_s, **adam)
        self.opt_d = torch.optim.Adam(d_params, lr=t.lr_d, **adam)
        self.opt_dl = (torch.optim.Adam(self.nets.D_label.parameters(), lr=t.lr_d, **adam)
                       if self.nets.D_label is not None else None)
        optimizers = {"G": self.opt_g, "S": self.opt_s, "D": self.opt_d}
        if self.opt_dl is not None:
            optimizers["D_label"] = self.opt_dl
        self.schedule = Schedule(cfg, self.nets, optimizers, self.speed, self.dist, self.num_classes, self.dontcare)
        self.lr = LinearDecay(t.lr_decay_from, [(self.opt_g, t.lr_g), (self.opt_s, t.lr_s), (self.opt_d, t.lr_d)]
                              + ([(self.opt_dl, t.lr_d)] if self.opt_dl is not None else []))

        # data.labelled: K real photos with their own maps (None for the unpaired setting)
        self.labelled = build_labelled(cfg, self.num_classes, coco_shift=cfg.data.kind == "coco")
        self.loaders = make_loaders(self.train_data, batch_size=self.local_batch, seed=t.seed,
                                    num_workers=min(cfg.data.num_workers, os.cpu_count() or 1),
                                    pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
                                    distributed=self.dist.enabled,
                                    labelled=None if self.labelled is None else self.labelled.dataset)
        self.step = 0
        # training time of the run so far, over all its invocations (train.max_seconds counts against it); it
        # lives in the checkpoint with the LR decay's window, so a resumed run decays as an uninterrupted one
        self.train_seconds = 0.0
        self.clock = time.monotonic  # tests put a deterministic clock here
        self.best: dict[str, float] = {}
        self.evaluator = evaluator
        # every rank must agree on whether evaluations happen (they end in a collective)
        self._evaluates = bool(self.dist.any(evaluator is not None)[0])
        self.log = RunLog(self.out, enabled=self.is_main)
        self._grid_items: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ema_bn_step: int | None = None  # step at which the EMA BN statistics were last refreshed
        self._eval_cache: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the last evaluation
        if self.is_main:  # a save killed mid-write (kill -9) leaves its temporary file behind
            removed = remove_stale_temp(checkpoint_path(self.out).parent)
            if removed:
                print(f"usis: removed {len(removed)} stale temporary checkpoint file(s) of an interrupted save: "
                      f"{', '.join(p.name for p in removed)}", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ helpers

    def lr_factor(self, total: int, budget: float | None) -> float:
        """The learning-rate multiplier for the coming step of a run of ``total`` steps or ``budget`` seconds
        (:class:`usis.train.lr.LinearDecay`; 1 = constant)."""
        return self.lr.factor(self.step, self.train_seconds, total, budget)

    @property
    def lr_schedule(self) -> tuple[float, float] | None:
        """The LR decay's (first step, step of rate 0), once it has begun."""
        return self.lr.window

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    # -------------------------------------------------------------------------------------- the step

    def train_step(self, labels: torch.Tensor, photos: torch.Tensor,
                   labelled: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One USIS iteration on a label batch (N x H x W ids) and an UNRELATED photo batch (with
        ``data.labelled``, ``labelled``: photos and their own maps): what each network learns is
        :mod:`usis.train.phases`, how the work is scheduled :mod:`usis.train.schedule`. Returns the step's
        losses as 0-d tensors on the device (reading them waits for the device)."""
        losses = self.schedule.step(self.step, labels, photos, labelled)
        self.step += 1
        return losses

    def finish_pending_updates(self) -> None:
        """Finish the updates the schedule left pending (a data-parallel run finishes D's at the next step).
        Called before anything reads the weights or optimizer states; every rank reaches it at the same point."""
        self.schedule.finish()

    # ------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        self.finish_pending_updates()
        state: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "lr_schedule": None if self.lr.window is None else list(self.lr.window),
            "config": self.cfg.to_dict(),
            "best": dict(self.best),
            "rng": rng_state(),
            "loaders": self.loaders.state_dict(),
            "optim": {"G": self.opt_g.state_dict(), "S": self.opt_s.state_dict(), "D": self.opt_d.state_dict(),
                      **({"D_label": self.opt_dl.state_dict()} if self.opt_dl is not None else {})},
            "amp_scaler": None,  # bf16 autocast needs no loss scaling
        }
        for name, net in self.nets.named().items():
            state[name] = net.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finish_pending_updates()  # (every rank loads: the pending average completes everywhere)
        for name, net in self.nets.named().items():
            if name not in state:
                raise KeyError(f"checkpoint has no {name!r} weights")
            net.load_state_dict(state[name])
        self.opt_g.load_state_dict(state["optim"]["G"])
        self.opt_s.load_state_dict(state["optim"]["S"])
        self.opt_d.load_state_dict(state["optim"]["D"])
        if self.opt_dl is not None:
            self.opt_dl.load_state_dict(state["optim"]["D_label"])
        self.loaders.load_state_dict(state["loaders"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        window = state.get("lr_schedule")
        self.lr.window = None if window is None else (float(window[0]), float(window[1]))
        self._ema_bn_step = None
        self._eval_cache = None
        self.best = dict(state.get("best", {}))
        ranks = state.get("rng_ranks")
        if self.dist.enabled:
            if ranks is not None and len(ranks) == self.world_size:
                set_rng_state(ranks[self.rank])
            else:  # another process count than the checkpoint's: new noise streams per rank
                torch.manual_seed(self.cfg.train.seed + self.rank + 1_000_003 * self.step)
        else:
            set_rng_state(state["rng"])

    def save(self, name: str = "latest") -> Path:
        """Write the whole state; the EMA generator is saved with freshly computed BN statistics, so a
        checkpoint is ready for ``usis generate`` / ``export`` as it is. Every rank calls it (a data-parallel
        run also stores each rank's RNG state, so that ``--resume`` continues exactly); rank 0 writes.

        A full disk ends the run on every rank at this save with a :class:`~usis.errors.DiskFullError` (the
        folder, the space free and needed, the resume command); the checkpoints on disk stay as they were."""
        path = checkpoint_path(self.out, name)
        failed: DiskFullError | None = None
        self._read_losses_and_agree()  # a non-finite loss since the last read ends the run here, unsaved
        self.finish_pending_updates()
        if self.dist.any(not all_finite(self.nets.named().values()))[0]:
            raise TrainingDiverged(f"training diverged by step {self.step}: the weights hold NaN or inf values; "
                                   f"{name}.pt was not written")
        rngs = self.dist.all_gather_object(rng_state()) if self.dist.enabled else None
        if self.is_main:
            with self._all_cores():
                self.refresh_ema_bn()
            state = self.state_dict()
            if rngs is not None:
                state["rng_ranks"] = rngs
            # latest.pt: the one it replaces stays as previous.pt (a second good checkpoint to go back to)
            try:
                save_atomic(state, path, previous=path.with_name("previous.pt") if name == "latest" else None)
            except DiskFullError as e:
                failed = DiskFullError(disk_full_message(self.out, path, e), path, e.free, e.needed, e.errno)
        if self.dist.enabled:  # every rank stops at this save: none is left waiting in a collective
            failed = self.dist.broadcast_object(failed)
        if failed is not None:
            failed.every_rank = True  # train_process may end this process cleanly: no rank goes on
            raise failed
        return path

    def resume(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else checkpoint_path(self.out)
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    # ------------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def refresh_ema_bn(self) -> None:
        """Recompute the EMA generator's BN statistics on the first training label batches (fixed noise).

        Deterministic for given EMA weights, which change only in ``train_step``: once per step is enough
        (a sample grid, an evaluation, best.pt and latest.pt often fall on the same step)."""
        if self._ema_bn_step != self.step:
            t = self.cfg.train
            refresh_ema_batchnorm(self.nets.G_ema, self.train_data.labels, t.ema_bn_batches, t.batch_size,
                                  self.num_classes, self.device)
            self._ema_bn_step = self.step

    def generate(self, labels: torch.Tensor, seeds: int | Sequence[int], batch_size: int = 16) -> torch.Tensor:
        """EMA generator images for ``labels`` (N x H x W), image i with noise seed ``seeds[i]`` (an int: the
        same seed for every image), as ``usis generate`` makes them; returned on the CPU."""
        seeds = [int(seeds)] * len(labels) if isinstance(seeds, int) else list(seeds)
        return generate_images(self.nets.G_ema.eval(), labels, seeds, batch_size=batch_size)

    def sample_grid(self) -> Path | None:
        """``samples/step_XXXXXXX.png`` (:func:`usis.train.samples.write_grid`), written by rank 0."""
        if not self.is_main:
            return None
        if self._grid_items is None:
            self._grid_items = first_items(self.val_data)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        existed = path.exists()
        try:
            with self._all_cores():
                self.refresh_ema_bn()
                grid = write_grid(path, *self._grid_items, self.train_data.palette, self.generate)
        except Exception as e:  # noqa: BLE001 - re-raised unless the disk is full
            if not existed:
                path.unlink(missing_ok=True)  # no torn PNG
            if not self.log.skip_full_disk(e, "sample grids", path.parent):  # a full disk: warn once, train on
                raise
            return None
        self.log.image("samples", grid, self.step)
        return path

    # ------------------------------------------------------------------------------------ logging

    def run_evaluation(self) -> dict[str, float] | None:
        """Evaluate the EMA generator and log one ``metrics.jsonl`` record per step: a second call at the
        same step (a periodic evaluation that coincides with the final one, e.g. when the time budget
        ends the run on an evaluation step) returns the same metrics without evaluating again."""
        if not self._evaluates:
            return None
        if self._eval_cache is not None and self._eval_cache[0] == self.step:
            return dict(self._eval_cache[1])
        metrics: dict[str, float] = {}
        improved = False
        if self.is_main:
            with self._all_cores():
                self.refresh_ema_bn()
                metrics = self.evaluator(self)
            record = {"step": self.step, **metrics}
            self.log.record("metrics.jsonl", record)
            self.log.scalars("eval", metrics, self.step)
            best = new_best(self.best, self.cfg.eval.best_metric, metrics, self.step)
            if best is not None:
                self.best, improved = best, True
        metrics, improved, self.best = self.dist.broadcast_object((metrics, improved, self.best))
        self._eval_cache = (self.step, dict(metrics))
        if improved:
            self.save("best")
        return metrics

    @contextlib.contextmanager
    def _all_cores(self):
        """On a CPU data-parallel run, rank 0 evaluates and samples while the others wait: let it use
        their threads meanwhile."""
        old = torch.get_num_threads()
        if self.dist.enabled and self.device.type == "cpu":
            torch.set_num_threads(old * self.world_size)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    # ------------------------------------------------------------------------------------ the loop

    def fit(self, iters: int | None = None, eval_at_start: bool = True, deadline: float | None = None) -> dict[str, Any]:
        """Train until ``iters`` total iterations (default ``cfg.train.iters``), ``train.max_seconds`` of
        training (counted over every invocation of the run) or the wall-clock time ``deadline``
        (``time.time()`` seconds), whichever comes first; then save, sample and evaluate. Returns a summary.

        A non-finite loss or weight ends the run at once without saving (``summary["diverged"]`` says where
        and which losses); the checkpoints already written are left as they were.
        """
        t = self.cfg.train
        total = iters if iters is not None else t.iters
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        summary: dict[str, Any] = {"start_step": self.step, "interrupted": False}
        t_start = time.time()
        try:
            self._fit(total, eval_at_start, deadline, summary)
        except TrainingDiverged as e:
            summary["diverged"] = str(e)
            if self.is_main:
                self.log.record("stats.jsonl", {"step": self.step, "diverged": str(e)})
        summary["step"] = self.step
        summary["seconds"] = time.time() - t_start
        self.log.flush()
        return summary

    def _keep(self) -> None:
        """``train.keep_every``: latest.pt, just written, kept as ``step_<step>.pt`` beside it (a hard link where
        the file system allows, else a copy)."""
        if not self.is_main:
            return
        latest = checkpoint_path(self.out)
        kept = latest.with_name(f"step_{self.step:07d}.pt")
        if kept.exists():
            return
        try:
            os.link(latest, kept)
        except OSError:
            shutil.copy2(latest, kept)

    def _write_config(self) -> None:
        """``config.json``, the run's resolved config, written as the run (or its resumption) starts; a full disk
        is one message (:class:`~usis.errors.DiskFullError`) saying what is kept and how to go on."""
        if checkpoint_path(self.out).is_file():
            hint = (f"the checkpoints in {checkpoint_path(self.out).parent} are as they were; free some space "
                    f"there, then resume with: usis train --out {shlex.quote(str(self.out))} --resume")
        else:
            hint = "no checkpoint was written yet; free some space there (or choose another --out) and start again"
        try:
            config = self.cfg.to_dict()
            if self.labelled is not None:  # which labelled pairs the run learns from (data.labelled)
                config["labelled_pairs"] = self.labelled.record()
            atomic_write(self.out / "config.json", json.dumps(config, indent=2, sort_keys=True))
        except DiskFullError as e:
            raise disk_full_error(e, self.out / "config.json", hint=hint) from e

    def _read_losses_and_agree(self, *flags: bool) -> list[bool]:
        """Read the losses since the last read (one synchronisation with the device) and agree over the ranks
        on ``flags`` (OR-ed); raise :class:`TrainingDiverged` on every rank if any rank saw a non-finite loss.
        The step named is the first non-finite one."""
        bad = self.divergence.first_bad()
        *agreed, diverged = self.dist.any(*flags, bad is not None)
        if diverged:
            where = "on another process" if bad is None else f"at step {bad[0]}"
            shown = "" if bad is None else " (" + ", ".join(
                f"{k}={v:.4g}" for k, v in bad[1].items() if k.startswith(("loss", "r1"))) + ")"
            raise TrainingDiverged(
                f"training diverged {where}: a loss is NaN or inf{shown}; nothing from that step on was saved. "
                f"Lower the learning rates (train.lr_g, train.lr_d, train.lr_s) and resume from the last good "
                f"checkpoint in {self.out / 'checkpoints'}")
        return agreed

    def _fit(self, total: int, eval_at_start: bool, deadline: float | None, summary: dict[str, Any]) -> None:
        t = self.cfg.train
        if eval_at_start and self.step == 0:
            summary["initial_metrics"] = self.run_evaluation()
        # the run's time budget in seconds of training: train.max_seconds, or what the deadline leaves
        budget: float | None = t.max_seconds or None
        if deadline:
            left = self.train_seconds + max(0.0, deadline - time.time())
            budget = left if budget is None else min(budget, left)
        # a bar in a terminal; plain lines every train.log_interval_s in a log file (usis.train.progress)
        bar = progress_bar(total=total, initial=self.step, enabled=self.progress and self.is_main,
                           interval_s=t.log_interval_s)
        s0, seconds0 = self.step, self.train_seconds
        last_t = self.clock()
        # closing: a divergence raised mid-loop must not leave the progress bar half drawn
        with contextlib.closing(bar), _StopFlag() as stop:
            while self.step < total:
                labels = self.loaders.next_labels()["label"].to(self.device, non_blocking=True)
                photos = self.loaders.next_photos()["image"].to(self.device, non_blocking=True)
                pairs = self.loaders.next_pairs()
                labelled = None if pairs is None else (pairs["image"].to(self.device, non_blocking=True),
                                                       pairs["label"].to(self.device, non_blocking=True))
                if self.lr.decays:
                    self.lr.set(self.lr_factor(total, budget))
                # on the device: nothing here waits for it (an override of train_step(labels, photos) still works
                # for unpaired runs)
                losses = self.train_step(labels, photos) if labelled is None else self.train_step(labels, photos,
                                                                                                    labelled)
                self.divergence.observe(self.step, losses)
                now = self.clock()
                self.train_seconds += now - last_t
                last_t = now
                logs = self.step % t.log_every == 0 or self.step == total
                keeps = bool(t.keep_every and self.step % t.keep_every == 0)
                saves = bool(t.ckpt_every and self.step % t.ckpt_every == 0) or keeps
                # The losses are read (one synchronisation) only when logged and before a checkpoint is written,
                # and that is when the ranks agree to stop (a stop or the time budget on any rank) or that the run
                # diverged: a data-parallel step then has two collectives (G's and D's gradients), not three, and
                # a stop or the budget ends it within log_every steps. One process checks its flags every step.
                stop_now = time_up = False
                if logs or saves or not self.dist.enabled:
                    flags = (stop.requested, budget is not None and self.train_seconds >= budget)
                    stop_now, time_up = self._read_losses_and_agree(*flags) if logs or saves else flags
                bar.update(1)
                if logs:
                    last = {k: float(v) for k, v in losses.items()}
                    rate = (self.step - s0) / max(self.train_seconds - seconds0, 1e-9)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in last.items() if k in ("loss_g_seg", "loss_g_adv",
                                                                                      "loss_s", "loss_d")})
                    self.log.record("stats.jsonl", {"step": self.step, "it_s": rate,
                                                    "lr_g": self.opt_g.param_groups[0]["lr"], **last})
                    self.log.scalars("train", last, self.step)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_grid()
                if t.eval_every > 0 and self.step % t.eval_every == 0 and self.step < total:
                    self.run_evaluation()
                if saves:
                    self.save("latest")
                if keeps:
                    self._keep()
                if stop_now:
                    summary["interrupted"] = True
                    break
                if time_up:
                    summary["time_budget_reached"] = True
                    break
                if self.lr.ended(self.step):
                    summary["lr_decay_ended"] = True  # the learning rates are 0: nothing more to train
                    break
        self.save("latest")
        if t.keep_every and self.step % t.keep_every == 0:
            self._keep()
        if not summary["interrupted"]:
            if not (t.sample_every and self.step % t.sample_every == 0):
                self.sample_grid()
            summary["final_metrics"] = self.run_evaluation()


def train_process(dist: Dist | None, cfg: Config, out_dir: str | Path, resume: str | Path | None = None,
                  progress: bool = True, deadline: float | None = None) -> dict[str, Any]:
    """One training process: build the data, the evaluator (rank 0) and the trainer, resume, fit.

    ``usis train`` calls it directly, or in every worker of a data-parallel run
    (:func:`usis.train.distributed.launch`); returns :meth:`Trainer.fit`'s summary.
    """
    dist = dist if dist is not None else Dist()
    data = (build_datasets(cfg, "train"), build_datasets(cfg, "val"))
    evaluator = make_evaluator(cfg, data[1]) if cfg.train.eval_every >= 0 and dist.is_main else None
    trainer = Trainer(cfg, out_dir, data=data, evaluator=evaluator, progress=progress, dist=dist)
    if resume is not None:
        trainer.resume(resume)
        if dist.is_main:
            print(f"resumed from {resume} at step {trainer.step}", file=sys.stderr)
    try:
        return trainer.fit(cfg.train.iters, deadline=deadline)
    except DiskFullError as e:
        # a checkpoint save met a full disk, on every rank at once (Trainer.save): hand the error back as the
        # result, so that a data-parallel worker ends cleanly; usis.train.run.train raises it on rank 0
        if not getattr(e, "every_rank", False):
            raise
        trainer.log.flush()
        return {"step": trainer.step, "interrupted": True, "disk_full": e}
