"""data.labelled: K real photos with their own maps beside the unpaired streams (issue 32)."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_identical, set_args, tiny_cfg, whole_and_resumed
from PIL import Image

import usis.data.synthetic as synthetic
from usis.cli import main
from usis.data.labelled import build_labelled, choose, parse_count
from usis.errors import ConfigError
from usis.metrics.synthetic_eval.fit import EVAL_SEED
from usis.train.trainer import Trainer


def _weights(trainer):
    return {k: {n: t.clone() for n, t in net.state_dict().items()} for k, net in trainer.nets.named().items()}


def test_k_zero_is_the_unpaired_step_bit_for_bit(tmp_path):
    a = Trainer(tiny_cfg(), tmp_path / "a", progress=False)  # (each seeds the global RNG: one after the other)
    a.fit(3, eval_at_start=False)
    b = Trainer(tiny_cfg("data.labelled=0", "train.lambda_labelled=5", "train.lambda_labelled_rec=3"), tmp_path / "b",
                progress=False)
    assert b.labelled is None and b.loaders.pairs is None
    b.fit(3, eval_at_start=False)
    assert_identical(_weights(a), _weights(b))
    assert "labelled_pairs" not in json.loads((tmp_path / "b/config.json").read_text())


def test_the_count_and_the_seeded_choice():
    assert parse_count("0") == 0 and parse_count(" 10 ") == 10 and parse_count("ALL") is None
    with pytest.raises(ConfigError, match="data.labelled='ten'"):
        parse_count("ten")
    picked = choose(100, 10, seed=0)
    assert picked == sorted(picked) and len(set(picked)) == 10 and picked == choose(100, 10, seed=0)
    assert picked != choose(100, 10, seed=1)
    assert choose(5, None, 0) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="data.labelled=11, but the training split has 10 labelled pairs"):
        choose(10, 11, 0)


def test_synthetic_pairs_are_never_the_evaluators_or_test_photos():
    cfg = tiny_cfg("data.labelled=all", "data.flip=false")
    found = build_labelled(cfg, synthetic.NUM_CLASSES)
    assert found.available == len(found.names) == cfg.data.synthetic_train
    # a stream of its own: structurally disjoint from the evaluator's (paired stream) and from the other splits
    assert synthetic.SyntheticLabelled.stream not in {synthetic.SyntheticPaired.stream, synthetic.SyntheticLabels.stream,
                                                      synthetic.SyntheticPhotos.stream}
    h, w = cfg.data.height, cfg.data.width
    theirs = [synthetic.SyntheticPaired(12, h, w, seed=EVAL_SEED, split=s) for s in ("train", "val", "test")]
    theirs += [synthetic.SyntheticPaired(12, h, w, seed=cfg.data.synthetic_seed, split=s) for s in ("train", "test")]
    other = [d[i]["image"] for d in theirs for i in range(12)]
    for i in range(len(found.dataset)):
        item = found.dataset[i]
        assert item["path"].startswith("synthetic://train/labelled/")
        assert not any(torch.equal(item["image"], o) for o in other)
        assert item["label"].shape == item["image"].shape[1:]


def test_s_learns_the_labelled_photos_and_the_run_records_them(tmp_path):
    cfg = tiny_cfg("data.labelled=4", "data.labelled_seed=3")
    tr = Trainer(cfg, tmp_path, progress=False)
    before = {n: p.detach().clone() for n, p in tr.nets.S.named_parameters()}
    summary = tr.fit(2, eval_at_start=False)
    assert summary["step"] == 2
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s["loss_s_labelled"]) for s in stats if "loss_s_labelled" in s)
    assert any("loss_s_labelled" in s for s in stats) and any("loss_g_labelled_rec" in s for s in stats)
    assert any(not torch.equal(before[n], p) for n, p in tr.nets.S.named_parameters())
    record = json.loads((tmp_path / "config.json").read_text())["labelled_pairs"]
    assert record["count"] == 4 and record["available"] == 12
    assert record["pairs"] == [f"synthetic://train/labelled/{i}" for i in choose(12, 4, 3)]
    # G's term (its own L1 to the labelled photos, on by default) is finite, and off at weight 0
    assert all(np.isfinite(s["loss_g_labelled_rec"]) for s in stats if "loss_g_labelled_rec" in s)
    tr = Trainer(tiny_cfg("data.labelled=4", "train.lambda_labelled_rec=0"), tmp_path / "rec", progress=False)
    tr.fit(1, eval_at_start=False)
    stats = json.loads((tmp_path / "rec/stats.jsonl").read_text().splitlines()[-1])
    assert "loss_g_labelled_rec" not in stats and np.isfinite(stats["loss_s_labelled"])


def test_resume_is_bit_exact_with_labelled_pairs(tmp_path):
    def check_resumed(trainer):
        assert trainer.loaders.pairs.position == 2  # the labelled stream's place kept

    sa, sb = whole_and_resumed(tmp_path, "data.labelled=5", "train.lambda_labelled_rec=1", check_resumed=check_resumed)
    assert "pairs" in sa["loaders"]
    assert_identical(sa, sb)


def _save_pair(folder, name, ids):
    for sub in ("labels", "photos"):
        (folder / sub / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(folder / "labels" / f"{name}.png")
    rgb = np.full((*ids.shape, 3), 90, np.uint8)
    rgb[..., 0] = (ids * 25).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photos" / f"{name}.jpg")


@pytest.fixture
def folder(tmp_path):
    """An unpaired folder dataset (4 maps, 4 photos) and 3 labelled pairs of its own."""
    root = tmp_path / "data"
    labels, photos = synthetic.SyntheticLabels(4, 64, 64, seed=5), synthetic.SyntheticPhotos(4, 64, 64, seed=5)
    (root / "labels").mkdir(parents=True)
    (root / "photos").mkdir()
    for i in range(4):
        Image.fromarray(labels[i]["label"].numpy().astype(np.uint8), "L").save(root / "labels" / f"{i}.png")
        rgb = ((photos[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(rgb).save(root / "photos" / f"{i}.png")
    pairs = synthetic.SyntheticLabelled(3, 64, 64)
    for i in range(3):
        _save_pair(tmp_path / "pairs", f"city/p{i}", pairs[i]["label"].numpy())
    settings = ["data.kind=folder", f"data.labels={root / 'labels'}", f"data.photos={root / 'photos'}",
                "data.num_classes=10", "data.labelled=all", f"data.labelled_labels={tmp_path / 'pairs/labels'}",
                f"data.labelled_photos={tmp_path / 'pairs/photos'}"]
    return tmp_path, settings


def test_a_folder_dataset_with_labelled_pairs_trains_two_steps_and_the_check_lists_them(folder, capsys):
    tmp_path, settings = folder
    cfg = tiny_cfg(*settings)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    item = tr.labelled.dataset[(0, 7)]
    assert item["path"].endswith("p0.jpg") and item["label_path"].endswith("p0.png")
    assert tr.fit(2, eval_at_start=False)["step"] == 2
    record = json.loads((tmp_path / "run/config.json").read_text())["labelled_pairs"]
    assert record["count"] == record["available"] == 3 and record["pairs"][0].endswith("city/p0.jpg")
    assert main(["data", "check", "--preset", "synthetic", *set_args([*tiny_settings(), *settings])]) == 0
    assert "labelled   : 3 of 3 pairs (data.labelled=all)" in capsys.readouterr().out


def _bad_photo_without_map(root):
    (root / "pairs/labels/city/p1.png").unlink()


def _bad_map_without_photo(root):
    (root / "pairs/photos/city/p2.jpg").unlink()


def _bad_sizes(root):
    Image.new("RGB", (48, 64)).save(root / "pairs/photos/city/p0.jpg")


def _bad_ids(root):
    ids = np.full((64, 64), 12, np.uint8)
    Image.fromarray(ids, "L").save(root / "pairs/labels/city/p1.png")


BAD = {
    "photo without map": (_bad_photo_without_map, [], "p1.jpg: a labelled photo without its label map"),
    "map without photo": (_bad_map_without_photo, [], "p2.png: a label map without its photo"),
    "sizes differ": (_bad_sizes, [], "p0.jpg is 48x64 but its label map"),
    "ids outside": (_bad_ids, [], "p1.png: label ids {12} are outside [0, 10)"),
    "too many": (lambda root: None, ["data.labelled=4"], "data.labelled=4, but the training split has 3 labelled pairs"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_labelled_pairs_are_one_message_and_exit_2(folder, case, capsys):
    tmp_path, settings = folder
    spoil, extra, message = BAD[case]
    spoil(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--preset", "synthetic", "--out", str(out), *set_args([*tiny_settings(), *settings, *extra])])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*.pt")) and not (out / "config.json").exists()


def tiny_settings():
    from conftest import TINY

    return TINY
