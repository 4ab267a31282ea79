"""How one USIS iteration is scheduled: the phases of :mod:`usis.train.phases` in order, and all that the phases
do not say.

* **Order and intervals.** G, then S (on G's images: the same batch, or with ``train.fresh_fakes`` a new one
  from the updated G), the reverse cycle's S half (``train.lambda_rev > 0``), D with the decoder, every
  ``train.r1_every``-th step the R1 penalty, the label discriminator (reverse cycle), and G's EMA. R1 either
  rides on D's update, weighted by the interval (``train.r1_mode=fused``, StyleGAN2's "Dboth"), or is a second
  update of D after the first, whose loss the reference weighs by the interval instead (``reference``).
* **Each network learns its own loss only.** A phase runs with its network trainable and the others frozen,
  and its loss is differentiated into its network's parameters only (``backward(inputs=...)``): a term
  reaches the network whose phase returns it, with its weight, and no other network.
* **Shared computations**, done once for two phases:

  - *D's forward on G's images*, when that forward changes nothing of D (no spectral norm power iteration, no
    running statistics): G's phase makes it, with D trainable for it, and D's phase gets the same output.
    Each network still has its own backward into its own parameters, so this cannot misattribute anything.
    Saves a forward of D.
  - *The term* ``L_seg(S(G(m)), m)`` (:meth:`USISPhases.seg`), in G's loss with weight ``lambda_seg`` and in
    S's with weight 1, when S learns from G's own batch. G's phase computes it with S trainable for it and
    for nothing else, so it is the only part of G's loss that depends on S's parameters: ONE backward of G's
    loss, into G's and S's parameters, gives G its gradient and S ``lambda_seg`` times the term's gradient.
    S's gradient is divided by the ratio of the two weights before it is used or added to; S's other terms,
    if any, get their own backward into S's parameters. Saves a forward and a backward of S.

* **Gradient averages** (data parallel, :mod:`usis.train.distributed`): a network's gradients are averaged
  once its last backward of the step has run, and its optimizer steps when the average is needed: before
  the network's next forward, before anything reads its weights (the EMA, a save), or at the end of the
  step. G's and S's averages run while D's backward is computed; D's update is left to D's next forward (the
  next step's) in a data-parallel run, so that the other ranks have the next G and S forwards to deliver their
  D gradients.
* **Speed switches** (:class:`usis.train.speed.Speed`): the phases run under autocast, the networks compiled,
  except a forward on a leaf that requires grad (R1's photos: compiled graphs cannot be differentiated twice).

:meth:`Schedule.step` is the iteration, top to bottom.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from usis.config import Config
from usis.nn import one_hot_labels
from usis.train.distributed import Dist, PendingAverage
from usis.train.phases import Loss, Pairs, USISPhases
from usis.train.speed import Speed

PHASE_NETWORKS = {"G": ("G",), "S": ("S",), "D": ("D", "decoder"), "D_label": ("D_label",)}


def forward_is_pure(module: nn.Module) -> bool:
    """Whether a training-mode forward of ``module`` leaves its state as it was: no spectral norm (whose
    forward runs a power iteration on its vectors) and no normalisation with running statistics."""
    for m in module.modules():
        if hasattr(m, "weight_u") or hasattr(m, "parametrizations"):
            return False
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            return False
    return True


class Update:
    """One network's update in an iteration: gradients from one or more backwards, their average over the
    ranks, the optimizer step. ``D``'s covers the decoder too.

    ``divisor``: the gradients in ``.grad`` are ``divisor`` times the network's own (they came from a shared
    term through another network's backward and its weight); they are divided before anything is added to
    them or, after the average, before the optimizer step. ``covered``: the terms (tensor ids) whose gradient
    this network already has this step."""

    def __init__(self, name: str, networks: tuple[str, ...], params: list[nn.Parameter],
                 optimizer: torch.optim.Optimizer):
        self.name, self.networks, self.params, self.optimizer = name, networks, params, optimizer
        self.collecting = False  # this step's gradients are in .grad; the optimizer has not stepped on them
        self.divisor = 1.0
        self.covered: set[int] = set()
        self.average: PendingAverage | None = None

    def begin_backward(self) -> None:
        """Before a backward adds to the gradients: fresh ones, or the shared ones made the network's own."""
        if not self.collecting:
            self.optimizer.zero_grad(set_to_none=True)
            self.collecting = True
        else:
            self._undivide()

    @torch.no_grad()
    def _undivide(self) -> None:
        if self.divisor != 1.0:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, self.divisor)
            self.divisor = 1.0

    def apply(self, dist: Dist) -> None:
        """The optimizer step on the averaged gradients (averaged now if no average was started)."""
        if self.average is None:
            self.average = dist.start_averaging(self.params)
        self.average.wait()
        self._undivide()
        self.optimizer.step()
        self.collecting, self.average = False, None
        self.covered.clear()


