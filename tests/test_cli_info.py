import json

import pytest

from usis import config as C
from usis.cli import main

# reference implementation sizes (PAPER.md, Cityscapes config, 35 classes, 256x512, ch=64)
REFERENCE = {"generator": (71_107_523, 0.02), "segmenter": (22_251_364, 0.02), "discriminator": (25_333_377, 0.05)}


def test_info_cityscapes_matches_reference_sizes(capsys):
    assert main(["info", "--preset", "cityscapes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["data"]["num_classes"] == 35
    assert out["config"]["model"]["num_classes"] == 35
    for net, (ref, tol) in REFERENCE.items():
        assert abs(out["params"][net] / ref - 1) <= tol, (net, out["params"][net], ref)
    assert out["params"]["decoder"] > 0


def test_info_applies_overrides(capsys):
    assert main(["info", "--preset", "synthetic", "--set", "model.g_ch=4", "--set", "train.lr_g=0.01",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["model"]["g_ch"] == 4
    assert out["config"]["train"]["lr_g"] == 0.01


@pytest.mark.parametrize("preset", sorted(C.PRESETS))
def test_every_preset_resolves(preset):
    cfg = C.get_preset(preset)
    assert cfg.model.num_classes == cfg.data.num_classes
    assert cfg.train.beta1 == 0.0 and cfg.train.beta2 == 0.999


def test_paper_hyperparameters_in_presets():
    cs = C.get_preset("cityscapes")
    assert (cs.data.height, cs.data.width, cs.data.num_classes, cs.data.dontcare) == (256, 512, 35, 0)
    assert cs.train.lr_g == 4e-4 and cs.train.lr_s == 4e-4 and cs.train.lr_d == pytest.approx(5 * 4e-4)
    assert cs.train.ema_decay == 0.999 and cs.train.batch_size == 8
    ade = C.get_preset("ade20k")
    assert (ade.data.height, ade.data.width, ade.data.load_size, ade.data.num_classes) == (256, 256, 286, 151)
    assert C.get_preset("coco").data.num_classes == 183
    assert cs.model.z_dim == 64 and cs.model.g_ch == 64 and cs.model.spade_hidden == 128
    assert cs.train.r1_gamma == 10 and cs.train.r1_every == 4
    # the paper's generator (no per-pixel noise) and constant learning rates in every real-data preset
    for name in ("cityscapes", "ade20k", "coco", "gta2cityscapes", "folder"):
        p = C.get_preset(name)
        assert p.model.pixel_noise == 0 and p.train.lr_decay_from == 1.0, name


@pytest.mark.parametrize("bad,msg", [
    ("train.nope=1", "unknown field"),
    ("nope.x=1", "unknown section"),
    ("train.lr_g=fast", "expected a number"),
    ("lr", "key=value"),
    ("model.num_classes=35", "set data.num_classes=35 instead"),  # one truth, never silently overwritten
])
def test_bad_overrides_are_clear_errors(bad, msg, capsys):
    with pytest.raises(C.ConfigError, match=msg):
        C.apply_overrides(C.get_preset("synthetic"), [bad])
    assert main(["info", "--preset", "synthetic", "--set", bad]) == 2
    assert msg in capsys.readouterr().err


def test_config_roundtrip():
    cfg = C.apply_overrides(C.get_preset("ade20k"), ["data.dontcare=none"])
    assert cfg.data.dontcare is None
    assert C.Config.from_dict(cfg.to_dict()) == cfg


def test_float_field_with_an_int_preset_value_takes_a_float():
    # the synthetic preset writes max_seconds=540 (an int); the field is a float
    cfg = C.apply_overrides(C.get_preset("synthetic"), ["train.max_seconds=12.5", "train.iters=7"])
    assert cfg.train.max_seconds == 12.5 and cfg.train.iters == 7
    with pytest.raises(C.ConfigError, match="expected an integer"):
        C.apply_overrides(C.get_preset("synthetic"), ["train.iters=7.5"])


def test_best_metric_needs_a_direction(tmp_path, capsys):
    from usis.metrics.protocol import is_better

    assert is_better("miou", 50.0, 40.0) and not is_better("fid", 50.0, 40.0) and is_better("sfid", 1.0, None)
    assert main(["train", "--preset", "synthetic", "--out", str(tmp_path), "--set", "eval.best_metric=kid_std"]) == 2
    err = capsys.readouterr().err
    assert "eval.best_metric=kid_std" in err and "miou" in err and "Traceback" not in err
