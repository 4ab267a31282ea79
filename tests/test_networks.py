import pytest
import torch
from conftest import NET_CLASSES, NET_SIZES, random_onehot

from usis.losses import (
    class_balanced_ce,
    d_logistic_loss,
    g_nonsaturating_loss,
    l1_reconstruction,
    r1_penalty,
)
from usis.nn import Decoder, Generator, Segmenter, build_discriminator, one_hot_labels

SIZES, C = NET_SIZES, NET_CLASSES


def small_generator(**kw):
    args = dict(ch=2, z_dim=8, spade_hidden=8)
    args.update(kw)
    return Generator(C, **args)


onehot = random_onehot


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("n", [1, 2])
def test_generator_and_segmenter_shapes(h, w, n):
    G, S = small_generator(), Segmenter(C, ch=2)
    x = G(onehot(n, h, w))
    assert x.shape == (n, 3, h, w)
    assert x.min() >= -1 and x.max() <= 1
    assert S(x).shape == (n, C, h, w)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("kind", ["wavelet", "whole", "patch"])
def test_discriminator_and_decoder_shapes(h, w, n, kind):
    D = build_discriminator(kind, h, w, ch=4, max_ch=16)
    dec = Decoder(D.feature_channels, D.feature_strides, max_ch=16)
    x = torch.rand(n, 3, h, w) * 2 - 1
    logits, feats = D(x, return_features=True)
    if kind == "patch":
        assert logits.shape == (n, 1, h // 8, w // 8)
    else:
        assert logits.shape == (n,)  # whole image: one score per image
    assert [f.shape[1] for f in feats] == D.feature_channels
    assert [h // f.shape[2] for f in feats] == D.feature_strides
    rec = dec(feats)
    assert rec.shape == (n, 3, h, w) and rec.abs().max() <= 1


def test_same_noise_same_image_different_noise_different_image():
    torch.manual_seed(0)
    G = small_generator().eval()
    m = onehot(2, 64, 64)
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    a, b, c = G(m, z1), G(m, z1.clone()), G(m, z2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-4


def test_spatial_noise_gives_regions_their_own_style():
    torch.manual_seed(0)
    G = small_generator().eval()
    m = onehot(1, 64, 64)
    z = torch.randn(1, 8)
    zmap = z[:, :, None, None].expand(1, 8, 64, 64).clone()
    assert torch.allclose(G(m, zmap), G(m, z), atol=1e-6)  # a constant map equals the broadcast vector
    zmap[:, :, :, 32:] = torch.randn(1, 8, 1, 1)  # new style for the right half only
    x0, x1 = G(m, z), G(m, zmap)
    left = (x0 - x1)[..., :16].abs().mean()
    right = (x0 - x1)[..., 40:].abs().mean()
    assert right > 1e-4 and right > left  # early layers mix globally; the changed half changes most
    # a coarse noise map (e.g. one per region, 4 x 4 cells) is resized to the output
    assert G(m, torch.randn(1, 8, 4, 4)).shape == (1, 3, 64, 64)


def test_pixel_noise_changes_fine_detail_and_is_reproducible():
    torch.manual_seed(0)
    G = small_generator(pixel_noise=2).eval()
    m = onehot(2, 64, 64)
    z = torch.randn(2, 8)
    n1 = G.sample_pixel_noise(2, 64, 64, generator=torch.Generator().manual_seed(1))
    n2 = G.sample_pixel_noise(2, 64, 64, generator=torch.Generator().manual_seed(2))
    assert n1.shape == (2, 2, 64, 64)
    assert torch.equal(G(m, z, n1), G(m, z, n1.clone()))
    assert (G(m, z, n1) - G(m, z, n2)).abs().mean() > 1e-4
    assert not torch.equal(G(m, z), G(m, z))  # no map given: fresh noise each call
    with pytest.raises(ValueError, match="pixel noise"):
        G(m, z, torch.zeros(2, 3, 64, 64))
    assert small_generator().sample_pixel_noise(2, 64, 64) is None


def test_without_3d_noise_the_output_is_deterministic():
    G = small_generator(noise_3d=False).eval()
    m = onehot(1, 64, 64)
    assert torch.equal(G(m), G(m))


def test_generator_rejects_bad_inputs_with_clear_messages():
    G = small_generator()
    with pytest.raises(ValueError, match="label channels"):
        G(torch.zeros(1, C + 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        G(onehot(1, 48, 64))
    with pytest.raises(ValueError, match="noise"):
        G(onehot(1, 64, 64), torch.zeros(1, 8, 2))


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_generator_norm_options(norm):
    G = small_generator(norm=norm, spectral_norm=False)
    assert G(onehot(2, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("kind", ["wavelet", "whole", "patch"])
def test_one_backward_through_all_losses_reaches_every_parameter(kind):
    torch.manual_seed(0)
    h, w = 64, 128
    G, S = small_generator(), Segmenter(C, ch=2)
    D = build_discriminator(kind, h, w, ch=4, max_ch=16)
    dec = Decoder(D.feature_channels, D.feature_strides, max_ch=16)
    labels = torch.randint(0, C, (2, h, w))
    real = (torch.rand(2, 3, h, w) * 2 - 1).requires_grad_(True)
    fake = G(one_hot_labels(labels, C))
    loss_g = class_balanced_ce(S(fake), labels) + g_nonsaturating_loss(D(fake))
    loss_s = class_balanced_ce(S(fake.detach()), labels)
    real_logits, feats = D(real, return_features=True)
    loss_d = d_logistic_loss(real_logits, D(fake.detach())) + l1_reconstruction(dec(feats), real)
    loss_d = loss_d + r1_penalty(real_logits, real)
    (loss_g + loss_s + loss_d).backward()
    for name, net in {"G": G, "S": S, "D": D, "decoder": dec}.items():
        for pname, p in net.named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got a zero gradient"


def test_minibatch_stddev_handles_any_batch_size():
    D = build_discriminator("wavelet", 64, 64, ch=4, max_ch=16)
    for n in (1, 2, 3, 5, 6):
        assert D(torch.zeros(n, 3, 64, 64)).shape == (n,)


def _sigma_error(G) -> float:
    conv = G.body[0].conv_0
    sigma_true = torch.linalg.matrix_norm(conv.weight_orig.flatten(1), ord=2)
    sigma_est = conv.weight_u @ conv.weight_orig.flatten(1) @ conv.weight_v
    return abs(sigma_est.item() / sigma_true.item() - 1)


def test_spectral_norm_estimates_are_converged_at_construction(monkeypatch):
    # build_networks itself converges the power iteration (nothing here calls converge_spectral_norm)
    from conftest import tiny_cfg

    from usis.nn import build as trainer

    torch.manual_seed(0)
    G = trainer.build_networks(tiny_cfg()).G
    assert _sigma_error(G) < 0.02  # 10 power iterations (a 1e-3 match takes ~50 on this small layer)
    G.eval()
    G(one_hot_labels(torch.zeros(1, 64, 64, dtype=torch.long), G.num_classes))  # the hook renormalises at each forward
    # in eval mode (no further power iteration) the normalised weight now has spectral norm ~1
    conv = G.body[0].conv_0
    assert torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2).item() == pytest.approx(1.0, rel=0.02)
    # and the check can fail: without the convergence step the estimate is far off
    monkeypatch.setattr(trainer, "converge_spectral_norm", lambda net: None)
    torch.manual_seed(0)
    assert _sigma_error(trainer.build_networks(tiny_cfg()).G) > 0.1


@pytest.mark.parametrize("kernel", [3, 1])
def test_our_spectral_norm_is_torchs_forward_with_its_gradient(kernel):
    # maybe_sn keeps torch.nn.utils.spectral_norm's parameters, buffers and forward (bit for bit on an NCHW
    # weight, training and eval mode) and replaces only its gradient by the closed form: the same to float64
    # rounding, first and second order (R1's double backward), and in either memory format
    import copy

    from torch import nn
    from torch.nn.utils import spectral_norm

    from usis.nn.layers import SpectralNorm, maybe_sn

    base = nn.Conv2d(5, 8, kernel).double()
    torch.manual_seed(1)
    ref = spectral_norm(copy.deepcopy(base))
    torch.manual_seed(1)
    ours = maybe_sn(copy.deepcopy(base), True)
    assert any(isinstance(h, SpectralNorm) for h in ours._forward_pre_hooks.values())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    nhwc = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64, requires_grad=True)

    def grads(m, create_graph=False):
        y = m(x)
        if create_graph:  # R1-like: the gradient of a function of the input gradient
            (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
            return y, torch.autograd.grad(gx.square().sum(), m.weight_orig)[0]
        return y, torch.autograd.grad(y.square().sum(), m.weight_orig)[0]

    for mode in ("train", "train", "eval"):
        for m in (ref, ours, nhwc):
            m.train(mode == "train")
        for second in (False, True):
            (y_ref, g_ref), (y, g), (y_cl, g_cl) = grads(ref, second), grads(ours, second), grads(nhwc, second)
            assert torch.equal(y, y_ref) and torch.equal(ours.weight_u, ref.weight_u)
            assert torch.equal(ours.weight_v, ref.weight_v)
            assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-12)
            assert torch.allclose(y_cl, y_ref, rtol=1e-10, atol=1e-12)
            assert torch.allclose(nhwc.weight_v, ref.weight_v, rtol=1e-10, atol=1e-12)
            assert torch.allclose(g_cl, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w: _sn_of(ours, w), (ours.weight_orig,))


def _sn_of(module, weight):
    """The spectrally normalised ``weight`` as ``module``'s hook computes it (eval mode: fixed u, v)."""
    hook = next(iter(module._forward_pre_hooks.values()))
    saved = module.weight_orig
    try:
        module._parameters["weight_orig"] = weight
        return hook.compute_weight(module, do_power_iteration=False)
    finally:
        module._parameters["weight_orig"] = saved


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad,stride", [((2, 2), 1), ((2, 1), 1), ((1, 1), 2), ((0, 0), 2)])
def test_the_blur_with_its_padding_is_the_padded_depthwise_fir_filter(pad, stride, channels_last):
    # on a CPU the blur (padding included) is two products with banded matrices; it must be F.pad and the
    # grouped convolution with the normalised [1, 3, 3, 1] kernel, keep the memory format, and differentiate twice
    import torch.nn.functional as F

    from usis.nn.layers import _blur, _blur_kernel

    shape = (2, 3, 10, 13)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    kernel = _blur_kernel().double()[None, None].repeat(shape[1], 1, 1, 1)
    want = F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), kernel, stride=stride, groups=shape[1])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    got = _blur(x.contiguous(memory_format=fmt), pad, stride)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=fmt)
    assert torch.autograd.gradgradcheck(lambda t: _blur(t.contiguous(memory_format=fmt), pad, stride), (x,))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 10, 13), (1, 5, 9, 9), (3, 2, 4, 4)])
