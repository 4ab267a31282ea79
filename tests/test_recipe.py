"""The reference implementation's training recipe: initialisation, the C+1 segmentation loss, how R1
enters D's optimisation, fresh fakes (tests/test_training.py) and the previous recipe as options."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cfg

from usis import config as C
from usis.losses import class_balanced_ce, d_logistic_loss, l1_reconstruction, r1_penalty
from usis.nn.build import build_networks
from usis.train.trainer import Trainer


def _convs(net):
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            yield name, m, getattr(m, "weight_orig", m.weight)


@pytest.mark.parametrize("which", ["G", "S"])
def test_reference_initialisation_is_xavier_normal_with_gain_002(which):
    # wide enough layers that the sample std estimates the init std within a few percent
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["model.g_ch=16", "model.spade_hidden=32", "model.s_ch=16",
                                                        "model.init=reference"])
    torch.manual_seed(0)
    net = getattr(build_networks(cfg), which)
    checked = 0
    for name, m, w in _convs(net):
        fan_in = w.shape[1] * w[0, 0].numel()
        fan_out = w.shape[0] * w[0, 0].numel()
        expected = 0.02 * math.sqrt(2.0 / (fan_in + fan_out))
        if w.numel() >= 2000:  # the std of a small sample is itself noisy
            assert w.std().item() == pytest.approx(expected, rel=0.05), name
            checked += 1
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0, name
    assert checked >= 5
    # spectrally normalised layers are initialised too (their weight_orig), as in the reference
    assert any(hasattr(m, "weight_orig") for _, m, _ in _convs(net))


def test_default_initialisation_is_pytorchs():
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["model.init=default"])
    torch.manual_seed(0)
    G = build_networks(cfg).G
    w = G.conv_img.weight
    # PyTorch's kaiming-uniform(a=sqrt(5)): std = 1 / sqrt(3 * fan_in), far above 0.02 * xavier
    fan_in = w.shape[1] * 9
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.15)
    assert torch.count_nonzero(G.conv_img.bias) > 0
    with pytest.raises(C.ConfigError, match="model.init"):
        C.validate(C.apply_overrides(C.get_preset("synthetic"), ["model.init=kaiming"]))


def test_c_plus_one_loss_equals_a_hand_computation():
    # 3 classes (0 = don't care) -> 4 logit channels; channel 0 is never a target but is in the softmax
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1, 1], [2, 2, 1]]])  # 1 x 2 x 3
    logits = torch.randn(1, 4, 2, 3)
    # class-balancing weights: P = 6 pixels, K = 2 present classes (1: 3 px, 2: 2 px), don't care 0
    alpha = {0: 0.0, 1: 6 / (2 * 3), 2: 6 / (2 * 2)}
    total = 0.0
    for i in range(2):
        for j in range(3):
            c = int(labels[0, i, j])
            z = logits[0, :, i, j]
            ce = -(z[c + 1] - torch.logsumexp(z, 0))  # target channel c + 1 over all four channels
            total += alpha[c] * ce.item()
    expected = total / 6
    got = class_balanced_ce(logits, labels, dontcare=0, extra_channel=True).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # the extra channel matters: it is not the C-way loss on the class channels alone
    assert got != pytest.approx(class_balanced_ce(logits[:, 1:], labels, dontcare=0).item(), rel=1e-3)


def test_segmenter_has_one_extra_channel_by_default():
    assert C.get_preset("cityscapes").model.s_extra_channel  # every real-data preset: the reference's C+1
    nets = build_networks(C.apply_overrides(C.get_preset("synthetic"), ["model.s_extra_channel=true"]))
    assert nets.S.head.out_channels == nets.G.num_classes + 1
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["model.s_extra_channel=false"])
    assert build_networks(cfg).S.head.out_channels == nets.G.num_classes


def _record_d_steps(tr):
    """Patch D's optimizer: at every step record D and the decoder as they are (before the update) and
    their gradients."""
    calls = []
    real_step = tr.opt_d.step

    def step(*a, **k):
        calls.append({"D": copy.deepcopy(tr.nets.D), "dec": copy.deepcopy(tr.nets.decoder),
                      "grads": [None if p.grad is None else p.grad.clone() for p in tr.schedule.updates["D"].params]})
        return real_step(*a, **k)

    tr.opt_d.step = step
    return calls


def _grads(loss, D, dec):
    params = list(D.parameters()) + list(dec.parameters())
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return list(gs)


def _assert_grads(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None or not torch.any(w):
            assert g is None or not torch.any(g), f"parameter {i} should get no gradient"
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7, msg=f"parameter {i}")


def _d_inputs(tr):
    torch.manual_seed(1)
    photos = tr.loaders.next_photos()["image"]
    fake = torch.tanh(torch.randn_like(photos))
    return photos, fake


def _main_loss(D, dec, photos, fake, lambda_rec):
    real_logits, feats = D(photos, return_features=True)
    adv = d_logistic_loss(real_logits, D(fake))
    return adv + lambda_rec * l1_reconstruction(dec(feats), photos)


def _r1(D, photos):
    x = photos.detach().requires_grad_(True)
    return r1_penalty(D(x), x)


@pytest.mark.parametrize("step", [0, 1])
def test_d_step_weighting_is_the_references(tmp_path, step):
    # reference train.py: loss_Du = reg_every * (adv + decoder L1); every reg_every iterations a separate
    # step on 10 * R1 (10 = gamma)
    tr = Trainer(tiny_cfg("train.r1_every=4", "train.r1_gamma=10", "train.lambda_rec=0.5",
                          "train.r1_mode=reference"), tmp_path, progress=False)
    photos, fake = _d_inputs(tr)
    calls = _record_d_steps(tr)
    out = tr.schedule.update_discriminator(step, photos, fake)
    assert len(calls) == (2 if step % 4 == 0 else 1)
    c = calls[0]
    want = _grads(4 * _main_loss(c["D"], c["dec"], photos, fake, 0.5), c["D"], c["dec"])
    _assert_grads(c["grads"], want)
    if step % 4 == 0:
        c = calls[1]  # D after the first update; the decoder gets no gradient from R1
        want = _grads(10 * _r1(c["D"], photos), c["D"], c["dec"])
        _assert_grads(c["grads"], want)
        assert out["r1"] > 0


def test_d_step_weighting_fused(tmp_path):
    # the earlier recipe (train.r1_mode=fused): one step on adv + L1 + gamma / 2 * R1 * r1_every
    tr = Trainer(tiny_cfg("train.r1_every=4", "train.r1_gamma=10", "train.lambda_rec=0.5", "train.r1_mode=fused"),
                 tmp_path, progress=False)
    photos, fake = _d_inputs(tr)
    calls = _record_d_steps(tr)
    tr.schedule.update_discriminator(0, photos, fake)
    assert len(calls) == 1
    c = calls[0]
    loss = _main_loss(c["D"], c["dec"], photos, fake, 0.5) + 5 * _r1(c["D"], photos) * 4
    _assert_grads(c["grads"], _grads(loss, c["D"], c["dec"]))


def test_previous_recipe_still_trains(tmp_path):
    tr = Trainer(tiny_cfg("model.init=default", "model.s_extra_channel=false", "train.r1_mode=fused",
                          "train.fresh_fakes=false"), tmp_path, progress=False)
    s = tr.fit(2, eval_at_start=False)
    assert s["step"] == 2 and "diverged" not in s
    with pytest.raises(C.ConfigError, match="r1_mode"):
        C.validate(tiny_cfg("train.r1_mode=lazy"))


def test_reference_init_makes_gs_output_small():
    # the point of the reference's init: G's images start near 0 (std ~0.02), not saturated noise
    cfg = C.get_preset("cityscapes")
    cfg = C.apply_overrides(cfg, ["data.height=64", "data.width=128", "model.g_ch=16", "model.spade_hidden=32"])
    torch.manual_seed(0)
    G = build_networks(cfg).G
    m = F.one_hot(torch.randint(0, cfg.model.num_classes, (2, 64, 128)), cfg.model.num_classes).permute(0, 3, 1, 2)
    with torch.no_grad():
        std_ref = G(m.float()).std().item()
    cfg.model.init = "default"
    torch.manual_seed(0)
    G = build_networks(cfg).G
    with torch.no_grad():
        std_default = G(m.float()).std().item()
    assert std_ref < 0.1 < std_default


def test_ema_without_warmup_uses_the_decay_from_the_first_step():
    from usis.train.ema import update_ema

    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), ema.weight.fill_(0.0)
    update_ema(ema, model, 0.9, step=0, warmup=False)
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1))  # 0.9 * 0 + 0.1 * 1
    update_ema(ema, model, 0.9, step=0, warmup=True)  # warm-up: min(0.9, 1 / 10) = 0.1
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1 * 0.1 + 0.9))
    assert C.get_preset("cityscapes").train.ema_warmup is False  # the reference has none


@pytest.mark.parametrize("step", [0, 1])  # with and without the lazy R1 term (train.r1_every=2)
def test_d_step_on_the_g_steps_fake_logits_is_the_same_update(tmp_path, step):
    """D's step may take its fake logits from the G step's forward (D unchanged in between): the same D and
    decoder, bit for bit, as a forward of its own, and its backward does not reach G through them."""
    trainers = []
    for k in range(2):
        torch.manual_seed(0)
        trainers.append(Trainer(tiny_cfg(), tmp_path / str(k), progress=False))
    a, b = trainers
    photos, fake = _d_inputs(a)
    upstream = fake.clone().requires_grad_(True)  # stands for G's output: the graph under the fake logits
    with b.schedule._phase("G"):  # G's phase calls D on its images: the schedule keeps that forward for D's
        b.schedule.calls["D"](upstream)
    forwards = {"a": 0, "b": 0}
    for name, tr in (("a", a), ("b", b)):
        tr.nets.D.register_forward_hook(lambda *_, name=name: forwards.__setitem__(name, forwards[name] + 1))
    b.schedule.update_discriminator(step, photos, upstream)
    a.schedule.update_discriminator(step, photos, fake)
    assert forwards == {"a": 2, "b": 1}  # real and fake; real only
    assert upstream.grad is None
    for net in ("D", "decoder"):
        for (k, x), (_, y) in zip(getattr(a.nets, net).state_dict().items(), getattr(b.nets, net).state_dict().items(),
                                  strict=True):
            assert torch.equal(x, y), f"{net}.{k}"


@pytest.mark.parametrize("d_type, forwards", [("wavelet", 2), ("patch", 3)])
def test_the_g_steps_d_forward_is_shared_only_when_d_has_no_state_to_advance(tmp_path, d_type, forwards):
    """The wavelet D's forward is pure: its step reuses the G step's logits on the fakes (two D forwards per
    step: fake, real). The PatchGAN's spectral norm advances its power iteration at every forward: three,
    as in the reference."""
    tr = Trainer(tiny_cfg(f"model.d_type={d_type}"), tmp_path, progress=False)
    tr.step = 1  # no R1 this step
    count = [0]
    tr.nets.D.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    tr.train_step(tr.loaders.next_labels()["label"], tr.loaders.next_photos()["image"])
    assert count[0] == forwards


@pytest.mark.parametrize("r1_mode, step", [("fused", 1), ("fused", 4), ("reference", 1), ("reference", 4)])
def test_a_deferred_d_update_is_the_same_update_finished_later(tmp_path, r1_mode, step):
    """A data-parallel step leaves the end of D's update (its average, its optimizer step) to D's next forward or
    ``finish_pending_updates``: until then D is as it was; then D, the decoder and D's optimizer state are
    those of the update done at once, bit for bit. The reference's R1 step needs D updated: not deferred."""
    trainers = []
    for k in range(2):
        torch.manual_seed(0)
        trainers.append(Trainer(tiny_cfg(f"train.r1_mode={r1_mode}", "train.r1_every=4"), tmp_path / str(k),
                                progress=False))
    now, later = trainers
    later.schedule.deferred = {"D"}  # as in a data-parallel run
    photos, fake = _d_inputs(now)
    before = copy.deepcopy(later.nets.D.state_dict())
    now.schedule.update_discriminator(step, photos, fake)
    later.schedule.update_discriminator(step, photos, fake)
    deferred = r1_mode == "fused" or step % 4
    assert later.schedule.updates["D"].collecting == bool(deferred)
    if deferred:  # nothing of D changed yet
        assert all(torch.equal(v, later.nets.D.state_dict()[k]) for k, v in before.items())
    state = later.state_dict()  # reading the state finishes the update
    assert not later.schedule.updates["D"].collecting
    for net in ("D", "decoder"):
        for (k, x), (_, y) in zip(getattr(now.nets, net).state_dict().items(), state[net].items(), strict=True):
            assert torch.equal(x, y), f"{net}.{k}"
    a, b = now.opt_d.state_dict()["state"], state["optim"]["D"]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)
