"""USIS losses as pure functions (Eq. 2-5 of the paper).

Images are ``N x 3 x H x W`` in [-1, 1]; label maps are int64 class ids ``N x H x W``. A discriminator's
logits are one tensor, or a tuple of them, one per head (``model.d_patch``: a whole-image logit and one per
patch); each adversarial loss is then the sum over the heads of the head's loss, each head's loss times its weight
(``weights``, one per head; ``None``: all 1; ``train.lambda_d_patch`` is the patch head's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_balance_weights(labels: torch.Tensor, num_classes: int, dontcare: int | None = 0) -> torch.Tensor:
    """Per-class weights of Eq. 4, computed on the batch.

    ``alpha_c = P / (K * P_c)`` with ``P`` all pixels of the batch, ``P_c`` the pixels of class c and
    ``K`` the number of classes present (don't-care excluded), as in the official code. Classes absent
    from the batch and the don't-care id get weight 0. Returns a float tensor of length ``num_classes``.
    """
    # sync-free on a GPU: no bincount (its length depends on the ids' maximum), no boolean indexing, no branch
    # on a device value -- the same numbers as P / (K * P_c) on the classes present, 0 elsewhere
    flat = labels.reshape(-1)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=labels.device)
    counts = counts.scatter_add_(0, flat, torch.ones_like(flat)).to(torch.float32)
    if dontcare is not None:
        counts[dontcare] = 0.0
    present = counts > 0
    k = present.sum().to(torch.float32)
    total = float(labels.numel())
    weights = total / (k.clamp(min=1.0) * counts.clamp(min=1.0))
    return torch.where(present, weights, torch.zeros_like(weights))


def class_balanced_ce(logits: torch.Tensor, labels: torch.Tensor, dontcare: int | None = 0,
                      extra_channel: bool = False) -> torch.Tensor:
    """Class-balanced pixel cross entropy ``L_seg`` (Eq. 3): ``mean_pixels(alpha[m] * CE(S(x), m))``.

    Args:
        logits: ``N x C x H x W`` segmenter output, or ``N x (C+1) x H x W`` with ``extra_channel``.
        labels: ``N x H x W`` int64 class ids in [0, C).
        dontcare: class id weighted 0 (or ``None``).
        extra_channel: the logits carry one more channel than there are classes, channel 0, which is never
            a target but is part of the softmax's normaliser; class ``c`` is channel ``c + 1``. This is the
            reference's "N+1" loss (its segmenter is OASIS's discriminator, whose channel 0 means "fake").
    A batch made only of don't-care pixels gives 0 (with a gradient path), never NaN.
    """
    num_classes = logits.shape[1] - int(extra_channel)
    weights = class_balance_weights(labels, num_classes, dontcare).to(logits.dtype)
    ce = F.cross_entropy(logits, labels + 1 if extra_channel else labels, reduction="none")
    return (weights[labels] * ce).mean()


Logits = torch.Tensor | tuple[torch.Tensor, ...]


def heads(logits: Logits) -> tuple[torch.Tensor, ...]:
    """A discriminator's output as the tuple of its heads' logits."""
    return tuple(logits) if isinstance(logits, (tuple, list)) else (logits,)


def as_float(logits: Logits) -> Logits:
    """The logits in float32 (out of autocast), in the same structure."""
    return tuple(x.float() for x in logits) if isinstance(logits, (tuple, list)) else logits.float()


Weights = tuple[float, ...] | None


def _over_heads(terms: tuple[torch.Tensor, ...] | list[torch.Tensor], weights: Weights = None) -> torch.Tensor:
    """``sum_h w_h * terms[h]`` (a weight of 1 multiplies nothing: one head, or all weights 1, is the plain sum)."""
    weights = weights if weights is not None else (1.0,) * len(terms)
    if len(weights) != len(terms):
        raise ValueError(f"{len(weights)} head weights for {len(terms)} heads")
    total = None
    for t, w in zip(terms, weights, strict=True):
        x = t if w == 1 else w * t
        total = x if total is None else total + x
    return total


def d_logistic_loss(real_logits: Logits, fake_logits: Logits, weights: Weights = None) -> torch.Tensor:
    """Non-saturating logistic D loss: ``-log D(x) - log(1 - D(G(m)))`` with D = sigmoid(logits), each term the
    mean over the head's logits; summed over the heads (``sum_h w_h * loss_h``)."""
    return _over_heads([F.softplus(-r).mean() + F.softplus(f).mean()
                        for r, f in zip(heads(real_logits), heads(fake_logits), strict=True)], weights)


