"""`usis generate`, `usis export`, `usis evaluate` and periodic FID, on a tiny 1-iteration checkpoint."""

import json
import math
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import TINY, set_args
from PIL import Image
from torch import nn

from usis import config as C
from usis.cli import main
from usis.data.synthetic import CLASS_NAMES, SyntheticLabels, SyntheticPhotos


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    """Three synthetic label maps as 8-bit index PNGs; one of them at another size (gets resized)."""
    folder = tmp_path_factory.mktemp("labels")
    big = SyntheticLabels(2, 64, 64, split="test")
    Image.fromarray(big[0]["label"].numpy().astype(np.uint8), "L").save(folder / "a.png")
    Image.fromarray(big[1]["label"].numpy().astype(np.uint8), "L").save(folder / "b.png")
    small = SyntheticLabels(1, 32, 64, split="test")  # 32 x 64 -> resized to the model's 64 x 64
    Image.fromarray(small[0]["label"].numpy().astype(np.uint8), "L").save(folder / "c.png")
    return folder


def _img(path):
    return np.asarray(Image.open(path)).astype(np.int16)


# --------------------------------------------------------------------------------------------- generate


def test_generate_writes_n_images_per_map_named_by_seed(ckpt, labels_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(labels_dir), "--out", str(out),
                 "--n", "2", "--seed", "5", "--colorize", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "resizing 1 of 3 label maps (32x64)" in err and "64x64" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{s}_seed{k}.png" for s in "abc" for k in (5, 6)] + [f"{s}_label.png" for s in "abc"])
    for p in out.iterdir():
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert np.abs(_img(out / "a_seed5.png") - _img(out / "a_seed6.png")).max() > 0  # seeds differ

    # any image can be regenerated from its seed alone (different batch composition: tolerate 1/255)
    again = tmp_path / "again"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(labels_dir / "a.png"), "--out", str(again),
                 "--n", "1", "--seed", "6", "--device", "cpu"]) == 0
    assert [p.name for p in again.iterdir()] == ["a_seed6.png"]
    assert np.abs(_img(again / "a_seed6.png") - _img(out / "a_seed6.png")).max() <= 1


def test_local_style_gives_each_class_its_own_noise(ckpt, labels_dir, tmp_path):
    from usis.nn.noise import seeded_noise

    labels = torch.tensor([[[1, 1, 2], [3, 3, 2]]])

    def noise_for(labels, seeds, z_dim, num_classes, local_style):
        return seeded_noise(seeds, z_dim, 0, 2, 3, labels=labels, num_classes=num_classes, local_style=local_style)[0]

    z = noise_for(labels, [7], z_dim=4, num_classes=10, local_style=True)
    assert z.shape == (1, 4, 2, 3)
    assert torch.equal(z[0, :, 0, 0], z[0, :, 0, 1]) and torch.equal(z[0, :, 0, 2], z[0, :, 1, 2])
    assert not torch.equal(z[0, :, 0, 0], z[0, :, 0, 2]) and not torch.equal(z[0, :, 0, 0], z[0, :, 1, 0])
    assert torch.equal(noise_for(labels, [7], 4, 10, True), z)  # a pure function of the seed

    out, plain = tmp_path / "local", tmp_path / "plain"
    base = ["generate", "--checkpoint", str(ckpt), "--labels", str(labels_dir / "a.png"), "--n", "1",
            "--seed", "3", "--device", "cpu"]
    assert main([*base, "--out", str(out), "--local-style"]) == 0
    assert main([*base, "--out", str(plain)]) == 0
    assert np.abs(_img(out / "a_seed3.png") - _img(plain / "a_seed3.png")).max() > 0


