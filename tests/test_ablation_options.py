"""Table 3's learning-scheme options (the L1 cycle loss, the reverse cycle) and MS-SSIM diversity in the
synthetic periodic evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_identical, load_benchmark, tiny_cfg, whole_and_resumed

from usis.losses import class_balanced_ce, l1_cycle_loss, segmentation_loss, soft_labels
from usis.train.trainer import Trainer


def test_l1_cycle_loss_by_hand():
    # 2 classes + don't-care 0, one 1 x 2 map: pixel 0 is class 1, pixel 1 don't-care
    logits = torch.tensor([[[[0.0, 5.0]], [[math.log(3.0), 0.0]], [[0.0, 0.0]]]])  # 1 x 3 x 1 x 2
    labels = torch.tensor([[[1, 0]]])
    # pixel 0: softmax over (0, log 3, 0) = (0.2, 0.6, 0.2); one-hot (0, 1, 0): |0.2| + |0.4| + |0.2| = 0.8
    assert l1_cycle_loss(logits, labels, dontcare=0).item() == pytest.approx(0.8)
    # without a don't-care class pixel 1 counts too: softmax(5, 0, 0) vs (1, 0, 0): 2 * 2 / (e^5 + 2)
    p1 = 2 * 2 / (math.exp(5) + 2)
    assert l1_cycle_loss(logits, labels, dontcare=None).item() == pytest.approx((0.8 + p1) / 2)
    # with the reference's extra channel, channel 0 is left out: classes are channels 1..C
    extra = torch.cat((torch.full((1, 1, 1, 2), 9.0), logits), dim=1)
    assert l1_cycle_loss(extra, labels, 0, extra_channel=True).item() == pytest.approx(0.8)
    assert torch.allclose(soft_labels(extra, True), F.softmax(logits, 1))
    # the switch picks it; "ce" stays the class-balanced cross entropy
    assert segmentation_loss("l1", logits, labels).item() == pytest.approx(0.8)
    assert segmentation_loss("ce", logits, labels).item() == pytest.approx(class_balanced_ce(logits, labels).item())


def _step(tr):
    return tr.train_step(tr.loaders.next_labels()["label"], tr.loaders.next_photos()["image"])


def test_the_reverse_cycle_trains_g_s_and_a_label_discriminator(tmp_path):
    tr = Trainer(tiny_cfg("train.lambda_rev=10"), tmp_path, progress=False)
    assert tr.nets.D_label is not None and tr.nets.D_label.from_rgb[0].weight.shape[1] == tr.num_classes
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in tr.nets.named().items()}
    losses = _step(tr)
    assert {"loss_g_rev", "loss_s_rev", "loss_d_label"} <= losses.keys() and all(math.isfinite(v) for v in losses.values())
    for k, net in tr.nets.named().items():
        if k == "G_ema":
            continue
        moved = [not torch.equal(p0, p) for p0, p in zip(before[k], net.parameters(), strict=True)]
        assert all(moved), f"{k}: {moved.count(False)} parameter tensors did not move"
    # without it there is no label discriminator and no reverse loss
    plain = Trainer(tiny_cfg(), tmp_path / "plain", progress=False)
    assert plain.nets.D_label is None and "loss_g_rev" not in _step(plain)


def test_the_reverse_cycle_gives_s_the_gradient_of_the_photo_reconstruction(tmp_path):
    # lambda_rev enters S's update: two runs that differ only in lambda_rev move S differently
    a = Trainer(tiny_cfg("train.lambda_rev=10"), tmp_path / "a", progress=False)
    b = Trainer(tiny_cfg("train.lambda_rev=1"), tmp_path / "b", progress=False)
    _step(a), _step(b)
    sa, sb = a.nets.S.state_dict(), b.nets.S.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("extra", [["train.lambda_rev=10"], ["train.seg_loss=l1"]], ids=["reverse", "l1"])
def test_resume_is_bit_identical_with_the_table3_options(tmp_path, extra):
    sa, sb = whole_and_resumed(tmp_path, *extra)
    assert ("D_label" in sa) == ("lambda_rev=10" in extra[0])
    assert_identical(sa, sb)


def test_bad_values_are_config_errors():
    from usis.config import validate
    from usis.errors import ConfigError

    with pytest.raises(ConfigError, match="train.seg_loss='mse'"):
        validate(tiny_cfg("train.seg_loss=mse"))
    with pytest.raises(ConfigError, match="train.lambda_rev=-1"):
        validate(tiny_cfg("train.lambda_rev=-1"))
    with pytest.raises(ConfigError, match="train.lambda_d_patch=0.5: .* only with model.d_patch=true"):
        validate(tiny_cfg("train.lambda_d_patch=0.5"))
    with pytest.raises(ConfigError, match="train.lambda_d_patch=-1"):
        validate(tiny_cfg("model.d_patch=true", "train.lambda_d_patch=-1"))
    with pytest.raises(ConfigError, match="train.lambda_s_pseudo=-1"):
        validate(tiny_cfg("train.lambda_s_pseudo=-1"))
    with pytest.raises(ConfigError, match="train.s_pseudo_threshold=0.0: .* the threshold in"):
        validate(tiny_cfg("train.lambda_s_pseudo=1", "train.s_pseudo_threshold=0"))
    with pytest.raises(ConfigError, match="model.d_patch=true with model.d_type=whole"):
        validate(tiny_cfg("model.d_patch=true", "model.d_type=whole"))
    with pytest.raises(ConfigError, match="model.d_reads=true with model.d_type=patch"):
        validate(tiny_cfg("model.d_reads=true", "model.d_type=patch"))


def test_periodic_msssim_is_one_without_noise_and_lower_with_it(tmp_path, monkeypatch):
    from usis.metrics import periodic

    monkeypatch.setattr(periodic, "MSSSIM_MAPS", 2)
    monkeypatch.setattr(periodic, "MSSSIM_SAMPLES", 3)
    scores, trainers = {}, {}
    for name, extra in {"noise": [], "none": ["model.noise_3d=false", "model.pixel_noise=0"]}.items():
        tr = trainers[name] = Trainer(tiny_cfg(*extra), tmp_path / name, progress=False)
        tr.fit(2, eval_at_start=False)
        labels = torch.stack([tr.val_data.labels[i]["label"] for i in range(2)])
        scores[name] = periodic.msssim_of(tr, labels)
    assert scores["none"] == pytest.approx(1.0, abs=1e-5)  # a deterministic generator: identical images
    assert scores["noise"] < 0.999
    # benchmarks/peers.py scores a saved checkpoint by the same protocol: the figure its training run logged
    peers = load_benchmark("peers")
    ckpt = trainers["noise"].save()
    assert peers.usis_diversity(str(ckpt), labels) == pytest.approx(scores["noise"], abs=1e-6)
