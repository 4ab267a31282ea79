"""model.s_local: S as a local reader (issue 31's candidate): each pixel read from its (2L+1)-pixel square only."""

import math

import pytest
import torch
from conftest import assert_identical, tiny_cfg, whole_and_resumed

from usis.nn.segmenter import Segmenter
from usis.train.trainer import Trainer


@pytest.mark.parametrize("layers", [1, 3])
def test_each_pixel_is_read_from_its_square_and_nothing_beyond(layers):
    torch.manual_seed(0)
    S = Segmenter(5, ch=2, spectral_norm=False, local=layers).eval()
    x = torch.randn(1, 3, 24, 40)
    y, (r, c) = S(x), (12, 20)
    assert y.shape == (1, 5, 24, 40)
    far, near = x.clone(), x.clone()
    far[..., r, c + layers + 1] += 5  # just outside the window of pixel (r, c)
    far[..., r + layers + 1, c] += 5
    near[..., r - layers, c + layers] += 5  # its window's corner
    assert torch.equal(S(far)[..., r, c], y[..., r, c])
    assert not torch.equal(S(near)[..., r, c], y[..., r, c])
    # any size (no down-sampling); the U-Net still refuses sizes off its multiple
    assert S(torch.randn(1, 3, 7, 9)).shape == (1, 5, 7, 9)
    with pytest.raises(ValueError, match="multiples of 64"):
        Segmenter(5, ch=2)(torch.randn(1, 3, 7, 9))


def test_training_with_a_local_reader_moves_every_network_and_resumes_exactly(tmp_path):
    tr = Trainer(tiny_cfg("model.s_local=2"), tmp_path / "a", progress=False)
    assert tr.nets.S.local == 2 and not hasattr(tr.nets.S, "down")
    before = [p.detach().clone() for p in tr.nets.S.parameters()]
    losses = tr.train_step(tr.loaders.next_labels()["label"], tr.loaders.next_photos()["image"])
    assert all(math.isfinite(v) for v in losses.values())
    assert all(not torch.equal(p0, p) for p0, p in zip(before, tr.nets.S.parameters(), strict=True))
    sa, sb = whole_and_resumed(tmp_path / "r", "model.s_local=2")
    assert_identical(sa, sb)


def test_a_negative_depth_is_a_config_error():
    from usis.config import validate
    from usis.errors import ConfigError

    with pytest.raises(ConfigError, match="model.s_local=-1"):
        validate(tiny_cfg("model.s_local=-1"))
