import math

import pytest
import torch

from usis.losses import (
    class_balance_weights,
    class_balanced_ce,
    d_logistic_loss,
    g_nonsaturating_loss,
    l1_reconstruction,
    pseudo_label_ce,
    r1_penalty,
)


def test_class_balance_weights_match_hand_computation():
    # 1 x 4 x 4 map, 4 classes, id 0 = don't care
    labels = torch.tensor([[[0, 0, 1, 1],
                            [1, 1, 1, 1],
                            [2, 2, 1, 1],
                            [2, 2, 1, 1]]])
    # P = 16 pixels; present (non-don't-care): class 1 (10 px), class 2 (4 px) -> K = 2
    w = class_balance_weights(labels, num_classes=4, dontcare=0)
    expected = torch.tensor([0.0, 16 / (2 * 10), 16 / (2 * 4), 0.0])
    assert torch.allclose(w, expected)


def test_class_balance_without_dontcare():
    labels = torch.tensor([[[0, 1], [1, 1]]])
    w = class_balance_weights(labels, num_classes=2, dontcare=None)
    assert torch.allclose(w, torch.tensor([4 / (2 * 1), 4 / (2 * 3)]))


def test_class_balanced_ce_equals_weighted_mean_by_hand():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1, 1, 2]]])  # 1 x 1 x 4
    logits = torch.randn(1, 3, 1, 4)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")[0, 0]
    # P = 4, K = 2 (classes 1, 2), alpha_1 = 4/(2*2) = 1, alpha_2 = 4/(2*1) = 2, alpha_0 = 0
    expected = (0 * ce[0] + 1 * ce[1] + 1 * ce[2] + 2 * ce[3]) / 4
    assert class_balanced_ce(logits, labels, dontcare=0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_pseudo_label_ce_by_hand():
    """Self-training: the class-balanced CE against S's own confident argmax; unconfident pixels and those read
    as don't-care weigh 0; the targets carry no gradient."""
    # 1 x 3 x 1 x 5: pixel 0 reads class 0 (don't care), pixels 1, 2 class 1, pixel 3 class 2, pixel 4 unsure
    logits = torch.tensor([[[[6.0, 0.0, 0.0, 0.0, 0.1]],
                            [[0.0, 5.0, 7.0, 0.0, 0.0]],
                            [[0.0, 0.0, 0.0, 4.0, 0.0]]]], requires_grad=True)
    ce = torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([[[0, 1, 1, 2, 0]]]), reduction="none")[0, 0]
    # P = 5, read confidently: class 1 (2 px), class 2 (1 px) -> K = 2, alpha_1 = 5/4, alpha_2 = 5/2
    expected = (5 / 4 * ce[1] + 5 / 4 * ce[2] + 5 / 2 * ce[3]) / 5
    loss = pseudo_label_ce(logits, threshold=0.9, dontcare=0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the gradient is that of the CE with fixed targets: at pixel 4 (not confident) none
    loss.backward()
    assert logits.grad[0, :, 0, 4].abs().max() == 0 and logits.grad[0, :, 0, 3].abs().max() > 0
    # without a don't-care id pixel 0 counts (3 classes read); a threshold nothing reaches gives 0, not NaN
    assert pseudo_label_ce(logits, 0.9, dontcare=None).item() > 0
    assert pseudo_label_ce(logits, 1.0, dontcare=0).item() == 0.0
    # the reference's extra channel 0 is no class: the same numbers with it prepended (and very unlikely)
    extra = torch.cat([torch.full((1, 1, 1, 5), -30.0), logits.detach()], dim=1)
    assert pseudo_label_ce(extra, 0.9, dontcare=0, extra_channel=True).item() == pytest.approx(expected.item(),
                                                                                               rel=1e-5)


def test_all_dontcare_batch_gives_zero_not_nan():
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    loss = class_balanced_ce(logits, torch.zeros(2, 4, 4, dtype=torch.long), dontcare=0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_logistic_losses():
    zeros = torch.zeros(4)
    assert d_logistic_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(zeros).item() == pytest.approx(math.log(2))
    # a confident, correct D has small loss; G's loss grows when D rejects fakes
    assert d_logistic_loss(torch.full((4,), 10.0), torch.full((4,), -10.0)).item() < 1e-3
    assert g_nonsaturating_loss(torch.full((4,), -10.0)).item() > 9.9


def test_r1_equals_analytic_gradient_norm_of_quadratic_discriminator():
    torch.manual_seed(0)
    a = torch.randn(3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    logits = (a * x.pow(2)).sum(dim=(1, 2, 3))  # D(x) = sum a x^2 -> grad = 2 a x
    expected = (2 * a * x.detach()).pow(2).sum(dim=(1, 2, 3)).mean()
    assert r1_penalty(logits, x).item() == pytest.approx(expected.item(), rel=1e-5)


def test_l1_reconstruction():
    assert l1_reconstruction(torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)).item() == pytest.approx(2.0)


def test_hard_labels_is_the_one_hot_argmax_of_the_classes():
    from usis.losses import hard_labels

    logits = torch.randn(2, 4, 6, 5)
    out = hard_labels(logits)
    assert out.shape == logits.shape and torch.equal(out.sum(1), torch.ones(2, 6, 5))
    assert torch.equal(out.argmax(1), logits.argmax(1))
    # the extra channel 0 (never a class) is left out, even where it is the largest
    logits[:, 0] = 100.0
    out = hard_labels(logits, extra_channel=True)
    assert out.shape == (2, 3, 6, 5) and torch.equal(out.argmax(1), logits[:, 1:].argmax(1))
