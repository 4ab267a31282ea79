"""The USIS-Wavelet generator: shapes, determinism, gradients, its upsampling by hand, and a trained one
saving, loading and generating through every entry point."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import NET_CLASSES, NET_SIZES, TINY, random_onehot, set_args, tiny_cfg
from PIL import Image

from usis.nn import BaseGenerator, Generator, WaveletGenerator, one_hot_labels
from usis.nn.build import build_generator, build_networks
from usis.nn.layers import converge_spectral_norm
from usis.nn.wavelets import wavelet_upsample

SIZES, C = NET_SIZES, NET_CLASSES


def small(**kw):
    args = dict(ch=1, z_dim=8, spade_hidden=8)
    args.update(kw)
    return WaveletGenerator(C, **args)


onehot = random_onehot


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("n", [1, 2])
def test_shapes_and_range_at_the_four_sizes(h, w, n):
    G = small()
    x = G(onehot(n, h, w))
    assert x.shape == (n, 3, h, w)
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.01  # not a constant image


def test_widths_follow_the_reference_layout():
    G = small(ch=2)
    assert G.fc.out_channels == 4 * 16 * 2  # 4 x [16, 16, 16, 8, 4, 2, 1] x ch
    assert [b.conv_1.out_channels for b in G.body] == [4 * w * 2 for w in (16, 16, 8, 4, 2, 1)]
    assert G.to_rgb.out_channels == 12  # the four Haar sub-bands of RGB at half size
    # the SPADE norms act on the image-space channels (a quarter of the coefficients)
    assert G.body[3].norm_0.gamma.out_channels == 4 * 8 * 2 // 4  # block 3 takes 4 x 8 x ch coefficients


def test_same_seed_same_image_other_seed_other_image():
    G = small().eval()
    m = onehot(2, 64, 128)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    a, b = G(m, z), G(m, z.clone())
    assert torch.equal(a, b)
    z2 = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    assert (G(m, z2) - a).abs().mean() > 1e-3
    # a seeded draw through the trainer's noise path is reproducible too
    torch.manual_seed(5)
    c = G(m)
    torch.manual_seed(5)
    assert torch.equal(c, G(m))


def test_a_noise_map_gives_regions_their_own_style():
    torch.manual_seed(0)
    G = small()
    converge_spectral_norm(G)  # as build_networks does: unsaturated at initialisation
    G.eval()
    m = onehot(1, 64, 128)
    z = torch.randn(1, 8)
    zmap = z[:, :, None, None].expand(1, 8, 64, 128).clone()
    assert torch.allclose(G(m, zmap), G(m, z), atol=1e-6)  # a constant map equals the broadcast vector
    zmap[:, :, :, 64:] = torch.randn(1, 8, 1, 1)  # new style for the right half only
    d = (G(m, z) - G(m, zmap)).abs()
    left, right = d[..., :32].mean(), d[..., 96:].mean()
    assert right > 1e-3 and right > 4 * left  # the changed half changes; the other one hardly
    assert G(m, torch.randn(1, 8, 4, 4)).shape == (1, 3, 64, 128)  # a coarse map is resized


@pytest.mark.parametrize("shortcut_norm", [True, False])
def test_every_parameter_gets_a_gradient(shortcut_norm):
    torch.manual_seed(0)
    G = small(shortcut_norm=shortcut_norm, pixel_noise=2)
    G(onehot(2, 64, 128)).square().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    # without the shortcut norm, no norm is built for it (the reference builds one and never uses it)
    has_norm_s = any(".norm_s." in name for name, _ in G.named_parameters())
    assert has_norm_s == shortcut_norm


def _iwt_by_hand(y):
    c = y.shape[0] // 4
    ll, lh, hl, hh = y[:c], y[c:2 * c], y[2 * c:3 * c], y[3 * c:]
    h, w = y.shape[1:]
    x = np.zeros((c, 2 * h, 2 * w))
    for i in range(h):
        for j in range(w):
            x[:, 2 * i, 2 * j] = (ll + lh + hl + hh)[:, i, j] / 2
            x[:, 2 * i, 2 * j + 1] = (ll + lh - hl - hh)[:, i, j] / 2
            x[:, 2 * i + 1, 2 * j] = (ll - lh + hl - hh)[:, i, j] / 2
            x[:, 2 * i + 1, 2 * j + 1] = (ll - lh - hl + hh)[:, i, j] / 2
    return x


def _bilinear_x2_by_hand(x):
    """align_corners=False: output pixel i samples the input at (i + 0.5) / 2 - 0.5, clamped at the border."""
    c, h, w = x.shape
    out = np.zeros((c, 2 * h, 2 * w))

    def taps(i, n):
        s = max((i + 0.5) / 2 - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n - 1)
        i1 = min(i0 + 1, n - 1)
        return i0, i1, s - i0

    for i in range(2 * h):
        a0, a1, fa = taps(i, h)
        for j in range(2 * w):
            b0, b1, fb = taps(j, w)
            out[:, i, j] = ((1 - fa) * (1 - fb) * x[:, a0, b0] + (1 - fa) * fb * x[:, a0, b1]
                            + fa * (1 - fb) * x[:, a1, b0] + fa * fb * x[:, a1, b1])
    return out


def _dwt_by_hand(x):
    c, h, w = x.shape
    out = np.zeros((4 * c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            a, b = x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1]
            cc, d = x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]
            out[:c, i, j] = (a + b + cc + d) / 2
            out[c:2 * c, i, j] = (a + b - cc - d) / 2
            out[2 * c:3 * c, i, j] = (a - b + cc - d) / 2
            out[3 * c:, i, j] = (a - b - cc + d) / 2
    return out


def test_wavelet_domain_upsampling_equals_iwt_upsample_dwt_by_hand():
    y = torch.randn(1, 8, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expect = _dwt_by_hand(_bilinear_x2_by_hand(_iwt_by_hand(y[0].numpy())))
    got = wavelet_upsample(y)[0].numpy()
    assert got.shape == (8, 6, 10)
    np.testing.assert_allclose(got, expect, atol=1e-12)
    # and it is not the identity or a nearest-neighbour copy of the coefficients
    assert np.abs(got - np.repeat(np.repeat(y[0].numpy(), 2, 1), 2, 2)).max() > 0.1


def test_sizes_the_generator_cannot_take_are_clear_errors():
    from usis.errors import ConfigError
    from usis.nn.build import check_image_size

    with pytest.raises(ValueError, match="multiples of 64"):
        small()(onehot(1, 32, 64))
    with pytest.raises(ValueError, match="label channels"):
        small()(torch.zeros(1, C + 2, 64, 64))
    with pytest.raises(ConfigError, match="multiples of 64"):
        check_image_size(tiny_cfg("model.g_type=wavelet", "data.height=96"))


def test_config_builds_it_and_stored_class_finds_it(tmp_path):
    cfg = tiny_cfg("model.g_type=wavelet", "model.g_ch=1")
    G = build_generator(cfg)
    assert isinstance(G, WaveletGenerator) and G.config["ch"] == 1 and G.config["pixel_noise"] == 4
    assert isinstance(build_networks(cfg).G_ema, WaveletGenerator)
    G.save_pretrained(tmp_path / "g")
    H = BaseGenerator.from_pretrained(tmp_path / "g")  # the base class finds the stored subclass
    assert type(H) is WaveletGenerator
    m = one_hot_labels(torch.zeros(1, 64, 64, dtype=torch.long), cfg.data.num_classes)
    z = torch.randn(1, cfg.model.z_dim)
    noise = torch.randn(1, 4, 64, 64)
    assert torch.equal(G.eval()(m, z, noise), H(m, z, noise))
    from usis.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds a WaveletGenerator, not a Generator"):
        Generator.from_pretrained(tmp_path / "g")
    from usis.config import validate
    from usis.errors import ConfigError

    with pytest.raises(ConfigError, match="model.g_type='stylegan': choose spade or wavelet"):
        validate(tiny_cfg("model.g_type=stylegan"))


def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "usis.cli", *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_a_trained_wavelet_generator_saves_loads_resumes_and_generates(tmp_path):
    run = tmp_path / "run"
    extra = set_args(TINY + ["model.g_type=wavelet", "model.g_ch=1", "train.ckpt_every=3"])
    _cli("train", "--preset", "synthetic", "--out", str(run), "--iters", "3", "--no-progress", *extra)
    _cli("train", "--out", str(run), "--iters", "5", "--resume", "--no-progress")
    state = torch.load(run / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 5 and state["config"]["model"]["g_type"] == "wavelet"
    assert all(torch.isfinite(v).all() for v in state["G_ema"].values() if v.is_floating_point())

    labels = tmp_path / "labels"
    labels.mkdir()
    ids = np.zeros((64, 64), np.uint8)
    ids[32:] = 3
    Image.fromarray(ids).save(labels / "a.png")
    out = tmp_path / "gen"
    _cli("generate", "--checkpoint", str(run / "checkpoints/latest.pt"), "--labels", str(labels), "--out",
         str(out), "--n", "2")
    from_ckpt = sorted(out.rglob("*.png"))
    assert len([p for p in from_ckpt if "seed" in p.name]) == 2

    _cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "exported"))
    meta = json.loads((tmp_path / "exported/config.json").read_text())
    assert meta["class"] == "WaveletGenerator"
    out2 = tmp_path / "gen2"
    _cli("generate", "--checkpoint", str(tmp_path / "exported"), "--labels", str(labels), "--out", str(out2),
         "--n", "2")
    for p in from_ckpt:  # the export generates exactly what the checkpoint does
        q = out2 / p.relative_to(out)
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q))), p.name

    from usis import USISPipeline

    pipe = USISPipeline.from_pretrained(tmp_path / "exported", device="cpu")
    assert isinstance(pipe.generator, WaveletGenerator)
    a, b = pipe(ids, seeds=[0, 1])
    assert a.size == (64, 64) and np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 0.5



def test_info_gives_the_reference_size_at_its_run_script_config():
    # ResidualWaveletGenerator_1 of the reference (usis.sh: --netG wavelet --channels_G 16; 35 Cityscapes
    # classes, 64-d noise) instantiated and counted: 55,720,940 parameters (benchmarks/reference_wavelet_g.py)
    info = json.loads(_cli("info", "--preset", "cityscapes", "--set", "model.g_type=wavelet", "--set",
                           "model.g_ch=16", "--json").stdout)
    assert info["params"]["generator"] == 55_720_940
    assert info["config"]["model"]["g_type"] == "wavelet"


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("sn", [True, False])
def test_the_spade_generators_options_apply(norm, sn):
    G = small(norm=norm, spectral_norm=sn, noise_3d=False).eval()
    assert G.z_dim == 0 and G.fc.in_channels == C  # no noise channels in the conditioning
    m = onehot(2, 64, 128)
    a = G(m)
    assert a.shape == (2, 3, 64, 128) and torch.equal(a, G(m))  # without 3D noise: one image per label map
    assert any(hasattr(mod, "weight_orig") for mod in G.modules()) == sn