class NetworkCall:
    """How the phases call one network in a step: its pending update finished first; compiled, or eager on a
    leaf that requires grad (R1); an output kept for a later phase when the schedule shares the forward."""

    def __init__(self, schedule: Schedule, name: str, module: nn.Module):
        self.schedule, self.name, self.module = schedule, name, module
        self.fast = schedule.speed.forward(module)

    def __call__(self, x: Tensor, *args, return_features: bool = False):
        s = self.schedule
        s.before_forward(self.name)
        kept = s.kept.get((self.name, id(x)))
        if kept is not None and (kept[2] or not return_features):
            out = kept[1]
            return out[0] if kept[2] and not return_features else out
        double_backward = isinstance(x, Tensor) and s.from_grad_leaf(x)
        forward = self.module if double_backward else self.fast
        kw = {"return_features": True} if return_features else {}
        shared = s.shares_forward(self.name)
        with s.trainable(self.name) if shared else contextlib.nullcontext():
            out = forward(x, *args, **kw)
        if shared or (self.name, id(x)) in s.keep_inputs:
            s.kept[(self.name, id(x))] = (x, out, return_features)  # x kept alive: its id stays its own
        return out


class _Calls:
    """The networks as the phases call them (attributes ``G``, ``S``, ``D``, ``decoder``, ``D_label``)."""

    def __init__(self, calls: dict[str, NetworkCall]):
        self.G, self.S, self.D = calls["G"], calls["S"], calls["D"]
        self.decoder, self.D_label = calls.get("decoder"), calls.get("D_label")


