"""usis.nn.augment: each operation pinned to its plain definition, differentiable, per image, in either memory
format; the policies the config accepts."""

import pytest
import torch

from usis.config import get_preset, validate
from usis.errors import ConfigError
from usis.nn.augment import augment, color, cutout, parse_policy, translation


def images(n=4, c=3, h=16, w=24, seed=0, dtype=torch.float64):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def shifted(x, dy, dx):
    """The plain shift: out[:, y, x] = x[:, y - dy, x - dx] where that exists, else 0."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for y in range(h):
        for xx in range(w):
            if 0 <= y - dy < h and 0 <= xx - dx < w:
                out[:, y, xx] = x[:, y - dy, xx - dx]
    return out


def test_policy_parsing_orders_and_names_what_is_unknown():
    assert parse_policy("") == ()
    assert parse_policy(" cutout, color ,translation") == ("color", "translation", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation flip"):
        parse_policy("color,flip")
    x = images()
    assert augment(x, "") is x


def test_translation_is_a_whole_pixel_shift_within_an_eighth_per_image():
    x = images(n=8, h=16, w=24)
    out = translation(x, torch.Generator().manual_seed(1))
    found = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-3, 4) if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(hits) == 1, f"image {i} is not one shift of at most 2 x 3 pixels"
        found.append(hits[0])
    assert len(set(found)) > 1  # drawn per image


def test_cutout_zeroes_one_rectangle_of_at_most_half_by_half_and_keeps_the_rest():
    x = images(n=8, h=16, w=24) * 0.5 + 0.6  # no zeros of its own
    out = cutout(x, torch.Generator().manual_seed(2))
    for i in range(len(x)):
        hole = (out[i] == 0).all(0)
        assert torch.equal(out[i][:, ~hole], x[i][:, ~hole])
        rows, cols = hole.any(1).nonzero()[:, 0], hole.any(0).nonzero()[:, 0]
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 12
        assert hole[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
        assert len(rows) == 8 or rows.min() == 0 or rows.max() == 15  # clipped only at the border


def test_color_is_brightness_saturation_contrast_with_factors_drawn_per_image():
    x = images(n=3)
    g = torch.Generator().manual_seed(3)
    out = color(x, g)
    # the same draws in the same order, by hand: three per-image factors, one after another
    g = torch.Generator().manual_seed(3)
    b = torch.rand(3, 1, 1, 1, generator=g, dtype=x.dtype)
    s = torch.rand(3, 1, 1, 1, generator=g, dtype=x.dtype)
    c = torch.rand(3, 1, 1, 1, generator=g, dtype=x.dtype)
    y = x + b - 0.5
    y = y.mean(1, keepdim=True) + (y - y.mean(1, keepdim=True)) * 2 * s
    y = y.mean((1, 2, 3), keepdim=True) + (y - y.mean((1, 2, 3), keepdim=True)) * (c + 0.5)
    torch.testing.assert_close(out, y)
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("op", [color, translation, cutout])
def test_each_operation_is_differentiable(op):
    x = images(n=2, h=8, w=8).requires_grad_(True)
    torch.autograd.gradcheck(lambda t: op(t, torch.Generator().manual_seed(4)), (x,))


def test_a_policy_keeps_the_memory_format_and_the_values():
    x = images(n=2, dtype=torch.float32)
    a = augment(x, "color,translation,cutout", torch.Generator().manual_seed(5))
    b = augment(x.contiguous(memory_format=torch.channels_last), "color,translation,cutout",
                torch.Generator().manual_seed(5))
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b)


def test_the_config_refuses_unknown_views_and_a_shift_for_s():
    cfg = get_preset("synthetic")
    cfg.train.d_augment = "color,translation,cutout"
    cfg.train.s_augment = "color"
    validate(cfg)
    cfg.train.d_augment = "colour"
    with pytest.raises(ConfigError, match="train.d_augment='colour': unknown augmentation colour"):
        validate(cfg)
    cfg.train.d_augment = ""
    cfg.train.s_augment = "translation"
    with pytest.raises(ConfigError, match="train.s_augment='translation': only color"):
        validate(cfg)
