import pytest
import torch

from usis.nn.wavelets import dwt, iwt, wavelet_upsample


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 12, 16, 32), (3, 1, 64, 128)])
def test_dwt_iwt_roundtrip_and_energy(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    y = dwt(x)
    assert y.shape == (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2)
    assert (iwt(y) - x).abs().max().item() < 1e-5
    # orthonormal: energy preserved
    assert torch.allclose(y.pow(2).sum(), x.pow(2).sum(), rtol=1e-5)


def test_haar_subbands_by_hand():
    # one 2x2 block [[a, b], [c, d]] = [[1, 2], [3, 4]]
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    ll, lh, hl, hh = dwt(x).flatten().tolist()
    assert ll == pytest.approx((1 + 2 + 3 + 4) / 2)
    assert lh == pytest.approx((1 + 2 - 3 - 4) / 2)  # rows differ
    assert hl == pytest.approx((1 - 2 + 3 - 4) / 2)  # columns differ
    assert hh == pytest.approx((1 - 2 - 3 + 4) / 2)


def test_constant_image_has_only_low_band():
    y = dwt(torch.full((1, 3, 8, 8), 0.7))
    assert y[:, 3:].abs().max().item() < 1e-7
    assert torch.allclose(y[:, :3], torch.full_like(y[:, :3], 1.4))


def test_transforms_are_differentiable():
    # each one's backward is the other (the adjoint of an orthonormal transform is its inverse); twice for R1
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwt, (x,))
    assert torch.autograd.gradgradcheck(dwt, (x,))
    y = torch.randn(1, 8, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(iwt, (y,))
    assert torch.autograd.gradgradcheck(iwt, (y,))


def _haar_by_definition(x):
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.cat(((a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2), dim=1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_butterfly_is_the_haar_transform_in_either_memory_format(channels_last):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 6, 10, dtype=torch.float64, generator=g)
    y = torch.randn(2, 12, 3, 4, dtype=torch.float64, generator=g)
    if channels_last:
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert torch.allclose(dwt(x), _haar_by_definition(x), rtol=0, atol=1e-12)
    assert dwt(x).is_contiguous(memory_format=fmt) and iwt(y).is_contiguous(memory_format=fmt)
    assert torch.allclose(_haar_by_definition(iwt(y)), y, rtol=0, atol=1e-12)  # iwt inverts the definition
    # the backward of each is the other: the gradient of <dwt(x), w> is iwt(w)
    xg = x.clone().requires_grad_(True)
    w = torch.randn(2, 20, 3, 5, dtype=torch.float64, generator=g)
    (dwt(xg) * w).sum().backward()
    assert torch.allclose(xg.grad, iwt(w), rtol=0, atol=1e-12)


def test_wavelet_upsample_doubles_resolution_and_keeps_smooth_images():
    x = torch.full((1, 3, 8, 8), 0.5)
    up = wavelet_upsample(dwt(x))
    assert up.shape == (1, 12, 8, 8)
    assert torch.allclose(iwt(up), torch.full((1, 3, 16, 16), 0.5), atol=1e-6)


def test_odd_sizes_are_rejected():
    with pytest.raises(ValueError, match="even"):
        dwt(torch.zeros(1, 3, 7, 8))
    with pytest.raises(ValueError, match="4C"):
        iwt(torch.zeros(1, 6, 4, 4))