def g_nonsaturating_loss(fake_logits: Logits, weights: Weights = None) -> torch.Tensor:
    """Non-saturating G loss: ``-log D(G(m))`` (the mean over a head's logits; ``sum_h w_h * loss_h`` over the
    heads)."""
    return _over_heads([F.softplus(-f).mean() for f in heads(fake_logits)], weights)


def r1_penalty(real_logits: Logits, real_images: torch.Tensor, weights: Weights = None) -> torch.Tensor:
    """R1: ``E ||grad_x D(x)||^2`` on real images (``real_images`` must require grad), ``D(x)`` the sum of the
    logits of every head, each times its weight (``sum_h w_h * sum(logits_h)``: the D the losses weigh).

    Returned without the ``gamma / 2`` factor; the caller scales it (and by the lazy interval).
    """
    (grad,) = torch.autograd.grad(_over_heads([x.sum() for x in heads(real_logits)], weights), real_images,
                                  create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def l1_reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the decoder's reconstruction of real images."""
    return (pred - target).abs().mean()



def soft_labels(logits: torch.Tensor, extra_channel: bool = False) -> torch.Tensor:
    """The segmenter's class probabilities ``N x C x H x W`` (softmax over the C classes; the reference's
    extra channel 0, never a class, is left out): a soft label map the generator can take as input."""
    return F.softmax(logits[:, 1:] if extra_channel else logits, dim=1)


def hard_labels(logits: torch.Tensor, extra_channel: bool = False) -> torch.Tensor:
    """The segmenter's reading as a one-hot map ``N x C x H x W``: ``1`` at ``argmax_c`` of the C classes' logits
    (the extra channel 0 left out), ``0`` elsewhere, in the logits' dtype. Not differentiable."""
    logits = logits[:, 1:] if extra_channel else logits
    return torch.zeros_like(logits).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)


def l1_cycle_loss(logits: torch.Tensor, labels: torch.Tensor, dontcare: int | None = 0,
                  extra_channel: bool = False) -> torch.Tensor:
    """Table 3's configuration A: CycleGAN's L1 cycle loss with respect to the one-hot label map, in place
    of the class-balanced cross entropy: ``sum_c |softmax(S(G(m)))_c - m_c|`` per pixel (in [0, 2]; with
    C classes about 2 (C - 1) / C for a uniform prediction, the scale of a C-way CE), averaged over the
    pixels that are not don't-care. No class balancing."""
    probs = soft_labels(logits, extra_channel)
    onehot = F.one_hot(labels, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    per_pixel = (probs - onehot).abs().sum(dim=1)
    if dontcare is None:
        return per_pixel.mean()
    valid = (labels != dontcare).to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0)


def pseudo_label_ce(logits: torch.Tensor, threshold: float, dontcare: int | None = 0,
                    extra_channel: bool = False) -> torch.Tensor:
    """Self-training on unlabelled photos (CBST, Zou et al. ECCV 2018; FixMatch's confidence mask): the
    class-balanced cross entropy of Eq. 3-4 against the segmenter's own confident reading,
    ``mean_pixels(alpha[y] * [p_max >= threshold] * CE(S(x), y))`` with ``y = argmax_c p_c`` and ``p`` the
    softmax over the classes, both held fixed (no gradient through the targets or the mask). ``alpha`` is
    Eq. 4's ``P / (K * P_c)`` over the confident pixels (``P`` all pixels, ``K`` the classes read
    confidently): each class read confidently weighs the same, whatever its area. Pixels read as the
    don't-care id never count. No confident pixel: 0, with a gradient path."""
    with torch.no_grad():
        conf, target = soft_labels(logits.detach(), extra_channel).max(dim=1)
        num_classes = logits.shape[1] - int(extra_channel)
        valid = conf >= threshold
        if dontcare is not None:
            valid &= target != dontcare
        binned = torch.where(valid, target, torch.full_like(target, num_classes))  # the unread: one more bin
        weights = class_balance_weights(binned, num_classes + 1, dontcare=num_classes).to(logits.dtype)
    ce = F.cross_entropy(logits, target + 1 if extra_channel else target, reduction="none")
    return (weights[binned] * ce).mean()


def segmentation_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, dontcare: int | None = 0,
                      extra_channel: bool = False) -> torch.Tensor:
    """``L_seg`` of ``train.seg_loss``: ``ce`` (USIS, class-balanced cross entropy) or ``l1`` (Table 3, A)."""
    if kind == "l1":
        return l1_cycle_loss(logits, labels, dontcare, extra_channel)
    return class_balanced_ce(logits, labels, dontcare, extra_channel)
