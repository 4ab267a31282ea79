"""The realism measure: the classifier two-sample test (usis.metrics.c2st)."""

import pytest
import torch

from usis.data.synthetic import SyntheticPaired, labels_to_rgb
from usis.metrics.c2st import as_written, chance_spread, classifier_two_sample_test

N = 64  # images per set: the held-out accuracy at chance has a spread of 1 / 16


def _photos(n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticPaired(n, 64, 128, seed=seed, split=split)
    items = [data[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


@pytest.fixture(scope="module")
def photos():
    torch.set_num_threads(1)
    a, _ = _photos(N, 11, "val")
    b, labels = _photos(N, 12, "test")
    return a, b, labels


def test_real_against_real_is_at_chance(photos):
    a, b, _ = photos
    for seed in (0, 1):
        res = classifier_two_sample_test(a, as_written(b), steps=120, seed=seed)
        assert abs(res["c2st"] - 0.5) <= 3 * chance_spread(N), res  # two independent sets of photos
        assert res["c2st_n"] == N


def test_palette_images_are_caught_and_the_result_is_deterministic(photos):
    a, _, labels = photos
    palette = torch.from_numpy(labels_to_rgb(labels.numpy())).permute(0, 3, 1, 2).contiguous()  # uint8
    res = classifier_two_sample_test(a, palette, steps=120, seed=0)
    assert res["c2st"] >= 0.95 and res["c2st_loss"] < 0.1, res
    assert classifier_two_sample_test(a, palette, steps=120, seed=0) == res


def test_bad_input_is_one_clear_message(photos):
    a, b, _ = photos
    with pytest.raises(ValueError, match="one size"):
        classifier_two_sample_test(a, b[:, :, :32])
    with pytest.raises(ValueError, match="at least 4"):
        classifier_two_sample_test(a[:3], b[:3])
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        classifier_two_sample_test(a[:, :1], b)


def test_a_trained_generator_is_harder_to_tell_from_photos_than_an_untrained_one(tmp_path):
    """The ordering by steps, on a tiny checkpoint this test trains: both are always caught (accuracy 1.0),
    but the classifier is less sure of the trained generator's images (a higher held-out loss)."""
    from conftest import tiny_cfg

    from usis.train.trainer import Trainer

    n = 48
    real = torch.stack([SyntheticPaired(n, 64, 64, seed=11, split="val")[i]["image"] for i in range(n)])
    maps = torch.stack([SyntheticPaired(n, 64, 64, seed=12, split="test")[i]["label"] for i in range(n)])
    tr = Trainer(tiny_cfg("data.synthetic_train=64"), tmp_path, progress=False)
    losses = {}
    for steps in (0, 300):
        if steps:
            tr.fit(steps, eval_at_start=False)
        tr.refresh_ema_bn()
        fake = as_written(tr.generate(maps, list(range(n))))
        losses[steps] = [classifier_two_sample_test(real, fake, steps=120, seed=s)["c2st_loss"] for s in (0, 1)]
    assert sum(losses[300]) > 1.2 * sum(losses[0]), losses