def test_the_separable_blur_is_the_depthwise_fir_filter_and_differentiates_twice(shape, stride):
    # the D's blur (StyleGAN2's [1, 3, 3, 1] FIR) is computed by shifted views, not a convolution; it must be
    # the grouped convolution with the normalised outer-product kernel, and R1 differentiates it twice
    import torch.nn.functional as F

    from usis.nn.layers import _blur_kernel, _depthwise_blur

    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    kernel = _blur_kernel().double()[None, None].repeat(shape[1], 1, 1, 1)
    assert kernel[0, 0].sum() == 1 and kernel[0, 0, 1, 1] == 9 / 64
    want = F.conv2d(x, kernel, stride=stride, groups=shape[1])
    got = _depthwise_blur(x, stride)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: _depthwise_blur(t, stride), (x,))
    nhwc = x.detach().float().contiguous(memory_format=torch.channels_last)
    if shape[1] > 1:
        assert _depthwise_blur(nhwc, stride).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(_depthwise_blur(nhwc, stride), want.float(), atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_conditioning_pyramid_is_nearest_neighbour_resizing(channels_last):
    # exact halvings are strided copies; a size that does not halve (96 / 64) goes through the interpolation
    import torch.nn.functional as F

    from usis.nn.generator import BaseGenerator

    seg = torch.randn(2, 7, 96, 128)
    if channels_last:
        seg = seg.contiguous(memory_format=torch.channels_last)
    segs = BaseGenerator.pyramid(seg, 6)
    assert list(segs) == [(96 >> k, 128 >> k) for k in range(7)]
    for size, t in segs.items():
        assert torch.equal(t, F.interpolate(seg, size=size, mode="nearest")), size
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert t.is_contiguous(memory_format=fmt)


def test_the_patch_head_is_a_second_scale_and_leaves_the_image_head_as_it_was():
    """model.d_patch: (image logits, a logit per 8x8 patch); the image head computes what it did without it, and
    the adversarial losses are the sums over the heads."""
    from usis.losses import d_logistic_loss, g_nonsaturating_loss, r1_penalty
    from usis.nn.discriminator import WaveletDiscriminator

    torch.manual_seed(0)
    plain = WaveletDiscriminator(64, 128, ch=8, max_ch=16)
    torch.manual_seed(0)
    two = WaveletDiscriminator(64, 128, ch=8, max_ch=16, patch=True)
    x = torch.randn(2, 3, 64, 128, requires_grad=True)
    image, patches = two(x)
    assert image.shape == (2,) and patches.shape == (2, 1, 8, 16)
    assert torch.equal(image, plain(x))  # the same encoder and head, drawn first
    y = torch.randn(2, 3, 64, 128)
    fake = two(y)
    torch.testing.assert_close(d_logistic_loss((image, patches), fake),
                               d_logistic_loss(image, fake[0]) + d_logistic_loss(patches, fake[1]))
    torch.testing.assert_close(g_nonsaturating_loss(fake), g_nonsaturating_loss(fake[0]) + g_nonsaturating_loss(fake[1]))
    (grad,) = torch.autograd.grad(image.sum() + patches.sum(), x, retain_graph=True)
    torch.testing.assert_close(r1_penalty((image, patches), x), grad.pow(2).reshape(2, -1).sum(1).mean())
    # train.lambda_d_patch: the patch head's loss (and its logits in R1) times its weight
    w = (1.0, 0.25)
    torch.testing.assert_close(d_logistic_loss((image, patches), fake, w),
                               d_logistic_loss(image, fake[0]) + 0.25 * d_logistic_loss(patches, fake[1]))
    torch.testing.assert_close(g_nonsaturating_loss(fake, w),
                               g_nonsaturating_loss(fake[0]) + 0.25 * g_nonsaturating_loss(fake[1]))
    (grad,) = torch.autograd.grad(image.sum() + 0.25 * patches.sum(), x, retain_graph=True)
    torch.testing.assert_close(r1_penalty((image, patches), x, w), grad.pow(2).reshape(2, -1).sum(1).mean())
    with pytest.raises(ValueError, match="3 head weights for 2 heads"):
        g_nonsaturating_loss(fake, (1.0, 1.0, 1.0))
    # a patch head sees its patch's surroundings, not the whole image: a change far away leaves it as it was
    z = x.detach().clone()
    z[..., :, 96:] += 1.0
    assert torch.equal(two(z)[1][..., :, :6], patches.detach()[..., :, :6])


def test_d_reads_s_reading_beside_the_image():
    """model.d_reads: D takes S's one-hot reading beside the image; the reading changes the logits, the image head's
    layers are those of the plain D (drawn first), and a D built for a reading refuses a call without one (and the
    plain D one with)."""
    from usis.losses import hard_labels
    from usis.nn.discriminator import WaveletDiscriminator

    torch.manual_seed(0)
    plain = WaveletDiscriminator(64, 128, ch=8, max_ch=16)
    torch.manual_seed(0)
    reads = WaveletDiscriminator(64, 128, ch=8, max_ch=16, reads=5)
    assert set(reads.state_dict()) - set(plain.state_dict()) == {k for k in reads.state_dict() if "from_reads" in k}
    x = torch.randn(2, 3, 64, 128)
    r = hard_labels(torch.randn(2, 5, 64, 128))
    other = hard_labels(torch.randn(2, 5, 64, 128))
    assert not torch.allclose(reads(x, r), reads(x, other))
    with torch.no_grad():  # with the reading's layer at zero, D is the plain D
        for p in reads.from_reads.parameters():
            p.zero_()
    torch.testing.assert_close(reads(x, r), plain(x))
    logits, feats = reads(x, r, return_features=True)
    assert logits.shape == (2,) and len(feats) == len(plain.feature_channels)
    with pytest.raises(ValueError, match="built for a reading .* called without one"):
        reads(x)
    with pytest.raises(ValueError, match="built for no reading .* called with one"):
        plain(x, r)
