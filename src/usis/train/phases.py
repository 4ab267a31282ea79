"""What each network learns in one USIS iteration: Eq. 2 of the paper, one phase per network.

Read it next to the paper. ``m``: label maps (class ids ``N x H x W`` for the losses, one-hot ``N x C x H x W``
for the networks); ``x``: photos of an UNRELATED batch (they never correspond to ``m``); ``z``: noise, drawn
inside G.

==============  ==============================================================================  =============
phase           the network minimises                                                           paper
==============  ==============================================================================  =============
``generator``   lambda_seg * L_seg(S(G(m, z)), m) + L_adv(D(G(m, z)))                           Eq. 2, 3, 5
``segmenter``   L_seg(S(G(m, z)), m), on G's images: S never sees a photo                       Eq. 2, 3
                (with ``data.labelled``: + lambda_labelled * L_seg(S(T(x_l)), T(m_l)), x_l's own m_l)
                (with ``train.lambda_s_pseudo``: + lambda_s_pseudo * L_pseudo(S(x)), S's confident reading of x)
``discriminator``  L_adv_D(D(x), D(G(m, z))) + lambda_rec * L1(Dec(D_feat(x)), x)               Eq. 5, 3.3
``r1``          gamma * R1(D, x) on photos (StyleGAN2's lazy R1; ``train.r1_mode``)             Sec. 4
``ema``         G_ema <- decay * G_ema + (1 - decay) * G                                        Sec. 4
==============  ==============================================================================  =============

A few labelled photos (``data.labelled``, issue 32): pairs ``(x_l, m_l)`` of a real photo and its own map.
S also learns to segment them (through ``train.labelled_augment``: colour jitter, and a shift of both), so G's
seg term asks G for what S learned from photos; with ``train.lambda_labelled_rec > 0`` G also learns
``lambda_labelled_rec * L1(G(m_l, z), x_l)``.

Beyond the paper (issue 31, off by default): with ``train.d_augment`` D sees photos and G's images only through
a differentiable augmentation ``T`` (DiffAugment: ``D(x)`` above is ``D(T(x))``, the decoder rebuilds ``T(x)``,
and G learns through ``T``); with ``train.s_augment`` S reads G's images through one (``S(T(G(m, z)))``, in
both phases that share the seg term).

With ``model.d_reads`` D reads each image beside S's reading of it: ``D(x)`` above is ``D(x, R(x))``, ``R`` the
one-hot argmax of S's classes, made without a gradient and without changing S, for photos and G's images alike.

``L_seg`` is the class-balanced cross entropy (Eq. 3, 4); Table 3's ablations are options:
``train.seg_loss=l1`` makes it CycleGAN's L1 cycle loss, and ``train.lambda_rev > 0`` adds the reverse cycle
x -> S -> G -> x:

* ``generator``, term ``rev``: lambda_rev * L1(G(S(x)), x), S's reading of the photo held fixed;
* ``segmenter_reverse``: lambda_rev * L1(G(S(x)), x) + L_adv(D_label(S(x))), G held fixed;
* ``label_discriminator``: L_adv_D(D_label(m), D_label(S(x))).

Each phase returns a :class:`Loss`: its terms, each with its weight. That is all that happens here: a phase
calls no optimizer, averages no gradient and knows nothing of autocast, compilation, or which network is
trainable. :mod:`usis.train.schedule` runs the phases and differentiates each network's loss into that
network's own parameters; it may compute a forward or the ``seg`` term once for two phases (see there).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from usis.config import Config
from usis.losses import (
    as_float,
    d_logistic_loss,
    g_nonsaturating_loss,
    hard_labels,
    heads,
    l1_reconstruction,
    pseudo_label_ce,
    r1_penalty,
    segmentation_loss,
    soft_labels,
)
from usis.nn.augment import augment, augment_pairs, parse_policy
from usis.train.ema import update_ema


class Pairs(NamedTuple):
    """A batch of labelled pairs (``data.labelled``): photos, their maps as ids (``N x H x W``) and one-hot."""

    photos: Tensor
    labels: Tensor
    m: Tensor


@dataclass
class Loss:
    """One network's objective in one phase: ``sum(weight * value)`` over named ``terms``
    (``name -> (weight, value)``, 0-d tensors), plus ``logs``: values to watch (detached), not part of it."""

    terms: dict[str, tuple[float, Tensor]]
    logs: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Tensor:
        """The objective, summed in the order of the terms (a weight of 1 multiplies nothing)."""
        total = None
        for weight, value in self.terms.values():
            x = value if weight == 1 else weight * value
            total = x if total is None else total + x
        if total is None:
            raise ValueError("a Loss needs at least one term")
        return total


class USISPhases:
    """The phases of USIS for the networks ``nets`` (anything with ``G``, ``S``, ``D``, ``decoder`` and
    ``D_label`` to call: the modules, or the schedule's calls of them) and the run's config.

    ``ema`` updates the modules ``ema_nets.G_ema`` from ``ema_nets.G`` (by default ``nets``)."""

    def __init__(self, cfg: Config, nets: Any, dontcare: int | None, ema_nets: Any = None):
        self.t = cfg.train
        self.nets = nets
        self.ema_nets = ema_nets if ema_nets is not None else nets
        self.dontcare = dontcare
        self.extra_channel = cfg.model.s_extra_channel
        self.d_reads = cfg.model.d_reads
        self.reverse = cfg.train.lambda_rev > 0
        # D's heads' weights in the adversarial losses and R1 (model.d_patch: the image's 1, the patches' weight)
        self.d_weights = (1.0, cfg.train.lambda_d_patch) if cfg.model.d_patch else None
        self.d_policy = parse_policy(cfg.train.d_augment)
        self.s_policy = parse_policy(cfg.train.s_augment)
        # labelled pairs: without a don't-care id to fill the uncovered border with, no shift
        self.l_policy = tuple(op for op in parse_policy(cfg.train.labelled_augment)
                              if dontcare is not None or op != "translation")

    # ------------------------------------------------------------------------------------ the views

    def d_view(self, images: Tensor) -> Tensor:
        """Images as D sees them: through ``train.d_augment`` (a fresh draw per call), or as they are."""
        return augment(images, self.d_policy)

    def labelled_view(self, photos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Labelled photos and their maps as S learns them: through ``train.labelled_augment`` (a shift moves both;
        the uncovered border is don't-care)."""
        return augment_pairs(photos, labels, self.l_policy, fill=self.dontcare if self.dontcare is not None else 0)

    def s_view(self, images: Tensor) -> Tensor:
        """G's images as S reads them in the seg term: through ``train.s_augment``, or as they are."""
        return augment(images, self.s_policy)

    def reading(self, images: Tensor) -> Tensor:
        """S's reading of ``images`` as D takes it beside them (``model.d_reads``): the one-hot argmax of S's classes.
        No gradient reaches S or the images through it. S is read as the step found it (the module itself, in eval
        mode: its spectral norm runs no power iteration, and an update of S that is pending is not applied first),
        so G's images and the photos are read by the same S in every phase."""
        S = getattr(self.nets.S, "module", self.nets.S)
        with torch.no_grad(), _eval_mode(S):
            return hard_labels(S(images).float(), self.extra_channel)

    def judge(self, view: Tensor, return_features: bool = False):
        """D on images as D sees them (``view``: from :meth:`d_view`), beside S's reading of that view with
        ``model.d_reads``."""
        args = (self.reading(view),) if self.d_reads else ()
        return self.nets.D(view, *args, **({"return_features": True} if return_features else {}))

    # ---------------------------------------------------------------------------------------- a term

    def seg(self, images: Tensor, labels: Tensor) -> Tensor:
        """``L_seg(S(images), m)`` (Eq. 3; ``train.seg_loss=l1``: Table 3's L1 cycle loss). The one term two
        phases share: G minimises it with weight ``lambda_seg``, S with weight 1, on the same images."""
        return segmentation_loss(self.t.seg_loss, self.nets.S(self.s_view(images)).float(), labels, self.dontcare,
                                 self.extra_channel)

    # -------------------------------------------------------------------------------------- phases

    def generator(self, m: Tensor, labels: Tensor, photos: Tensor, pairs: Pairs | None = None) -> tuple[Tensor, Loss]:
        """G: ``lambda_seg * L_seg(S(G(m, z)), m) + L_adv(D(G(m, z)))``: fool D, and keep every class
        recognisable for S (and with labelled ``pairs`` and ``lambda_labelled_rec``: paint their photos from their
        maps). Returns G's images (the fakes S and D learn from) and G's loss."""
        G = self.nets.G
        fake = G(m)
        terms = {"seg": (self.t.lambda_seg, self.seg(fake, labels)),
                 "adv": (1.0, g_nonsaturating_loss(as_float(self.judge(self.d_view(fake))), self.d_weights))}
        if pairs is not None and self.t.lambda_labelled_rec > 0:
            terms["labelled_rec"] = (self.t.lambda_labelled_rec, l1_reconstruction(G(pairs.m).float(), pairs.photos))
        if self.reverse:  # rebuild the photo from S's reading of it (S held fixed: no gradient reaches it)
            with torch.no_grad():
                read = soft_labels(self.nets.S(photos).float(), self.extra_channel)
            terms["rev"] = (self.t.lambda_rev, l1_reconstruction(G(read).float(), photos))
        return fake, Loss(terms)

    def segmenter(self, fake: Tensor, labels: Tensor, pairs: Pairs | None = None,
                  photos: Tensor | None = None) -> Loss:
        """S: ``L_seg(S(fake), m)``: learn to segment G's images into the label maps they were made from; with
        labelled ``pairs``, ``lambda_labelled * L_seg(S(T(x_l)), T(m_l))``: real photos into their own maps; with
        ``train.lambda_s_pseudo`` and the unpaired ``photos``, ``lambda_s_pseudo * L_pseudo(S(x))``: the photos
        into S's own confident reading of them (self-training: what S reads in photos must hold in photos too)."""
        terms = {"seg": (1.0, self.seg(fake, labels))}
        if photos is not None and self.t.lambda_s_pseudo > 0:
            terms["pseudo"] = (self.t.lambda_s_pseudo, pseudo_label_ce(
                self.nets.S(photos).float(), self.t.s_pseudo_threshold, self.dontcare, self.extra_channel))
        if pairs is not None and self.t.lambda_labelled > 0:
            x, m_l = self.labelled_view(pairs.photos, pairs.labels)
            terms["labelled"] = (self.t.lambda_labelled, segmentation_loss(
                self.t.seg_loss, self.nets.S(x).float(), m_l, self.dontcare, self.extra_channel))
        return Loss(terms)

    def segmenter_reverse(self, photos: Tensor) -> tuple[Tensor, Loss]:
        """S's half of the reverse cycle (Table 3): read the photo so that G rebuilds it, and so that the label
        discriminator takes the reading for a label map. Returns the reading and S's loss."""
        read = soft_labels(self.nets.S(photos).float(), self.extra_channel)
        rebuilt = self.nets.G(read)
        return read, Loss({"rev": (self.t.lambda_rev, l1_reconstruction(rebuilt.float(), photos)),
                           "adv": (1.0, g_nonsaturating_loss(self.nets.D_label(read).float()))})

    def discriminator(self, photos: Tensor, fake: Tensor) -> Loss:
        """D (with the decoder): ``L_adv_D(D(x), D(fake)) + lambda_rec * L1(Dec(D_feat(x)), x)``: tell photos
        from G's images, and keep in its features what rebuilds the photo."""
        dec = self.nets.decoder
        photos = self.d_view(photos)
        real_logits, feats = self.judge(photos, return_features=True)
        fake_logits = self.judge(self.d_view(fake))
        terms = {"adv": (1.0, d_logistic_loss(as_float(real_logits), as_float(fake_logits), self.d_weights))}
        if dec is not None:
            terms["rec"] = (self.t.lambda_rec, l1_reconstruction(dec(feats).float(), photos))
        return Loss(terms, logs={"d_real": heads(real_logits)[0].detach().float().mean(),
                                 "d_fake": heads(fake_logits)[0].detach().float().mean()})

    def r1(self, photos: Tensor) -> Loss:
        """D's R1 penalty ``E ||grad_x D(x)||^2`` on photos (``photos`` must require grad). Weighted by
        ``r1_gamma`` as in the reference (``train.r1_mode=reference``), by ``r1_gamma / 2`` as in StyleGAN2
        (``fused``)."""
        gamma = self.t.r1_gamma if self.t.r1_mode == "reference" else self.t.r1_gamma / 2
        return Loss({"r1": (gamma, r1_penalty(as_float(self.judge(self.d_view(photos))), photos, self.d_weights))})

    def label_discriminator(self, m: Tensor, read: Tensor) -> Loss:
        """D_label (reverse cycle): tell the label stream's maps from S's readings of photos."""
        DL = self.nets.D_label
        return Loss({"adv": (1.0, d_logistic_loss(DL(m).float(), DL(read.detach()).float()))})

    def ema(self, step: int) -> None:
        """G_ema: the exponential moving average of G's weights (``train.ema_decay``, with the warm-up of
        ``train.ema_warmup``); its buffers are copied."""
        update_ema(self.ema_nets.G_ema, self.ema_nets.G, self.t.ema_decay, step, self.t.ema_warmup)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """``module`` in eval mode for the block."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)
