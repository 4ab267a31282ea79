"""Tests of the evaluation metrics (CPU, no network, random weights saved to temporary files)."""

from __future__ import annotations

import json
import math
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from usis.metrics import fid as fidmod
from usis.metrics.diversity import STANDARD_BETAS, msssim_betas, msssim_diversity, pairwise_msssim
from usis.metrics.drn import DRNSegD105, load_drn_d_105
from usis.metrics.fid import FIDKID, MetricsError, build_inception, compute_fid, real_stats_key, stats_path
from usis.metrics.miou import (
    CITYSCAPES_TRAIN_NAMES,
    ConfusionMatrix,
    cityscapes_label_table,
    map_labels,
)
from usis.metrics.report import PAPER_RESULTS, write_report
from usis.metrics.segmenters import build_segmenter, segmentation_confusion

# ------------------------------------------------------------------------------------------ helpers


class TinyFeatures(nn.Module):
    """A cheap deterministic feature extractor: [-1, 1] images -> 8 pooled, projected features."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 4 * 4, 8, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.tanh(x @ self.proj)


def scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent reference: the usual numpy/scipy formula (pytorch-fid style)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def images(n: int, seed: int, size: int = 16, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, 3, size, size, generator=g) * 2 - 1) * scale + shift).clamp(-1, 1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Random (but well-scaled) TF-FID-layout Inception weights; torchvision's Inception3 has the same keys."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------- FID


def test_inception_features_and_fid_self_zero_different_positive(inception_file):
    # The 2048-d Frechet distance costs ~50 s on 2 CPU cores (torchmetrics' eigvals of a 2048 x 2048
    # matrix), so the Inception features are checked here and the distances computed on a fixed
    # 16-d projection of them; the 2048-d computation is the same torchmetrics code path.
    extractor = build_inception(str(inception_file))
    assert extractor.extractor_id.startswith("inception-v3-tf-2015-12-05:")
    a = images(4, seed=1, size=32)
    b = images(4, seed=2, size=32, scale=0.3, shift=0.4)
    both = FIDKID(extractor).features(torch.cat([a, b]))  # the real loading path and uint8 conversion
    assert both.shape == (8, 2048) and torch.isfinite(both).all()
    proj = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0)) / 2048**0.5
    fa, fb = (both[:4] - both.mean(0)) @ proj, (both[4:] - both.mean(0)) @ proj
    metric = FIDKID(nn.Identity(), kid=True)
    metric.update_features(fa, real=True)
    metric.update_features(fa, real=False)
    same = metric.compute()
    scale = float(torch.cov(fa.double().T).trace())
    assert abs(same["fid"]) < 1e-3 * scale
    metric.reset_fake()
    metric.update_features(fb, real=False)
    diff = metric.compute()
    assert diff["fid"] > 0.1 * scale
    assert diff["kid_mean"] > same["kid_mean"]


def test_fid_self_zero_different_positive_from_images():
    metric = FIDKID(TinyFeatures())
    a, b = images(50, seed=11), images(50, seed=12, scale=0.5, shift=0.3)
    metric.update(a, real=True)
    metric.update(a, real=False)
    assert abs(metric.compute()["fid"]) < 1e-6
    metric.reset_fake()
    assert metric.num_real == 50 and metric.num_fake == 0
    metric.update(b, real=False)
    assert metric.compute()["fid"] > 0.05


def test_fid_matches_scipy_reference():
    extractor = TinyFeatures()
    metric = FIDKID(extractor)
    real, fake = images(300, seed=3), images(200, seed=4, scale=0.6, shift=0.2)
    fr, ff = metric.features(real), metric.features(fake)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = metric.compute()["fid"]
    ref = scipy_frechet(fr.double().numpy(), ff.double().numpy())
    assert ref > 0.01
    assert abs(ours - ref) / ref < 1e-3


def test_real_statistics_cache_is_reused(tmp_path):
    extractor = TinyFeatures()
    calls = {"n": 0}
    real = images(12, seed=5)

    def real_factory():
        calls["n"] += 1
        return [real[:6], real[6:]]

    def fakes():
        return [images(10, seed=6, scale=0.5)]

    key = real_stats_key("synthetic", "val", (16, 16), "tiny", 12)
    assert key != real_stats_key("synthetic", "val", (16, 16), "tiny", 13)
    first = compute_fid(fakes(), real_factory, key, tmp_path, extractor)
    assert first["cache"] == "miss" and calls["n"] == 1
    path = stats_path(tmp_path, key)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    stored = torch.load(path, weights_only=True)
    assert int(stored["num_samples"]) == 12
    second = compute_fid(fakes(), real_factory, key, tmp_path, extractor)
    assert second["cache"] == "hit" and calls["n"] == 1  # the real images were not read again
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-9)
    # KID needs the real features, which the FID-only file lacks: one recompute, then hits again
    third = compute_fid(fakes(), real_factory, key, tmp_path, extractor, kid=True)
    assert third["cache"] == "miss" and calls["n"] == 2 and "kid_mean" in third
    fourth = compute_fid(fakes(), real_factory, key, tmp_path, extractor, kid=True)
    assert fourth["cache"] == "hit" and calls["n"] == 2
    assert fourth["fid"] == pytest.approx(first["fid"], rel=1e-9)
    # KID subset size adapted to the 10 fake images (torchmetrics' default 1000 would fail)
    assert math.isfinite(fourth["kid_mean"])


def test_missing_inception_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # empty hub cache

    timeouts = []

    def hanging(url, timeout=None):  # an offline cluster whose connections hang: gives up after `timeout`
        timeouts.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", hanging)
    with pytest.raises(MetricsError) as err:
        build_inception(None)
    assert "fid_weights" in str(err.value) and fidmod.PYTORCH_FID_URL in str(err.value)
    assert timeouts == [fidmod.DOWNLOAD_TIMEOUT_S] and 0 < fidmod.DOWNLOAD_TIMEOUT_S <= 60
    assert not list((tmp_path / "hub").rglob("*.pth*"))  # nothing half written
    missing = tmp_path / "nope.pth"
    with pytest.raises(MetricsError, match="nope.pth") as err:
        build_inception(str(missing))
    assert "fid_weights" in str(err.value)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsError, match="corrupt.pth"):
        build_inception(str(corrupt))


def test_inception_found_in_hub_cache(tmp_path, monkeypatch, inception_file):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / fidmod.INCEPTION_FILENAMES[1]).symlink_to(inception_file)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setattr(fidmod, "_download_inception", lambda: pytest.fail("must not download"))
    extractor = build_inception("")  # empty eval.fid_weights -> the hub cache copy, no download
    assert isinstance(extractor, fidmod.InceptionFeatures)


# -------------------------------------------------------------------------------------------- mIoU


def test_miou_perfect_prediction_is_100():
    target = torch.randint(0, 5, (2, 8, 8))
    cm = ConfusionMatrix(5)
    cm.update(target.clone(), target)
    assert cm.miou() == pytest.approx(100.0)
    assert cm.pixel_accuracy() == pytest.approx(100.0)


def test_miou_constant_prediction_matches_hand_computation():
    # ground truth: 4 pixels of class 0, 3 of class 1, 1 of class 2, plus 2 ignored pixels
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 255, 255]])
    pred = torch.zeros_like(target)  # always class 0
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    # class 0: TP 4, FP 4 (the 3 + 1 other pixels), FN 0 -> 4/8; classes 1, 2: 0; class 3: absent -> NaN
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(0.5) and iou[1].item() == 0 and iou[2].item() == 0
    assert math.isnan(iou[3].item())
    assert cm.miou() == pytest.approx(100 * 0.5 / 3)
    assert cm.miou(over="gt") == pytest.approx(100 * 0.5 / 3)
    # a class predicted but absent from the ground truth counts (IoU 0) with over="union" only
    cm2 = ConfusionMatrix(4)
    cm2.update(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]))
    assert cm2.miou() == pytest.approx(25.0)  # (0.5 + 0) / 2
    assert cm2.miou(over="gt") == pytest.approx(50.0)
    rows = cm.table(["a", "b", "c", "d"])
    assert rows[0] == ("a", pytest.approx(50.0)) and math.isnan(rows[3][1])


def test_cityscapes_35_to_19_mapping():
    table = cityscapes_label_table()
    ids = torch.tensor([0, 7, 8, 11, 23, 24, 26, 33, 34, 9, 255, -1, 300])
    mapped = map_labels(ids, table)
    assert mapped.tolist() == [255, 0, 1, 2, 10, 11, 13, 18, 255, 255, 255, 255, 255]
    assert map_labels(torch.tensor([31, 32]), {31: 16, 32: 17}).tolist() == [16, 17]
    assert len(CITYSCAPES_TRAIN_NAMES) == 19 and CITYSCAPES_TRAIN_NAMES[13] == "car"


# --------------------------------------------------------------------------------------------- DRN


def test_drn_d_105_state_dict_matches_reference_layout(tmp_path):
    torch.manual_seed(0)
    model = DRNSegD105(19)
    sd = model.state_dict()
    expected = {
        "base.0.0.weight": (16, 3, 7, 7),
        "base.0.1.running_var": (16,),
        "base.1.0.weight": (16, 16, 3, 3),
        "base.2.0.weight": (32, 16, 3, 3),
        "base.3.0.conv1.weight": (64, 32, 1, 1),
        "base.3.0.downsample.0.weight": (256, 32, 1, 1),
        "base.4.3.conv3.weight": (512, 128, 1, 1),
        "base.5.0.downsample.0.weight": (1024, 512, 1, 1),
        "base.5.0.conv2.weight": (256, 256, 3, 3),
        "base.5.22.conv3.weight": (1024, 256, 1, 1),
        "base.6.2.bn3.weight": (2048,),
        "base.7.0.weight": (512, 2048, 3, 3),
        "base.8.0.weight": (512, 512, 3, 3),
        "base.8.1.bias": (512,),
        "seg.weight": (19, 512, 1, 1),
        "seg.bias": (19,),
        "up.weight": (19, 1, 16, 16),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "base.5.23.conv1.weight" not in sd and "base.9.0.weight" not in sd
    # counted on the fyu/drn reference DRNSeg('drn_d_105', 19) (incl. the frozen up-sampling kernel)
    assert sum(p.numel() for p in model.parameters()) == 54_302_915
    assert model.base[5][0].conv2.dilation == (2, 2) and model.base[6][1].conv2.dilation == (4, 4)

    # legacy checkpoint form: DataParallel "module." prefix, no BatchNorm num_batches_tracked
    legacy = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "drn-d-105_ms_cityscapes.pth"
    torch.save(legacy, path)
    seg = build_segmenter("drn", str(path), "cityscapes")
    assert torch.equal(seg.model.state_dict()["seg.weight"], sd["seg.weight"])
    pred = seg(images(1, seed=7, size=32), size=(32, 32))
    assert pred.shape == (1, 32, 32) and pred.dtype == torch.long and int(pred.max()) < 19
    assert seg.map_labels(torch.tensor([26])).item() == 13

    bad = tmp_path / "bad.pth"
    torch.save({"seg.weight": torch.zeros(19, 512, 1, 1)}, bad)
    with pytest.raises(MetricsError, match="bad.pth"):
        load_drn_d_105(bad)
    with pytest.raises(MetricsError, match="missing.pth"):
        load_drn_d_105(tmp_path / "missing.pth")


# -------------------------------------------------------------------------------------- segmenters


class ColorNet(nn.Module):
    """Class = strongest of (R, G, B, 'dark'): a deterministic 4-class segmenter returning logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = 0.5 - x.amax(1, keepdim=True)
        return torch.cat([x, dark], 1)