class _ScheduledPhases(USISPhases):
    """The phases with their ``seg`` term computed once per step for the same images and labels."""

    def __init__(self, schedule: Schedule, cfg: Config, dontcare: int | None):
        super().__init__(cfg, _Calls(schedule.calls), dontcare, ema_nets=schedule.nets)
        self.schedule = schedule

    def seg(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.schedule.seg_term(super().seg, images, labels)

    def d_view(self, images: Tensor) -> Tensor:
        return self.schedule.view(super().d_view, images)

    def reading(self, images: Tensor) -> Tensor:
        return self.schedule.reading(super().reading, images)


class Schedule:
    """Runs the phases of an iteration (:meth:`step`) for the networks ``nets`` (a
    :class:`usis.nn.build.Networks`) with ``optimizers`` (by network; ``D``'s also steps the decoder)."""

    def __init__(self, cfg: Config, nets, optimizers: dict[str, torch.optim.Optimizer], speed: Speed, dist: Dist,
                 num_classes: int, dontcare: int | None):
        t = cfg.train
        self.t, self.nets, self.speed, self.dist, self.num_classes = t, nets, speed, dist, num_classes
        self.modules = {k: v for k, v in nets.named().items() if k != "G_ema"}
        self.params = {k: list(m.parameters()) for k, m in self.modules.items()}
        self.updates: dict[str, Update] = {}
        for name, opt in optimizers.items():
            networks = tuple(k for k in PHASE_NETWORKS[name] if k in self.modules)
            self.updates[name] = Update(name, networks, [p for k in networks for p in self.params[k]], opt)
        self._update_of = {k: u for u in self.updates.values() for k in u.networks}
        self._grad_on: dict[str, bool | None] = dict.fromkeys(self.modules)  # requires_grad as last set
        self.calls = {k: NetworkCall(self, k, m) for k, m in self.modules.items()}
        self.phases = _ScheduledPhases(self, cfg, dontcare)

        # what is shared, fixed for the run (the module docstring says why each is exact)
        self.share_seg = t.lambda_seg > 0 and not t.fresh_fakes
        self.share_d_forward = not t.fresh_fakes and forward_is_pure(nets.D)
        self.reverse = nets.D_label is not None
        # a data-parallel run finishes D's update at the next step, just before D's next forward
        self.deferred = {"D"} if dist.enabled else set()
        self.phase: str | None = None
        self.kept: dict[tuple[str, int], tuple[Tensor, Any, bool]] = {}  # (network, id(input)) -> input, output
        self.keep_inputs: set[tuple[str, int]] = set()
        self._seg_terms: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
        self._views: dict[int, tuple[Tensor, Tensor]] = {}  # id(images) -> images, D's view of them
        self._reads: dict[int, tuple[Tensor, Tensor]] = {}  # id(view) -> view, S's reading of it (model.d_reads)
        self._checked: dict[tuple[str, ...], bool] = {}

    # ------------------------------------------------------------------------------------ the iteration

    def step(self, it: int, labels: Tensor, photos: Tensor,
             labelled: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Iteration ``it`` on label maps ``labels`` (N x H x W ids) and UNRELATED ``photos`` (and with
        ``data.labelled``, ``labelled``: photos and their own maps). Returns what it logs, 0-d tensors on the
        device (nothing here waits for the device)."""
        m = self.speed.batch(one_hot_labels(labels, self.num_classes))
        photos = self.speed.batch(photos)
        pairs = None
        if labelled is not None:
            x_l, m_l = labelled
            pairs = Pairs(self.speed.batch(x_l), m_l, self.speed.batch(one_hot_labels(m_l, self.num_classes)))
        fake, read, logs = self.update_generator_and_segmenter(m, labels, photos, pairs)
        d_fake = fake if self.share_d_forward else self._new_fake(m) if self.t.fresh_fakes else fake.detach()
        logs.update(self.update_discriminator(it, photos, d_fake))
        self._apply(self.updates["G"], self.updates["S"])  # their averages arrived while D's backward ran
        if read is not None:
            logs.update(self.update_label_discriminator(m, read))
        self.phases.ema(it)
        self._forget()
        return logs

    def update_generator_and_segmenter(self, m: Tensor, labels: Tensor, photos: Tensor, pairs: Pairs | None = None):
        """G's phase and S's (and the reverse cycle's S half), their backwards, their averages started.
        Returns G's images, S's reading of the photos (reverse cycle; else None) and what they log."""
        G, S = self.updates["G"], self.updates["S"]
        with self._phase("G"):
            fake, g = self.phases.generator(m, labels, photos, pairs)
        if self.t.fresh_fakes:  # S learns from a new batch, made by the updated G
            g_total = self._backward(g, G)
            self._reduce(G)
            with self._phase("S"):
                s = self.phases.segmenter(self._new_fake(m), labels, pairs, photos)
        else:  # S learns from G's batch; with the seg term shared, G's backward gives S its gradient
            with self._phase("S"):
                s = self.phases.segmenter(fake if self.share_seg else fake.detach(), labels, pairs, photos)
            g_total = self._backward(g, G, share_with=(s, S), retain_graph=self.share_d_forward)
        s_total = self._backward(s, S)  # S's terms that G's backward did not cover
        logs = {**_logged("g", g, g_total), **_logged("s", s, s_total)}
        read = None
        if self.reverse:  # S's half of the reverse cycle, with G updated
            self._reduce(G)
            with self._phase("S"):
                read, s_rev = self.phases.segmenter_reverse(photos)
            logs.update(_logged("s_rev", s_rev, self._backward(s_rev, S)))
        self._reduce(G, S)
        return fake, read, logs

    def update_discriminator(self, it: int, photos: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """D's update(s) of iteration ``it`` on ``photos`` and G's images ``fake``: D's phase and, on an R1 step,
        the R1 phase. ``train.r1_mode=fused``: one update, R1 on the same forward of D on the photos, weighted by
        ``r1_every``; ``reference``: D's main loss weighted by ``r1_every``, then a second update on R1 alone.
        In a data-parallel run D's (first) update is finished at D's next forward. Returns what it logs."""
        t, D = self.t, self.updates["D"]
        r1 = t.r1_every > 0 and t.r1_gamma > 0 and it % t.r1_every == 0
        fused = r1 and t.r1_mode == "fused"
        real = photos.detach().requires_grad_(fused)
        if fused:  # one forward of D on (its view of) the photos for both phases
            self.keep_inputs.add(("D", id(self.phases.d_view(real))))
        with self._phase("D"):
            d = self.phases.discriminator(real, fake)
            reg = self.phases.r1(real) if fused else None
        loss = d.total()
        logs = _logged("d", d, loss)
        if t.r1_mode == "reference" and t.r1_every > 0:
            loss = t.r1_every * loss
        if reg is not None:
            loss = loss + reg.total() * t.r1_every
            logs["r1"] = reg.terms["r1"][1].detach()
        self._backward(d, D, value=loss)
        self._reduce(D)
        if "D" not in self.deferred:
            self._apply(D)
        if r1 and t.r1_mode == "reference":
            with self._phase("D"):
                reg = self.phases.r1(photos.detach().requires_grad_(True))
            self._backward(reg, D)
            self._apply(D)
            logs["r1"] = reg.terms["r1"][1].detach()
        return logs

    def update_label_discriminator(self, m: Tensor, read: Tensor) -> dict[str, Tensor]:
        """The reverse cycle's label discriminator: its phase, backward and update."""
        with self._phase("D_label"):
            dl = self.phases.label_discriminator(m, read)
        logs = _logged("d_label", dl, self._backward(dl, self.updates["D_label"]))
        self._apply(self.updates["D_label"])
        return logs

    # ------------------------------------------------------------------------------------ the machinery

    def _forget(self) -> None:
        """Drop what the step kept for its phases (and the graphs they hold)."""
        self.kept.clear()
        self.keep_inputs.clear()
        self._seg_terms.clear()
        self._views.clear()
        self._reads.clear()

    @torch.no_grad()
    def _new_fake(self, m: Tensor) -> Tensor:
        """A new batch of G's images for ``m``: new noise, G as it is now (its update finished)."""
        with self.speed.autocast():
            return self.calls["G"](m)

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Phase ``name``: its networks trainable, the others frozen; under autocast."""
        self._train(*PHASE_NETWORKS[name])
        self.phase = name
        try:
            with self.speed.autocast():
                yield
        finally:
            self.phase = None

    def _train(self, *names: str) -> None:
        for k in self.modules:
            self._set_grad(k, k in names)

    def _set_grad(self, name: str, flag: bool) -> None:
        if self._grad_on[name] is not flag:
            for p in self.params[name]:
                p.requires_grad_(flag)
            self._grad_on[name] = flag

    @contextlib.contextmanager
    def trainable(self, name: str):
        """``name`` trainable for one computation that another network's phase shares with it."""
        was = bool(self._grad_on[name])
        self._set_grad(name, True)
        try:
            yield
        finally:
            self._set_grad(name, was)

    def shares_forward(self, name: str) -> bool:
        """Whether a call of ``name`` now makes a forward that a later phase takes: D's, in G's phase."""
        return name == "D" and self.phase == "G" and self.share_d_forward

    def seg_term(self, seg, images: Tensor, labels: Tensor) -> Tensor:
        """``seg(images, labels)`` once per step for the same images and labels; in G's phase, when S shares it,
        with S trainable for it (and for nothing else in G's phase)."""
        key = (id(images), id(labels))
        if key not in self._seg_terms:
            shared = self.phase == "G" and self.share_seg
            with self.trainable("S") if shared else contextlib.nullcontext():
                self._seg_terms[key] = (images, labels, seg(images, labels))  # the inputs kept: ids stay theirs
        return self._seg_terms[key][2]

    def view(self, d_view, images: Tensor) -> Tensor:
        """``d_view(images)`` once per step for the same images: G's and D's phases see one draw of the
        augmentation on G's images when they share D's forward, and D's and R1's phases one draw on the photos."""
        return self._once(self._views, d_view, images)

    def reading(self, read, images: Tensor) -> Tensor:
        """``read(images)`` (S's reading of D's view, ``model.d_reads``) once per step for the same images: G's and
        D's phases judge G's images beside one reading, D's and R1's phases the photos."""
        return self._once(self._reads, read, images)

    @staticmethod
    def _once(cache: dict[int, tuple[Tensor, Tensor]], fn, images: Tensor) -> Tensor:
        """``fn(images)``, computed on the first call of the step for these images and kept in ``cache`` (with
        the images: their id stays their own while the entry lives)."""
        if id(images) not in cache:
            cache[id(images)] = (images, fn(images))
        return cache[id(images)][1]

    def from_grad_leaf(self, x: Tensor) -> bool:
        """Whether ``x`` is a leaf that requires grad (R1's photos) or D's view of one: a forward on it is
        differentiated twice, so it runs eager."""
        if x.is_leaf:
            return x.requires_grad
        return any(v is x and src.is_leaf and src.requires_grad for src, v in self._views.values())

    def before_forward(self, name: str) -> None:
        """A network's update whose average has started is finished before the network's next forward."""
        update = self._update_of.get(name)
        if update is not None and update.average is not None:
            self._apply(update)

    def _backward(self, loss: Loss, update: Update, value: Tensor | None = None,
                  share_with: tuple[Loss, Update] | None = None, retain_graph: bool = False) -> Tensor | None:
        """Differentiate ``loss`` (or ``value``, its total as weighted by the schedule) into ``update``'s
        parameters; terms the network already has the gradient of are left out.

        ``share_with=(other, other_update)``: the terms of a later phase's loss that are this loss's own (the
        same tensors, with weights in one ratio) get their gradient for the other network from this backward.
        Returns what was differentiated when that is the whole of ``loss`` (for the logs), else None."""
        terms = {k: wv for k, wv in loss.terms.items() if id(wv[1]) not in update.covered}
        if not terms:
            return None
        whole = len(terms) == len(loss.terms)
        if value is None:
            value = loss.total() if whole else Loss(terms).total()
        targets, ratio = [update], 1.0
        if share_with is not None:
            other, other_update = share_with
            mine = {id(v): w for w, v in loss.terms.values()}
            shared = {id(v): (mine[id(v)], w) for w, v in other.terms.values() if id(v) in mine}
            ratios = {wm / wo if wo and wm else None for wm, wo in shared.values()}
            if shared and len(ratios) == 1 and None not in ratios and self._only_through(loss, shared, other_update):
                ratio = ratios.pop()
                targets.append(other_update)
                other_update.covered.update(shared)
            elif shared:  # no single ratio: the other network differentiates those terms itself, later
                retain_graph = True
        for u in targets:
            for k in u.networks:
                self._set_grad(k, True)
            u.begin_backward()
        value.backward(inputs=[p for u in targets for p in u.params], retain_graph=retain_graph)
        if ratio != 1.0:
            targets[1].divisor = ratio
        return value if whole else None

    def _only_through(self, loss: Loss, shared: dict[int, Any], other: Update) -> bool:
        """Whether ``loss`` depends on ``other``'s parameters through the ``shared`` terms alone (checked on the
        graph once per set of term names: the phases' structure is the same at every step)."""
        key = (other.name, *loss.terms)
        if key not in self._checked:
            params = {id(p) for p in other.params}
            self._checked[key] = not any(_reaches(v, params) for _, v in loss.terms.values() if id(v) not in shared)
        return self._checked[key]

    def _reduce(self, *updates: Update) -> None:
        """Start averaging these networks' gradients over the ranks (one collective for all)."""
        todo = [u for u in updates if u.collecting and u.average is None]
        if todo:
            average = self.dist.start_averaging([p for u in todo for p in u.params])
            for u in todo:
                u.average = average

    def _apply(self, *updates: Update) -> None:
        """The optimizer steps; outputs kept from the networks' old weights are dropped."""
        for u in updates:
            if u.collecting:
                u.apply(self.dist)
                self.kept = {k: v for k, v in self.kept.items() if k[0] not in u.networks}

    def finish(self) -> None:
        """Finish every pending update (before a save or anything that reads the weights or optimizer states)."""
        self._apply(*self.updates.values())


def _reaches(t: Tensor, params: set[int]) -> bool:
    """Whether ``t``'s autograd graph reaches a parameter whose id is in ``params``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if id(getattr(fn, "variable", None)) in params:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def _logged(phase: str, loss: Loss, total: Tensor | None = None) -> dict[str, Tensor]:
    """What a phase logs: ``loss_<phase>`` (its objective; ``total`` if it was computed already),
    ``loss_<phase>_<term>`` (each term, unweighted) and its other values under their own names."""
    total = loss.total() if total is None else total
    return {f"loss_{phase}": total.detach(), **{f"loss_{phase}_{k}": v.detach() for k, (_, v) in loss.terms.items()},
            **loss.logs}
