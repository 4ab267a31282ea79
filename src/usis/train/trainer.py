"""The USIS training loop.

One iteration (:meth:`Trainer.train_step`) is Eq. 2 of the paper, top to bottom, trained as the
reference implementation trains it (docs/recipe.md; each switch below is a config option):

1. G step:  ``L_G = lambda_seg * L_seg(m, S(G(m))) + L_adv_G(D(G(m)))``
2. S step:  ``L_S = L_seg(m, S(G(m)))`` on a new fake drawn with the updated G (``train.fresh_fakes``;
   or G's pre-update fake, detached). S never sees real photos. ``L_seg`` is over C+1 channels
   (``model.s_extra_channel``).
3. D step:  ``L_D = L_adv_D(D(x), D(G(m))) + lambda_rec * L1(Dec(D_feat(x)), x)`` on another new fake,
   multiplied by ``r1_every``; every ``r1_every`` steps a separate step on ``r1_gamma * R1`` on real
   photos (``train.r1_mode=reference``; ``fused`` adds StyleGAN2's ``gamma/2 * R1 * r1_every`` instead).
4. EMA update of G.

Table 3's ablations are options: ``train.seg_loss=l1`` replaces ``L_seg`` by CycleGAN's L1 cycle loss, and
``train.lambda_rev > 0`` adds the reverse cycle (photo -> S -> G -> photo, L1) with a label discriminator.

Label maps ``m`` and photos ``x`` come from two independent streams: they never correspond.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usis.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_path,
    load_checkpoint,
    remove_stale_temp,
    rng_state,
    save_atomic,
    set_rng_state,
)
from usis.config import Config, ConfigError
from usis.data import build_datasets
from usis.data.unpaired import make_loaders
from usis.errors import DiskFullError, TrainingDiverged
from usis.losses import (
    d_logistic_loss,
    g_nonsaturating_loss,
    l1_reconstruction,
    r1_penalty,
    segmentation_loss,
    soft_labels,
)
from usis.metrics.periodic import make_evaluator
from usis.metrics.protocol import is_better
from usis.nn import one_hot_labels
from usis.nn.build import build_networks
from usis.nn.noise import seeded_noise
from usis.train.distributed import Dist, cpu_cores
from usis.train.ema import refresh_batchnorm, update_ema
from usis.train.logging import RunLog
from usis.train.progress import progress_bar
from usis.train.speed import DivergenceCheck, Speed
from usis.utils.device import resolve_device
from usis.utils.images import colorize_tensor, save_grid
from usis.utils.io import disk_full_reason, format_size


def forward_is_pure(module: nn.Module) -> bool:
    """Whether a training-mode forward of ``module`` leaves its state as it was: no spectral norm (whose
    forward runs a power iteration on its vectors) and no normalisation with running statistics."""
    for m in module.modules():
        if hasattr(m, "weight_u") or hasattr(m, "parametrizations"):
            return False
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            return False
    return True


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _item(dataset, i: int) -> dict[str, Any]:
    """Item ``i`` with a fixed augmentation seed: no draw from the global RNG (that would shift the
    training noise and make a run depend on how often it samples or evaluates)."""
    return dataset[(i, i)] if getattr(dataset, "accepts_aug_seed", False) else dataset[i]


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
        self.d_params = d_params
        self._d_forward_is_pure = forward_is_pure(self.nets.D)
        # a data-parallel run finishes D's update (its gradient average, its optimizer step) at the next step,
        # just before D's next forward (see d_step): None, or the function that finishes it
        self._pending_d_update: Callable[[], None] | None = None
        self.g_params = list(self.nets.G.parameters())
        self.g_and_s_params = self.g_params + list(self.nets.S.parameters())

        self.loaders = make_loaders(self.train_data, batch_size=self.local_batch, seed=t.seed,
                                    num_workers=min(cfg.data.num_workers, os.cpu_count() or 1),
                                    pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
                                    distributed=self.dist.enabled)
        self.step = 0
        # training time of the run so far, over all its invocations (train.max_seconds counts against it),
        # and the linear LR decay as (start step, end step) once it has begun: both live in the checkpoint,
        # so a resumed run follows the schedule of an uninterrupted one.
        self.train_seconds = 0.0
        self.lr_schedule: tuple[float, float] | None = None
        self.clock = time.monotonic  # tests put a deterministic clock here
        self.best: dict[str, float] = {}
        self.evaluator = evaluator
        # every rank must agree on whether evaluations happen (they end in a collective)
        self._evaluates = bool(self.dist.any(evaluator is not None)[0])
        self.log = RunLog(self.out, enabled=self.is_main)
        self._fixed = None
        self._ema_bn_step: int | None = None  # step at which the EMA BN statistics were last refreshed
        self._eval_cache: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the last evaluation
        if self.is_main:  # a save killed mid-write (kill -9) leaves its temporary file behind
            removed = remove_stale_temp(checkpoint_path(self.out).parent)
            if removed:
                print(f"usis: removed {len(removed)} stale temporary checkpoint file(s) of an interrupted save: "
                      f"{', '.join(p.name for p in removed)}", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ helpers

    def lr_factor(self, total: int, budget: float | None) -> float:
        """The learning-rate multiplier for the coming step (``train.lr_decay_from``; 1 = constant).

        The rates stay constant until ``lr_decay_from`` of the run has passed, by steps (of ``total``) or by
        training time (of ``budget`` seconds), whichever comes first. From then on the decay is fixed in
        steps: linear to 0 at ``total``, or, when the time budget started it, at the step that the run's
        speed so far reaches by the end of the budget. Only the step and the saved schedule enter the
        factor, so a resumed run decays exactly as an uninterrupted one.
        """
        f = self.cfg.train.lr_decay_from
        if f >= 1.0:
            return 1.0
        if self.lr_schedule is None:
            if self.step >= f * total:
                self.lr_schedule = (f * total, float(total))
            elif budget and self.train_seconds >= f * budget:
                rate = self.step / max(self.train_seconds, 1e-9)
                end = self.step + max(1.0, math.floor(rate * (budget - self.train_seconds)))
                self.lr_schedule = (float(self.step), float(min(total, end)))
            else:
                return 1.0
        start, end = self.lr_schedule
        return max(0.0, min(1.0, (end - self.step) / max(end - start, 1e-9)))

    def _set_lr_factor(self, factor: float) -> None:
        t = self.cfg.train
        for opt, base in ((self.opt_g, t.lr_g), (self.opt_s, t.lr_s), (self.opt_d, t.lr_d), (self.opt_dl, t.lr_d)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = base * factor

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @staticmethod
    def _requires_grad(net: nn.Module | None, flag: bool) -> None:
        if net is not None:
            net.requires_grad_(flag)

    # -------------------------------------------------------------------------------------- the step

    def train_step(self, labels: torch.Tensor, photos: torch.Tensor) -> dict[str, torch.Tensor]:
        """One USIS iteration on a label batch ``m`` (N x H x W ids) and an UNRELATED photo batch ``x``.

        Returns the step's losses as 0-d tensors on the device (reading them waits for the device: the
        loop does so only when it logs). The networks are called through ``self.speed.fwd`` (compiled or
        not) and their parameters through ``self.nets``."""
        G, S, D = self.speed.fwd.G, self.speed.fwd.S, self.speed.fwd.D
        t = self.cfg.train
        extra = self.cfg.model.s_extra_channel
        m = self.speed.batch(one_hot_labels(labels, self.num_classes))
        photos = self.speed.batch(photos)
        out: dict[str, torch.Tensor] = {}

        # 1. generator: fool D and keep every class recognisable for S.
        # 2. segmenter: learn to segment the generated images (never the real photos).
        # With train.fresh_fakes=false S's own step sees the same fake batch (G's output before its update,
        # detached) with the same weights, so one forward of S serves both: the backward of the G loss also
        # yields lambda_seg * dL_seg/dtheta_S, rescaled below to S's gradient. Saves a forward of S per step.
        share_s = t.lambda_seg > 0 and not t.fresh_fakes
        # Likewise D's forward on the fakes: D does not change before its own step, so that step takes its
        # logits from this forward (its graph kept; each backward below reaches only its own parameters).
        # Not for a D whose forward changes its state (spectral norm's power iteration, as in the PatchGAN
        # ablation): there every forward counts, as in the reference.
        share_d = not t.fresh_fakes and self._d_forward_is_pure
        reverse = self.nets.D_label is not None
        self._requires_grad(self.nets.G, True)
        self._requires_grad(self.nets.S, share_s)
        self._requires_grad(self.nets.D, share_d)
        self._requires_grad(self.nets.D_label, False)
        with self.speed.autocast():
            fake = G(m)
            loss_g_seg = segmentation_loss(t.seg_loss, S(fake).float(), labels, self.dontcare, extra)
        self.finish_pending_updates()  # the last step's D update, if it was left for now: D is needed next
        with self.speed.autocast():
            fake_logits = D(fake)
            loss_g_adv = g_nonsaturating_loss(fake_logits.float())
            loss_g = t.lambda_seg * loss_g_seg + loss_g_adv
            if reverse:  # G's half of the reverse cycle: rebuild the photo from S's (fixed) reading of it
                with torch.no_grad():
                    m_real = soft_labels(S(photos).float(), extra)
                loss_rev_g = l1_reconstruction(G(m_real.to(fake.dtype)).float(), photos)
                loss_g = loss_g + t.lambda_rev * loss_rev_g
                out["loss_rev"] = loss_rev_g.detach()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_s.zero_grad(set_to_none=True)
        g_and_s = self.g_and_s_params if share_s else self.g_params  # what G's loss trains
        loss_g.backward(inputs=g_and_s if share_d else None, retain_graph=share_d)
        # G's gradient average (and S's, when S's forward is shared) runs in the background through S's and
        # D's steps, which read neither G's gradients nor its new weights (D sees ``fake``, made before G's
        # update) -- unless D gets fresh fakes or the reverse cycle runs G again: then G updates first.
        overlap = not t.fresh_fakes and not reverse
        pending = self.dist.start_averaging(self.g_params if reverse else g_and_s)  # reverse: S's comes later
        if not overlap:
            pending.wait()
            self.opt_g.step()
        fake = fake.detach()

        if share_s:
            loss_s = loss_g_seg
            if not overlap:
                self._unscale_shared_s_grads()
        else:
            self._requires_grad(self.nets.S, True)
            fake_s = self._fresh_fake(m) if t.fresh_fakes else fake
            with self.speed.autocast():
                loss_s = segmentation_loss(t.seg_loss, S(fake_s).float(), labels, self.dontcare, extra)
            loss_s.backward()
            if not reverse:
                self.dist.average_gradients(self.nets.S.parameters())
        m_real = None
        if reverse:  # S's half: read the photo so that G rebuilds it, and fool the label discriminator
            self._requires_grad(self.nets.G, False)
            self._requires_grad(self.nets.S, True)
            with self.speed.autocast():
                m_real = soft_labels(S(photos).float(), extra)
                loss_rev_s = t.lambda_rev * l1_reconstruction(G(m_real.to(fake.dtype)).float(), photos)
                loss_rev_s = loss_rev_s + g_nonsaturating_loss(self.speed.fwd.D_label(m_real).float())
            loss_rev_s.backward()
            self.dist.average_gradients(self.nets.S.parameters())
            m_real = m_real.detach()
        if not overlap:
            self.opt_s.step()

        def update_g_and_s():  # G's (and S's) averaged gradients, now needed
            pending.wait()
            self.opt_g.step()
            if share_s:
                self._unscale_shared_s_grads()
            self.opt_s.step()

        # 3. discriminator (+ decoder reconstructing real photos; + lazy R1 on real photos); G and S update
        # while D's gradients are averaged; in a data-parallel run D's update is finished at the next step
        out.update(self.d_step(photos, self._fresh_fake(m) if t.fresh_fakes else fake,
                               fake_logits if share_d else None, meanwhile=update_g_and_s if overlap else None,
                               defer=self.dist.enabled))
        del fake_logits  # the kept graph (G's and D's forward) goes with it
        if m_real is not None:  # the reverse cycle's label discriminator: label-stream maps vs S's readings
            DL = self.speed.fwd.D_label
            self._requires_grad(self.nets.D_label, True)
            with self.speed.autocast():
                loss_dl = d_logistic_loss(DL(m).float(), DL(m_real).float())
            self.opt_dl.zero_grad(set_to_none=True)
            loss_dl.backward()
            self.dist.average_gradients(self.nets.D_label.parameters())
            self.opt_dl.step()
            out["loss_d_label"] = loss_dl.detach()

        # 4. EMA of the generator
        update_ema(self.nets.G_ema, self.nets.G, t.ema_decay, self.step, t.ema_warmup)
        self.step += 1

        out.update(loss_g=loss_g.detach(), loss_g_seg=loss_g_seg.detach(), loss_g_adv=loss_g_adv.detach(),
                   loss_s=loss_s.detach())
        return out

    def finish_pending_updates(self) -> None:
        """Finish the update :meth:`d_step` left pending (D's gradient average and optimizer step), if any.
        Called before D's next forward and before anything reads the weights or optimizer states (a save,
        :meth:`state_dict`, the finiteness check); every rank reaches it at the same point."""
        finish, self._pending_d_update = self._pending_d_update, None
        if finish is not None:
            finish()

    @torch.no_grad()
    def _unscale_shared_s_grads(self) -> None:
        """S's gradients from G's loss are ``lambda_seg * dL_seg/dtheta_S``: make them S's own."""
        lam = self.cfg.train.lambda_seg
        grads = [p.grad for p in self.nets.S.parameters() if p.grad is not None]
        if lam != 1 and grads:
            torch._foreach_div_(grads, lam)

    @torch.no_grad()
    def _fresh_fake(self, m: torch.Tensor) -> torch.Tensor:
        """A new fake batch for the label maps ``m``: new noise, G as it is now (after its update)."""
        with self.speed.autocast():
            return self.speed.fwd.G(m)

    def d_step(self, photos: torch.Tensor, fake: torch.Tensor, fake_logits: torch.Tensor | None = None,
               meanwhile: Callable[[], None] | None = None, defer: bool = False) -> dict[str, torch.Tensor]:
        """D's update(s) for this iteration on real ``photos`` and a (detached) ``fake`` batch; ``fake_logits``:
        D's logits on ``fake`` when a forward with D as it is now already has them (the G step's);
        ``meanwhile``: work that touches nothing of D's, done while D's gradients are averaged; ``defer``:
        leave the end of D's update (waiting for the average, the optimizer step) to
        :meth:`finish_pending_updates`, which the next step calls just before D's next forward. The result is
        the same (nothing in between reads D); a data-parallel step so gives the other ranks the time of G's
        update and of the next G and S forwards to deliver their D gradients, instead of none: on a CPU two
        ranks that run the same step at slightly different speeds otherwise wait for each other here.

        ``L_D = L_adv_D(D(x), D(G(m))) + lambda_rec * L1(Dec(D_feat(x)), x)``; how the lazy R1 penalty
        (every ``train.r1_every`` steps) enters depends on ``train.r1_mode``:

        * ``reference``: one step on ``r1_every * L_D``, then, on R1 steps, a second optimizer step on
          ``r1_gamma * R1`` alone (the reference's train.py).
        * ``fused``: one step on ``L_D + (r1_gamma / 2) * R1 * r1_every`` on R1 steps, ``L_D`` otherwise.
        """
        D, dec = self.speed.fwd.D, self.speed.fwd.decoder
        t = self.cfg.train
        self._requires_grad(self.nets.D, True)
        self._requires_grad(self.nets.decoder, True)
        lazy = t.r1_every > 0 and t.r1_gamma > 0 and self.step % t.r1_every == 0
        fused_r1 = lazy and t.r1_mode == "fused"
        out: dict[str, torch.Tensor] = {}
        real = photos.detach().requires_grad_(fused_r1)
        with self.speed.autocast():
            # R1 differentiates D's gradient (double backward): that pass runs eager, never compiled
            real_logits, feats = (self.speed.eager.D if fused_r1 else D)(real, return_features=True)
            if fake_logits is None:
                fake_logits = D(fake)
            loss_d_adv = d_logistic_loss(real_logits.float(), fake_logits.float())
            loss_d = loss_d_adv
            if dec is not None:
                loss_rec = l1_reconstruction(dec(feats).float(), photos)
                loss_d = loss_d + t.lambda_rec * loss_rec
                out["loss_rec"] = loss_rec.detach()
        if fused_r1:
            r1 = r1_penalty(real_logits.float(), real)
            loss_d = loss_d + (t.r1_gamma / 2) * r1 * t.r1_every
            out["r1"] = r1.detach()
        elif t.r1_mode == "reference" and t.r1_every > 0:
            loss_d = t.r1_every * loss_d
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward(inputs=self.d_params)  # not into the photos (R1's leaf) nor, via shared logits, G
        pending = self.dist.start_averaging(self.d_params)
        if meanwhile is not None:
            meanwhile()

        def finish():
            pending.wait()
            self.opt_d.step()

        if defer and not (lazy and t.r1_mode == "reference"):  # the reference's R1 step needs D updated now
            self._pending_d_update = finish
        else:
            finish()
        if lazy and t.r1_mode == "reference":
            real = photos.detach().requires_grad_(True)
            with self.speed.autocast():
                r1 = r1_penalty(self.speed.eager.D(real).float(), real)
            self.opt_d.zero_grad(set_to_none=True)
            (t.r1_gamma * r1).backward()
            self.dist.average_gradients(self.d_params)
            self.opt_d.step()
            out["r1"] = r1.detach()
        out.update(loss_d=loss_d_adv.detach(), d_real=real_logits.detach().float().mean(),
                   d_fake=fake_logits.detach().float().mean())
        return out

    # ------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        self.finish_pending_updates()
        state: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "lr_schedule": None if self.lr_schedule is None else list(self.lr_schedule),
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
        sched = state.get("lr_schedule")
        self.lr_schedule = None if sched is None else (float(sched[0]), float(sched[1]))
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
        self._agree()  # a non-finite loss since the last read ends the run here, before anything is written
        if self.dist.any(not self._weights_finite())[0]:
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
                failed = DiskFullError(self._disk_full_message(e, path), path, e.free, e.needed, e.errno)
        if self.dist.enabled:  # every rank stops at this save: none is left waiting in a collective
            failed = self.dist.broadcast_object(failed)
        if failed is not None:
            failed.every_rank = True  # train_process may end this process cleanly: no rank goes on
            raise failed
        return path

    def _disk_full_message(self, e: DiskFullError, path: Path) -> str:
        """One line for a checkpoint save that met a full disk: where, how much space, what to do."""
        kept = [p.name for p in (checkpoint_path(self.out), checkpoint_path(self.out, "previous")) if p.exists()]
        if checkpoint_path(self.out).exists():
            todo = (f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} unchanged; free some space there and "
                    f"continue the run with: usis train --out {shlex.quote(str(self.out))} --resume")
        else:
            todo = "no checkpoint of this run was written yet; free some space there and start it again"
        return (f"disk full while saving checkpoint {path.name} in {path.parent} ({disk_full_reason(e.errno)}): "
                f"{format_size(e.free)} free, a checkpoint needs about {format_size(e.needed)}; {todo}")

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """True when every parameter and buffer of every network is finite (checked before each save)."""
        self.finish_pending_updates()
        for net in self.nets.named().values():
            for t in list(net.parameters()) + list(net.buffers()):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return False
        return True

    def resume(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else checkpoint_path(self.out)
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    # ------------------------------------------------------------------------------------ sampling

    def _fixed_batch(self, n: int = 4):
        """A fixed set of label maps and real photos for sample grids (validation split, first items)."""
        if self._fixed is None:
            val = self.val_data
            labels = torch.stack([_item(val.labels, i)["label"] for i in range(min(n, len(val.labels)))])
            photos = torch.stack([_item(val.photos, i)["image"] for i in range(min(n, len(val.photos)))])
            self._fixed = (labels, photos)
        return self._fixed

    def _noise(self, seeds: Sequence[int], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise of images with these seeds (:mod:`usis.nn.noise`, as ``usis generate`` draws it), on this
        run's device; its own RNGs, so sampling never shifts the training noise."""
        G = self.nets.G
        z, pn = seeded_noise(seeds, G.z_dim, G.pixel_noise, height, width)
        return z.to(self.device), None if pn is None else pn.to(self.device)

    @torch.no_grad()
    def refresh_ema_bn(self) -> None:
        """Recompute the EMA generator's BN statistics on the first training label batches (fixed noise).

        Deterministic for given EMA weights, which change only in ``train_step``: once per step is enough
        (a sample grid, an evaluation, best.pt and latest.pt often fall on the same step)."""
        if self._ema_bn_step == self.step:
            return
        n = self.cfg.train.ema_bn_batches
        bs = self.cfg.train.batch_size
        ds = self.train_data.labels
        batches = []
        for b in range(n):
            idx = [(b * bs + i) % len(ds) for i in range(bs)]
            labels = torch.stack([_item(ds, i)["label"] for i in idx]).to(self.device)
            z, noise = self._noise(range(10_000 + b * bs, 10_000 + (b + 1) * bs), *labels.shape[-2:])
            batches.append((one_hot_labels(labels, self.num_classes), z, noise))
        refresh_batchnorm(self.nets.G_ema, batches)
        self._ema_bn_step = self.step

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, seeds: int | Sequence[int], batch_size: int = 16) -> torch.Tensor:
        """EMA generator images for ``labels`` (N x H x W), image i with noise seed ``seeds[i]`` (an int: the
        same seed for every image), as ``usis generate`` would make them; returned on the CPU."""
        G = self.nets.G_ema.eval()
        seeds = [int(seeds)] * len(labels) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != len(labels):
            raise ValueError(f"{len(seeds)} seeds for {len(labels)} label maps")
        outs = []
        for i in range(0, len(labels), batch_size):
            lab = labels[i:i + batch_size]
            z, pn = self._noise(seeds[i:i + batch_size], *lab.shape[-2:])
            m = one_hot_labels(lab.to(self.device), self.num_classes)
            outs.append(G(m, z if G.z_dim else None, pn).float().cpu())
        return torch.cat(outs)

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """``samples/step_XXXXXXX.png``: label | EMA samples for 3 noise seeds | real photos (one row per map)."""
        if not self.is_main:
            return None
        labels, photos = self._fixed_batch()
        cols = [colorize_tensor(labels, self.train_data.palette)]
        with self._all_cores():
            self.refresh_ema_bn()
            cols += [self.generate(labels, seed) for seed in (0, 1, 2)]
        cols.append(photos[: len(labels)])
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        existed = path.exists()
        try:
            grid = save_grid(cols, path)
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
            key = self.cfg.eval.best_metric
            if key in metrics:
                if is_better(key, metrics[key], self.best.get(key)):
                    self.best = {key: metrics[key], "step": self.step}
                    improved = True
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
            (self.out / "config.json").write_text(self.cfg.to_json())
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

    def _agree(self, *flags: bool) -> list[bool]:
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
                if t.lr_decay_from < 1.0:
                    self._set_lr_factor(self.lr_factor(total, budget))
                losses = self.train_step(labels, photos)  # on the device: nothing here waits for it
                self.divergence.observe(self.step, losses)
                now = self.clock()
                self.train_seconds += now - last_t
                last_t = now
                logs = self.step % t.log_every == 0 or self.step == total
                saves = bool(t.ckpt_every and self.step % t.ckpt_every == 0)
                # The losses are read (one synchronisation) only when logged and before a checkpoint is written,
                # and that is when the ranks agree to stop (a stop or the time budget on any rank) or that the run
                # diverged: a data-parallel step then has two collectives (G's and D's gradients), not three, and
                # a stop or the budget ends it within log_every steps. One process checks its flags every step.
                stop_now = time_up = False
                if logs or saves or not self.dist.enabled:
                    flags = (stop.requested, budget is not None and self.train_seconds >= budget)
                    stop_now, time_up = self._agree(*flags) if logs or saves else flags
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
                if stop_now:
                    summary["interrupted"] = True
                    break
                if time_up:
                    summary["time_budget_reached"] = True
                    break
                if self.lr_schedule is not None and self.step >= self.lr_schedule[1]:
                    summary["lr_decay_ended"] = True  # the learning rates are 0: nothing more to train
                    break
        self.save("latest")
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