def test_bad_label_files_are_clear_user_errors(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    ids = np.zeros((64, 64), np.uint8)
    ids[:8, :8] = 200
    Image.fromarray(ids, "L").save(bad / "out_of_range.png")
    args = ["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main([*args, "--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "out_of_range.png" in err and "{200}" in err and "[0, 10)" in err and "Traceback" not in err

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 128
    Image.fromarray(rgb, "RGB").save(tmp_path / "colour.png")
    assert main([*args, "--labels", str(tmp_path / "colour.png")]) == 2
    err = capsys.readouterr().err
    assert "colour.png" in err and "colour image" in err and "index PNG" in err

    assert main([*args, "--labels", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    Image.fromarray(np.ones((64, 64), np.uint8), "L").save(tmp_path / "ok.png")
    assert main([*args, "--labels", str(tmp_path / "ok.png"), "--num-classes", "35"]) == 2
    assert "trained with 10 classes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_export_then_generate_gives_the_same_images(ckpt, labels_dir, tmp_path):
    from safetensors.torch import load_file

    exp = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(exp)]) == 0
    meta = json.loads((exp / "config.json").read_text())
    assert meta["format"] == "usis-generator" and meta["step"] == 1 and meta["run"]["model"]["g_ch"] == 2
    assert meta["class"] == "Generator" and meta["config"]["ch"] == 2  # Generator.save_pretrained's layout
    state = torch.load(ckpt, weights_only=True)["G_ema"]
    exported = load_file(str(exp / "generator.safetensors"))
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)

    # an export of the earlier layout (the run config at the top level, no "config") still loads
    old = tmp_path / "old_export"
    old.mkdir()
    (old / "generator.safetensors").write_bytes((exp / "generator.safetensors").read_bytes())
    (old / "config.json").write_text(json.dumps({**meta["run"], "format": "usis-generator", "step": 1}))

    outs = {}
    for name, source in (("ckpt", ckpt), ("export", exp), ("old_export", old)):
        outs[name] = tmp_path / name
        assert main(["generate", "--checkpoint", str(source), "--labels", str(labels_dir), "--out",
                     str(outs[name]), "--n", "2", "--seed", "11", "--device", "cpu"]) == 0
    for p in outs["ckpt"].iterdir():
        assert np.array_equal(_img(p), _img(outs["export"] / p.name)), p.name
        assert np.array_equal(_img(p), _img(outs["old_export"] / p.name)), p.name


# -------------------------------------------------------------------------------------------- evaluate


def test_evaluate_synthetic_writes_report(ckpt, tmp_path, monkeypatch, capsys):
    # The real evaluator trains for about a minute on first use; its weights do not matter for checking
    # that `usis evaluate` wires generation, metrics and report together, so an untrained one stands in.
    from usis.metrics import synthetic_eval as se

    def untrained(cls, height=64, width=128, cache_dir=None, device="cpu", progress=True):
        torch.manual_seed(0)
        return cls(se.EvalNet(), height, width, device=device)

    monkeypatch.setattr(se.SyntheticEvaluator, "load_or_train", classmethod(untrained))
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(out), "--metrics", "miou,sfid,msssim,c2st",
                 "--msssim-maps", "2", "--msssim-samples", "3", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert {"miou", "miou_ceiling", "sfid", "msssim", "c2st", "c2st_loss"} <= res.keys()
    assert 0 <= res["c2st"] <= 1 and res["c2st_loss"] >= 0 and report["meta"]["c2st_images"] == 4
    assert 0 <= res["miou"] <= 100 and math.isfinite(res["sfid"]) and 0 < res["msssim"] <= 1
    assert [c["class"] for c in report["per_class_iou"]] == CLASS_NAMES[1:]
    assert report["meta"]["step"] == 1 and report["meta"]["num_images"] == 4
    md = (out / "report.md").read_text()
    assert "Per-class IoU" in md and "| road |" in md and "synthetic FID" in md and "C2ST accuracy" in md
    assert (out / "samples.png").is_file()
    assert "sfid" in capsys.readouterr().out

    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(out), "--metrics", "fid,bogus"]) == 2
    assert "unknown metric 'bogus'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Random TF-FID-layout Inception weights (torchvision's Inception3 has the same keys and shapes)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    (root / "labels").mkdir()
    (root / "photos").mkdir()
    labels, photos = SyntheticLabels(4, 64, 64, split="val", seed=3), SyntheticPhotos(4, 64, 64, split="val", seed=3)
    for i in range(4):
        Image.fromarray(labels[i]["label"].numpy().astype(np.uint8), "L").save(root / "labels" / f"{i}.png")
        rgb = ((photos[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(rgb).save(root / "photos" / f"{i}.png")
    return ["data.kind=folder", f"data.val_labels={root / 'labels'}", f"data.val_photos={root / 'photos'}",
            f"data.labels={root / 'labels'}", f"data.photos={root / 'photos'}"]


@pytest.fixture
def cheap_fid(monkeypatch, tmp_path):
    """The real Inception loading path and forward pass, followed by a fixed 2048 -> 16 projection: the
    2048-d Frechet distance alone costs ~50 s on two CPU cores (test_metrics.py explains)."""
    from usis.metrics import fid as fidmod

    real_build = fidmod.build_inception

    class Projected(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.extractor_id = inner.extractor_id + ":proj16"
            self.register_buffer("proj", torch.randn(2048, 16, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            return self.inner(x) @ self.proj

    calls = []

    def build(weights_path=None, antialias=False):
        calls.append(weights_path)
        return Projected(real_build(weights_path, antialias))

    for where in ("usis.metrics.fid", "usis.metrics.scoring", "usis.metrics.periodic"):  # patched where it is used
        monkeypatch.setattr(f"{where}.build_inception", build)
    monkeypatch.setenv("USIS_CACHE", str(tmp_path / "cache"))
    return calls


def test_evaluate_fid_kid_on_a_folder_dataset_and_periodic_fid(ckpt, folder_data, inception_file, cheap_fid,
                                                               tmp_path):
    from usis.generate import generate_images, load_generator
    from usis.metrics.periodic import make_evaluator

    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(ckpt), "--out", str(out), "--metrics", "fid,kid",
            "--fid-weights", str(inception_file), "--device", "cpu", *set_args(folder_data)]
    assert main(args) == 0
    assert cheap_fid == [str(inception_file)]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "folder" and report["meta"]["num_real_images"] == 4
    assert report["results"]["fid"] > 0 and "kid_mean" in report["results"]
    assert report["meta"]["fid_real_stats"] == "miss"
    assert report["meta"]["fid_extractor"].startswith("inception-v3-tf-2015-12-05:")
    stats = list((tmp_path / "cache" / "fid_stats").glob("*.pt"))
    assert len(stats) == 1

    # periodic FID during training: same real statistics (cache hit), a callable(trainer) -> {"fid": ...}
    cfg = C.apply_overrides(C.Config.from_dict(torch.load(ckpt, weights_only=True)["config"]),
                            folder_data + [f"eval.fid_weights={inception_file}", "eval.metrics=fid,kid",
                                           "eval.num_images=4"])
    from usis.data import build_datasets

    evaluator = make_evaluator(cfg, build_datasets(cfg, "val"))
    gen = load_generator(ckpt)
    trainer = types.SimpleNamespace(
        device=torch.device("cpu"), step=0,
        generate=lambda labels, seeds, batch_size: generate_images(gen.G, labels, list(seeds)))
    metrics = evaluator(trainer)
    assert metrics["fid"] > 0 and "kid_mean" in metrics
    assert list((tmp_path / "cache" / "fid_stats").glob("*.pt")) == stats  # reused, not recomputed
    # the two-sample test alone needs no Inception weights
    cfg.eval.metrics, cfg.eval.fid_weights = "c2st", "/nonexistent/inception.pth"
    only_c2st = make_evaluator(cfg, build_datasets(cfg, "val"))(trainer)
    assert set(only_c2st) == {"c2st", "c2st_loss", "c2st_n"} and 0 <= only_c2st["c2st"] <= 1


def test_missing_inception_weights_offline(ckpt, folder_data, tmp_path, monkeypatch, capsys):
    from usis.data import build_datasets
    from usis.metrics.periodic import PeriodicEvaluationWarning, make_evaluator

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # empty hub cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "r"), "--metrics", "fid",
               "--device", "cpu", *set_args(folder_data)])
    err = capsys.readouterr().err
    assert rc == 2 and "--fid-weights" in err and "eval.fid_weights" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "report.json").exists()

    # training: warned once, before the first step, and no periodic evaluator (instead of a crash later)
    cfg = C.apply_overrides(C.Config.from_dict(torch.load(ckpt, weights_only=True)["config"]),
                            folder_data + ["eval.metrics=fid"])
    with pytest.warns(PeriodicEvaluationWarning, match="fid_weights"):
        assert make_evaluator(cfg, build_datasets(cfg, "val")) is None


def test_pixel_noise_generator_is_reproducible_from_its_seeds(tmp_path):
    from usis.generate import generate_images, load_generator

    out = tmp_path / "pn"
    assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "1", "--no-progress",
                 *set_args(TINY + ["model.pixel_noise=2"])]) == 0
    gen = load_generator(out / "checkpoints" / "latest.pt")
    assert gen.G.pixel_noise == 2
    labels = torch.stack([SyntheticLabels(2, 64, 64, split="test")[i]["label"] for i in range(2)])
    a = generate_images(gen.G, labels, [3, 4], batch_size=2)
    b = generate_images(gen.G, labels, [3, 4], batch_size=1)  # another batching: the same images
    assert torch.allclose(a, b, atol=1e-5)
    c = generate_images(gen.G, labels, [5, 6])
    assert (a - c).abs().mean() > 1e-4
