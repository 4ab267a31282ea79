"""The procedural benchmark (usis.data.synthetic) and its evaluator (usis.metrics.synthetic_eval)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from usis.data import synthetic as S
from usis.data.synthetic import rendering as render_mod
from usis.metrics import synthetic_eval as E

H, W = 64, 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU work runs faster single-threaded on shared 2-core CI machines (no thread sync stalls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- #
# Data
# ---------------------------------------------------------------------------------------------------- #


def test_class_table():
    assert S.NUM_CLASSES == 10 and S.DONTCARE == 0
    assert len(S.CLASS_NAMES) == len(S.PALETTE) == S.NUM_CLASSES
    assert S.CLASS_NAMES[0] == "unlabeled"
    assert {"sky", "road", "building", "tree", "car", "sidewalk", "pole", "person", "sign"} <= set(S.CLASS_NAMES)
    assert len(set(S.PALETTE)) == S.NUM_CLASSES  # every class has its own colour
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in S.PALETTE)


def test_items_are_deterministic_and_independent_of_access_order():
    a = S.SyntheticPaired(6, seed=3)
    forward = [a[i] for i in range(6)]
    b = S.SyntheticPaired(6, seed=3)
    backward = [b[i] for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"])
        assert x["path"] == y["path"]
    assert torch.equal(S.SyntheticLabels(4, seed=3)[2]["label"], S.SyntheticLabels(9, seed=3)[2]["label"])
    assert torch.equal(S.SyntheticPhotos(4, seed=3)[-1]["image"], S.SyntheticPhotos(4, seed=3)[3]["image"])
    # A different seed gives different data.
    assert not torch.equal(S.SyntheticLabels(1, seed=4)[0]["label"], S.SyntheticLabels(1, seed=3)[0]["label"])


def test_memory_cache_returns_the_same_items_and_stays_private():
    cached, plain = S.SyntheticPaired(3, seed=2, cache=True), S.SyntheticPaired(3, seed=2)
    first = cached[1]
    assert torch.equal(first["image"], plain[1]["image"])
    first["image"].zero_()  # a caller's in-place edit must not leak into the cache
    assert torch.equal(cached[1]["image"], plain[1]["image"])
    assert torch.equal(cached[1]["label"], plain[1]["label"])


def test_item_format_and_paths():
    lab = S.SyntheticLabels(3, split="val")[1]
    assert set(lab) == {"label", "path"} and lab["path"] == "synthetic://val/labels/1"
    assert lab["label"].dtype == torch.int64 and lab["label"].shape == (H, W)
    img = S.SyntheticPhotos(3)[2]
    assert set(img) == {"image", "path"} and img["path"] == "synthetic://train/photos/2"
    assert img["image"].dtype == torch.float32 and img["image"].shape == (3, H, W)
    pair = S.SyntheticPaired(3)[0]
    assert set(pair) == {"label", "image", "path"}
    with pytest.raises(IndexError):
        S.SyntheticLabels(3)[3]
    with pytest.raises(ValueError, match="split"):
        S.SyntheticLabels(3, split="training")


@pytest.mark.parametrize("size", [(64, 64), (32, 96), (128, 256)])
def test_other_sizes(size):
    h, w = size
    pair = S.SyntheticPaired(2, h, w)[1]
    assert pair["label"].shape == (h, w) and pair["image"].shape == (3, h, w)
    assert S.SyntheticLabels(1, h, w)[0]["label"].shape == (h, w)


@pytest.mark.parametrize("size", [(60, 128), (64, 100), (0, 64), (16, 32)])
def test_bad_sizes_are_refused(size):
    with pytest.raises(ValueError, match="multiples of 32"):
        S.SyntheticLabels(1, *size)
    with pytest.raises(ValueError, match="multiples of 32"):
        S.make_layout(np.random.default_rng(0), *size)


def test_labels_in_range_with_little_dontcare():
    labels = S.stack(S.SyntheticLabels(50, seed=1), "label")
    assert int(labels.min()) >= 0 and int(labels.max()) < S.NUM_CLASSES
    share = (labels == S.DONTCARE).float().mean(dim=(1, 2))
    assert float(share.mean()) < 0.03 and float(share.max()) < 0.08
    assert float(share.max()) > 0  # it does occur


def test_every_class_appears_and_sizes_are_street_like():
    labels = S.stack(S.SyntheticLabels(50, seed=2), "label")
    present = torch.stack([(labels == c).flatten(1).any(1) for c in range(S.NUM_CLASSES)], 1).float().mean(0)
    share = torch.bincount(labels.reshape(-1), minlength=S.NUM_CLASSES).double() / labels.numel()
    for c, name in enumerate(S.CLASS_NAMES):
        if c != S.DONTCARE:
            assert present[c] >= 0.5, f"{name} appears in only {present[c]:.0%} of 50 layouts"
    large = [S.CLASS_NAMES.index(n) for n in ("sky", "road", "building")]
    medium = [S.CLASS_NAMES.index(n) for n in ("tree", "car", "sidewalk")]
    small = [S.CLASS_NAMES.index(n) for n in ("pole", "person", "sign")]
    assert min(share[large]) > 0.1 and max(share[large]) < 0.6
    assert min(share[medium]) > 0.02 and max(share[medium]) < 0.15
    assert max(share[small]) < 0.02
    # Street structure: sky on top, road at the bottom.
    assert float((labels[:, 0] == S.SKY).float().mean()) > 0.3
    assert float((labels[:, :4] == S.ROAD).float().mean()) == 0
    assert float((labels[:, -3, W // 3 : 2 * W // 3] == S.ROAD).float().mean()) > 0.3


def test_layouts_vary():
    labels = S.stack(S.SyntheticLabels(20, seed=5), "label")
    for i in range(19):
        assert (labels[i] != labels[i + 1]).float().mean() > 0.05


def test_label_and_photo_streams_are_unpaired():
    n = 20
    labels = S.SyntheticLabels(n, seed=0)
    photos = S.SyntheticPhotos(n, seed=0)
    paired = S.SyntheticPaired(n, seed=0)
    for i in range(n):
        lab = labels[i]["label"].numpy()
        own = photos.layout(i)  # the layout the photo was rendered from
        assert (own != lab).mean() > 0.05, f"photo {i} was rendered from label map {i}"
        assert (paired.layout(i) != lab).mean() > 0.05 and (paired.layout(i) != own).mean() > 0.05
        assert np.array_equal(paired.layout(i), paired[i]["label"].numpy())
        # The photo really is a rendering of its own layout (same rng stream: layout, then render).
        rng = S.item_rng(0, "train", photos.stream, i, H, W)
        scene = S.make_scene(rng, H, W)
        assert np.array_equal(scene.labels, own)
        assert np.array_equal(S.render(own, rng, scene.instances, scene.boxes), photos[i]["image"].numpy())


def test_splits_differ():
    for cls in (S.SyntheticLabels, S.SyntheticPhotos, S.SyntheticPaired):
        train, val = cls(5, split="train"), cls(5, split="val")
        for i in range(5):
            assert (train.layout(i) != val.layout(i)).mean() > 0.05


def test_photos_have_texture_in_every_class():
    data = S.SyntheticPaired(40, seed=7)
    images, labels = S.stack(data, "image"), S.stack(data, "label")
    assert images.dtype == torch.float32
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert float(images.std()) > 0.3  # uses the range
    # Mean absolute difference between horizontal / vertical neighbours inside one class region.
    dx = (images[..., 1:] - images[..., :-1]).abs().mean(1)
    dy = (images[:, :, 1:] - images[:, :, :-1]).abs().mean(1)
    sx, sy = labels[..., 1:] == labels[..., :-1], labels[:, 1:] == labels[:, :-1]
    for c, name in enumerate(S.CLASS_NAMES):
        if c == S.DONTCARE:
            continue
        hf = 0.5 * (float(dx[sx & (labels[..., 1:] == c)].mean()) + float(dy[sy & (labels[:, 1:] == c)].mean()))
        floor = 0.12 if name in ("road", "building", "tree", "sidewalk") else 0.06
        assert hf > floor, f"{name}: neighbour difference {hf:.3f} <= {floor} (flat colour?)"


def test_looks_vary_per_instance():
    """Cars come in several colours; skies in several gradients."""
    data = S.SyntheticPaired(60, seed=8)
    car_colours, sky_colours = [], []
    for i in range(len(data)):
        item = data[i]
        img, lab = item["image"], item["label"]
        if (lab == S.CAR).sum() > 30:
            car_colours.append(img[:, lab == S.CAR].median(1).values)
        sky_colours.append(img[:, lab == S.SKY].mean(1))
    cars, skies = torch.stack(car_colours), torch.stack(sky_colours)
    assert len(cars) > 10
    assert float(torch.cdist(cars, cars).max()) > 1.0  # e.g. white vs black car
    assert float(skies.std(0).mean()) > 0.1


def test_scene_instances():
    scene = S.make_scene(np.random.default_rng(3), H, W)
    assert np.array_equal(scene.labels, S.make_layout(np.random.default_rng(3), H, W))
    assert scene.instances.shape == (H, W) and scene.boxes.shape[1] == 4
    assert scene.instances.max() < len(scene.boxes)
    things = np.isin(scene.labels, [S.CAR, S.PERSON, S.SIGN, S.POLE, S.TREE])
    assert (scene.instances[things] > 0).all() and (scene.instances[~things] == 0).all()
    # Without instance maps the renderer falls back to connected components (one look per blob).
    two_cars = np.full((32, 64), S.ROAD, np.int64)
    two_cars[10:20, 5:20] = S.CAR
    two_cars[10:20, 40:55] = S.CAR
    inst, boxes = render_mod._components(two_cars)
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    assert boxes[1].tolist() == [10, 20, 5, 20] and boxes[2].tolist() == [10, 20, 40, 55]
    img = S.render(two_cars, np.random.default_rng(0))
    assert img.shape == (3, 32, 64) and img.min() >= -1 and img.max() <= 1


def test_render_checks_its_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label ids"):
        S.render(np.full((32, 32), S.NUM_CLASSES, np.int64), rng)
    with pytest.raises(ValueError, match="integer label map"):
        S.render(np.zeros((3, 32, 32), np.int64), rng)
    # Any label map renders, including one without ground or things.
    img = S.render(np.full((32, 64), S.SKY, np.int64), rng)
    assert img.shape == (3, 32, 64) and img.dtype == np.float32


# ---------------------------------------------------------------------------------------------------- #
# Evaluator
# ---------------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("size", [(32, 64), (64, 128), (96, 192), (128, 256), (96, 128)])
def test_evalnet_works_at_any_size(size):
    net = E.EvalNet().eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        assert net(x).shape == (2, S.NUM_CLASSES, *size)
        assert net.pooled(x).shape == (2, E.WIDTHS[-1])
    work = E.work_size(*size)
    assert work[0] <= E.WORK_HEIGHT and work[1] % 8 == 0
    assert abs(work[1] / work[0] - size[1] / size[0]) < 0.1 * size[1] / size[0]  # aspect kept
    assert 1e5 < sum(p.numel() for p in net.parameters()) < 5e5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("usis_cache")


@pytest.fixture(scope="module")
def evaluator(cache_dir):
    # fitted here, not read from the shipped weights: the fit is what these tests check
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E.evaluator, "shipped_path", lambda h, w: cache_dir / "not_shipped.pt")
        return E.SyntheticEvaluator.load_or_train(H, W, cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="module")
def real_val():
    data = S.SyntheticPaired(64, H, W, seed=E.EVAL_SEED + 1, split="val")
    return S.stack(data, "image"), S.stack(data, "label")


def test_evaluator_reaches_its_ceiling_bar(evaluator):
    ceiling = evaluator.ceiling()
    assert 80.0 <= ceiling <= 100.0, f"ceiling mIoU {ceiling:.1f}"
    assert evaluator.ceiling() == ceiling  # cached


def test_evaluator_segments_real_photos_per_class(evaluator, real_val):
    images, labels = real_val
    ious = evaluator.per_class_iou(images, labels)
    assert set(ious) == set(S.CLASS_NAMES) - {"unlabeled"}
    for name, iou in ious.items():
        assert iou > 40.0, f"{name}: IoU {iou:.1f}"
    pred = evaluator.segment(images[:8])
    assert pred.dtype == torch.int64 and pred.shape == (8, H, W)
    assert int(pred.min()) >= 1 and int(pred.max()) < S.NUM_CLASSES  # never the don't-care id
    # mIoU is computed over the set: segmenting in pieces must not change it.
    a, b = images[:24], labels[:24]
    assert evaluator.miou(a, b) == pytest.approx(evaluator.confusion(a, b, batch_size=7).miou())


def test_miou_drops_for_wrong_labels(evaluator, real_val):
    images, labels = real_val
    good = evaluator.miou(images, labels)
    wrong = evaluator.miou(images, labels.roll(1, dims=0))  # each photo scored against another layout
    flat = evaluator.miou(torch.zeros_like(images), labels)
    assert good > 75 and wrong < good - 25 and flat < 30


def test_sfid(evaluator, real_val):
    real = real_val[0]
    other = S.stack(S.SyntheticPhotos(64, H, W, seed=11, split="val"), "image")
    same = evaluator.sfid(real, real)
    close = evaluator.sfid(other, real)
    swapped = evaluator.sfid(real[:, [2, 1, 0]], real)
    grey = evaluator.sfid(torch.zeros_like(real) + 0.01 * torch.randn_like(real), real)
    assert abs(same) < 1e-3 * max(1.0, close)
    assert close > 0
    assert swapped > 3 * close and grey > 10 * close


def test_evaluate_report(evaluator, real_val):
    images, labels = real_val
    fake = images[:40].flip(-1)  # a stand-in "generator": mirrored photos, labels not mirrored
    out = evaluator.evaluate(fake, labels[:40], images[40:])
    per_class = {k: v for k, v in out.items() if k.startswith("iou/")}
    assert set(out) - set(per_class) == {"miou", "miou_ceiling", "sfid"}
    assert len(per_class) == S.NUM_CLASSES - 1  # every class but don't-care
    assert all(isinstance(out[k], float) and math.isfinite(out[k]) for k in ("miou", "miou_ceiling", "sfid"))
    assert out["miou"] < out["miou_ceiling"]
    finite = [v for v in per_class.values() if math.isfinite(v)]
    assert out["miou"] == pytest.approx(sum(finite) / len(finite), abs=1e-4)
    assert out["miou"] == pytest.approx(evaluator.miou(fake, labels[:40]), abs=1e-6)


def test_evaluator_checks_inputs(evaluator):
    with pytest.raises(ValueError, match="trained for 64x128"):
        evaluator.segment(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        evaluator.segment(torch.zeros(3, H, W))
    with pytest.raises(ValueError, match="labels"):
        evaluator.miou(torch.zeros(2, 3, H, W), torch.zeros(3, H, W, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        evaluator.sfid(torch.zeros(1, 3, H, W), torch.zeros(4, 3, H, W))


def test_feature_extractor_contract(evaluator):
    # the contract of usis.metrics.fid's extractors: images in [-1, 1] -> N x D, an id for cache keys
    feats = evaluator.feature_extractor()
    assert isinstance(feats.num_features, int) and feats.extractor_id.startswith("synthetic-eval:")
    x = torch.rand(4, 3, H, W) * 2 - 1
    out = feats(x)
    assert out.shape == (4, feats.num_features) and torch.equal(out, feats(x))
    from usis.metrics.fid import FIDKID

    assert torch.allclose(FIDKID(feats).features(x), out)
    feats.train()
    assert not feats.training and not feats.net.training


def test_weights_cache_is_reused(evaluator, cache_dir, monkeypatch):
    evaluator.ceiling()
    path = E.cache_path(H, W, cache_dir)
    assert path.exists() and path.parent == cache_dir
    record = torch.load(path, weights_only=True)
    assert record["meta"]["height"] == H and record["meta"]["arch_version"] == E.ARCH_VERSION
    mtime = os.stat(path).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached evaluator should have been loaded, not retrained")

    monkeypatch.setattr(E.evaluator, "train_evaluator", no_training)  # patched where it is called
    again = E.SyntheticEvaluator.load_or_train(H, W, cache_dir=cache_dir, progress=False)
    assert os.stat(path).st_mtime_ns == mtime
    images = S.stack(S.SyntheticPhotos(4, seed=1), "image")
    assert torch.equal(again.segment(images), evaluator.segment(images))
    # The ceiling is stored next to the weights and read back.
    assert json.loads(path.with_suffix(".ceiling.json").read_text())[str(E.CEILING_N)] == evaluator.ceiling()
    monkeypatch.setattr(S.SyntheticPaired, "__getitem__", no_training)
    assert again.ceiling() == evaluator.ceiling()


def test_cache_key_depends_on_size_and_versions(tmp_path, monkeypatch):
    a = E.cache_path(64, 128, tmp_path)
    assert E.cache_path(64, 64, tmp_path) != a
    monkeypatch.setattr(E.fit, "ARCH_VERSION", E.ARCH_VERSION + 1)  # the cache key reads it there
    assert E.cache_path(64, 128, tmp_path) != a
    monkeypatch.setenv("USIS_CACHE", str(tmp_path / "env"))
    assert E.cache_path(64, 128).parent == tmp_path / "env"


def test_the_shipped_weights_are_what_every_machine_loads(tmp_path, monkeypatch):
    """A machine without a cache reads the weights shipped with usis for the preset's size (no fit) and caches them;
    they exist for the current cache key (a new DATA_VERSION or ARCH_VERSION needs a new file: fit it once, ship it)."""
    shipped = E.fit.shipped_path(64, 128)
    assert shipped.is_file() and shipped.parent == E.fit.SHIPPED_DIR
    record = torch.load(shipped, weights_only=True)
    assert (record["meta"]["height"], record["meta"]["width"]) == (64, 128)
    assert (record["meta"]["data_version"], record["meta"]["arch_version"]) == (S.DATA_VERSION, E.ARCH_VERSION)

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped evaluator should have been loaded, not fitted")

    monkeypatch.setattr(E.evaluator, "train_evaluator", no_training)
    loaded = E.SyntheticEvaluator.load_or_train(64, 128, cache_dir=tmp_path, progress=False)
    cached = torch.load(E.cache_path(64, 128, tmp_path), weights_only=True)
    assert all(torch.equal(cached["state_dict"][k], v) for k, v in record["state_dict"].items())
    images = S.stack(S.SyntheticPhotos(4, seed=1), "image")
    assert torch.equal(loaded.segment(images), E.SyntheticEvaluator(E.fit._net_for(record), 64, 128).segment(images))


def test_corrupt_cache_is_replaced(evaluator, cache_dir, tmp_path, monkeypatch):
    record = torch.load(E.cache_path(H, W, cache_dir), weights_only=True)
    bad = E.cache_path(H, W, tmp_path)
    bad.write_bytes(b"not a checkpoint")
    calls = []

    def fake_training(height, width, progress=True):
        calls.append((height, width))
        return record

    monkeypatch.setattr(E.evaluator, "train_evaluator", fake_training)
    monkeypatch.setattr(E.evaluator, "shipped_path", lambda h, w: tmp_path / "not_shipped.pt")
    with pytest.warns(UserWarning, match="replacing it"):
        E.SyntheticEvaluator.load_or_train(H, W, cache_dir=tmp_path, progress=False)
    assert calls == [(H, W)]
    assert torch.load(bad, weights_only=True)["meta"] == record["meta"]
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temporary file
