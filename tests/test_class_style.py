"""model.class_style: some of the noise channels drawn per class region, in training and from seeds."""

import pytest
import torch

from usis.config import get_preset, validate
from usis.errors import ConfigError
from usis.generate import generate_images
from usis.nn import Generator, one_hot_labels
from usis.nn.noise import noise_vector, seeded_noise, style_map

LABELS = torch.tensor([[[1, 1, 2, 2], [3, 3, 2, 2]]])  # 1 x 2 x 4: classes 1, 2, 3


def test_seeded_noise_keeps_the_images_vector_and_takes_the_rest_from_its_classes():
    z = seeded_noise([7], 5, 0, 2, 4, labels=LABELS, num_classes=4, class_style=2)[0][0]
    assert z.shape == (5, 2, 4)
    image = noise_vector(7, 5)
    assert torch.equal(z[:3], image[:3, None, None].expand(3, 2, 4))  # the image's own, everywhere
    assert torch.equal(z[3:], style_map(LABELS[0], 7, 5, 4)[3:])  # the last two: the class's, from the seed
    assert torch.equal(z[3:, 0, 0], z[3:, 0, 1]) and not torch.equal(z[3:, 0, 0], z[3:, 0, 2])
    plain = seeded_noise([7], 5, 0, 2, 4)[0][0]
    assert torch.equal(plain, image)  # class_style 0: the paper's vector


def test_training_draws_a_vector_per_class_in_the_last_channels():
    G = Generator(4, ch=2, z_dim=5, spade_hidden=4, class_style=2)
    seen = []
    G.fc.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m = one_hot_labels(torch.tensor([[[1, 1, 2, 2] * 8] * 32, [[3, 3, 1, 1] * 8] * 32]), 4)
    G(m)
    z = G.conditioning(m)[:, :5]  # a second draw, at full size
    for i in range(2):
        flat = z[i].reshape(5, -1)
        assert torch.allclose(flat[:3], flat[:3, :1].expand(3, flat.shape[1]))  # one vector per image
        labels = m[i].argmax(0).reshape(-1)
        for c in labels.unique():
            region = flat[3:, labels == c]
            assert torch.allclose(region, region[:, :1].expand_as(region))  # one per class region
        assert len({tuple(flat[3:, labels == c][:, 0].tolist()) for c in labels.unique()}) == 2
    assert not torch.allclose(z[0, 3:, 0, 0], z[1, 3:, 0, 0])
    assert seen  # the conditioning reached the network


def test_a_class_style_generator_generates_from_seeds_reproducibly():
    torch.manual_seed(0)
    G = Generator(4, ch=2, z_dim=4, spade_hidden=4, class_style=2).eval()
    labels = torch.tensor([[[1, 2, 3, 1] * 8] * 32])
    a = generate_images(G, labels, [3])
    assert torch.equal(a, generate_images(G, labels, [3]))
    assert not torch.equal(a, generate_images(G, labels, [4]))
    G.class_style = 0  # the same weights taking the image's vector everywhere: other images
    assert not torch.equal(a, generate_images(G, labels, [3]))


def test_the_config_and_the_generator_refuse_more_than_the_noise_channels():
    cfg = get_preset("synthetic")
    cfg.model.class_style = 4
    validate(cfg)
    cfg.model.class_style = 9
    with pytest.raises(ConfigError, match="model.class_style=9"):
        validate(cfg)
    cfg.model.class_style, cfg.model.g_type = 2, "wavelet"
    with pytest.raises(ConfigError, match="SPADE generator"):
        validate(cfg)
    with pytest.raises(ValueError, match="class_style=3"):
        Generator(4, ch=2, z_dim=2, class_style=3)