class ColorIdsAtHalfRes(nn.Module):
    """The same decision as class ids at half resolution (tests the class-id output and its resizing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(x, 2)
        return torch.cat([x, 0.5 - x.amax(1, keepdim=True)], 1).argmax(1)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_segmenter_with_mapping_file(tmp_path):
    mapping = {"num_classes": 4, "map": {"1": 0, "2": 1, "3": 2, "5": 3}, "names": ["red", "green", "blue", "dark"],
               "input": "0_1"}
    # dataset label ids 1, 2, 3, 5 painted as red, green, blue, black 4 x 4 blocks; id 4 is unmapped
    labels = torch.tensor([[1, 2], [3, 5]]).repeat_interleave(4, 0).repeat_interleave(4, 1)[None]
    colors = {1: (1, -1, -1), 2: (-1, 1, -1), 3: (-1, -1, 1), 5: (-1, -1, -1)}
    img = torch.zeros(1, 3, 8, 8)
    for lid, rgb in colors.items():
        img[0, :, labels[0] == lid] = torch.tensor(rgb, dtype=torch.float).view(3, 1)
    for net in (ColorNet(), ColorIdsAtHalfRes()):
        model_path = tmp_path / f"{type(net).__name__}.pt"
        torch.jit.script(net).save(str(model_path))
        (tmp_path / f"{type(net).__name__}.json").write_text(json.dumps(mapping))
        seg = build_segmenter("torchscript", str(model_path), "folder")
        assert seg.num_classes == 4 and seg.class_names[3] == "dark"
        pred = seg(img, size=(8, 8))
        assert pred.shape == (1, 8, 8) and pred.dtype == torch.long
        assert torch.equal(pred, seg.map_labels(labels))
        cm = segmentation_confusion(seg, [(img, labels)])
        assert cm.miou() == pytest.approx(100.0)
    assert seg(img, size=(16, 16)).shape == (1, 16, 16)
    assert seg.map_labels(torch.tensor([4, 0])).tolist() == [255, 255]
    with pytest.raises(MetricsError, match="class-mapping"):
        build_segmenter("torchscript", str(model_path), "folder", mapping=str(tmp_path / "none.json"))
    (tmp_path / "badmap.json").write_text(json.dumps({"num_classes": 2, "map": {"1": 7}}))
    with pytest.raises(MetricsError, match="outside"):
        build_segmenter("torchscript", str(model_path), "folder", mapping=str(tmp_path / "badmap.json"))


def test_segformer_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(MetricsError, match=r"usis\[segformer\]"):
        build_segmenter("segformer", "nvidia/segformer-b0-finetuned-ade-512-512", "ade20k")
    with pytest.raises(MetricsError, match="unknown segmenter"):
        build_segmenter("unet", "x", "ade20k")


# --------------------------------------------------------------------------------------- diversity


def test_msssim_diversity_identical_is_one_random_is_lower():
    label = torch.zeros(2, 64, 128, dtype=torch.long)
    fixed = images(1, seed=8, size=64).repeat(1, 1, 1, 2)  # 64 x 128

    def same(lbl):
        return fixed.expand(lbl.shape[0], -1, -1, -1)

    gen = torch.Generator().manual_seed(9)

    def noise(lbl):
        return torch.rand(lbl.shape[0], 3, 64, 128, generator=gen) * 2 - 1

    assert msssim_diversity(same, label, n_samples=4) == pytest.approx(1.0, abs=1e-4)
    assert msssim_diversity(noise, label, n_samples=4, batch_size=3) < 0.5
    assert len(msssim_betas(64, 128)) == 3 and sum(msssim_betas(64, 128)) == pytest.approx(1.0)
    assert msssim_betas(256, 512) == STANDARD_BETAS
    big = images(2, seed=10, size=192)
    assert 0 < pairwise_msssim(big) < 1


# ------------------------------------------------------------------------------------------ report


def test_report_files_contain_paper_numbers(tmp_path):
    results = {"fid": 60.123, "kid_mean": 0.0312, "miou": 40.5, "msssim": 0.55}
    per_class = [("road", 90.0), ("sidewalk", float("nan"))]
    json_path, md_path = write_report(tmp_path / "eval", "cityscapes", results, per_class, {"step": 1000})
    data = json.loads(json_path.read_text())
    assert data["results"]["fid"] == 60.123
    assert data["paper"]["USIS"]["fid"] == 53.67 and data["paper"]["CUT"]["miou"] == 29.8
    assert data["per_class_iou"][1]["iou"] is None
    md = md_path.read_text()
    for text in ("53.67", "44.78", "87.20", "47.70", "60.12", "road", "| sidewalk | n/a |"):
        assert text in md
    assert PAPER_RESULTS["coco"]["USIS"]["miou"] == 14.06
    _, md2 = write_report(tmp_path / "gta", "gta2cityscapes", {"fid": 1.0}, None, {})
    assert "no numbers" in md2.read_text()
