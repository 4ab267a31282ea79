"""Dataset layouts, unpaired streams, resume, dataset checks and palettes (tiny trees in tmp_path)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_NETS
from PIL import Image

from usis.config import ConfigError, get_preset
from usis.data.check import check_dataset, format_report, preflight, run_check, sample_paths
from usis.data.datasets import DatasetError, build_datasets
from usis.data.palette import (
    ADE20K_NAMES,
    CITYSCAPES,
    COCO_STUFF_NAMES,
    class_info,
    load_class_file,
    make_palette,
)
from usis.data.unpaired import make_loaders
from usis.utils.images import colorize

H, W = 32, 64

# ------------------------------------------------------------------------------------------ helpers


def _label(path: Path, arr: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(arr.astype(np.uint16)).save(path)
    else:
        Image.fromarray(arr.astype(np.uint8), "L").save(path)
    return path


def _ids(h: int, w: int, num: int, seed: int) -> np.ndarray:
    """Blocky label map with ids in [0, num)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, num, size=(max(1, h // 8), max(1, w // 8)))
    return np.kron(small, np.ones((8, 8), dtype=np.int64))[:h, :w]


def _photo(path: Path, w: int = 96, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _cfg(preset: str, **data):
    cfg = get_preset(preset)
    cfg.data.height, cfg.data.width, cfg.data.load_size, cfg.data.num_workers = H, W, 0, 0
    cfg.data.check_samples = 0
    cfg.train.batch_size = 2
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg.sync()


def _cityscapes(root: Path, n_labels=3, n_photos=4, split="train", w=128, h=64) -> Path:
    for i in range(n_labels):
        city = ["aachen", "bochum"][i % 2]
        _label(root / "gtFine" / split / city / f"{city}_{i:06d}_000019_gtFine_labelIds.png", _ids(h, w, 34, i))
        _photo(root / "gtFine" / split / city / f"{city}_{i:06d}_000019_gtFine_color.png", w, h, seed=99)
        _label(root / "gtFine" / split / city / f"{city}_{i:06d}_000019_gtFine_labelTrainIds.png",
               np.full((h, w), 255))
    for i in range(n_photos):
        city = ["aachen", "bochum"][i % 2]
        _photo(root / "leftImg8bit" / split / city / f"{city}_{i:06d}_000019_leftImg8bit.png", w, h, seed=i)
    return root


def _folder(tmp: Path, n_labels=6, n_photos=6, num=5, pw=96, ph=48) -> tuple[Path, Path]:
    for i in range(n_labels):
        _label(tmp / "labels" / f"{i:03d}.png", _ids(48, 96, num, i))
    for i in range(n_photos):
        _photo(tmp / "photos" / f"{i:03d}.jpg", pw, ph, seed=100 + i)
    return tmp / "labels", tmp / "photos"


def _folder_cfg(tmp: Path, num=5, **kw):
    labels, photos = _folder(tmp, num=num, **{k: v for k, v in kw.items() if k in ("n_labels", "n_photos")})
    rest = {k: v for k, v in kw.items() if k not in ("n_labels", "n_photos")}
    return _cfg("folder", labels=str(labels), photos=str(photos), num_classes=num, dontcare=0, **rest)


def _check_label_item(item, num_classes):
    lab = item["label"]
    assert lab.dtype == torch.int64 and lab.shape == (H, W)
    assert 0 <= int(lab.min()) and int(lab.max()) < num_classes
    assert isinstance(item["path"], str)


def _check_photo_item(item):
    img = item["image"]
    assert img.dtype == torch.float32 and img.shape == (3, H, W)
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0


# ------------------------------------------------------------------------------------------ layouts


def test_cityscapes_layout(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    _cityscapes(tmp_path / "cs", n_labels=2, n_photos=1, split="val")
    b = build_datasets(_cfg("cityscapes", root=str(root)), "train")
    assert (len(b.labels), len(b.photos), b.num_classes, b.dontcare) == (3, 4, 35, 0)
    assert all(p.endswith("_gtFine_labelIds.png") for p in b.labels.paths)  # not *_color / *_labelTrainIds
    assert b.labels.paths == sorted(b.labels.paths)
    assert len(b.class_names) == len(b.palette) == 35 and b.class_names[7] == "road"
    _check_label_item(b.labels[(0, 1)], 35)
    _check_photo_item(b.photos[(1, 2)])
    v = build_datasets(_cfg("cityscapes", root=str(root)), "val")
    assert (len(v.labels), len(v.photos)) == (2, 1)
    # val: a plain NEAREST resize 64x128 -> 32x64 keeps every other pixel, no flip/crop
    src = np.array(Image.open(v.labels.paths[0]))
    assert torch.equal(v.labels[0]["label"], torch.from_numpy(src[::2, ::2].astype(np.int64)))


def test_ade20k_layout_and_crop(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            _label(root / "annotations" / split / f"ADE_{split}_{i:08d}.png", _ids(60, 80, 151, i))
            _photo(root / "images" / split / f"ADE_{split}_{i:08d}.jpg", 80, 60, seed=i)
    cfg = _cfg("ade20k", root=str(root), load_size=40, height=32, width=32)
    b = build_datasets(cfg, "train")
    assert (len(b.labels), len(b.photos), b.num_classes) == (3, 3, 151)
    assert b.labels[(0, 5)]["label"].shape == (32, 32) and b.photos[(0, 5)]["image"].shape == (3, 32, 32)
    assert b.class_names[0] == "other" and b.class_names[150] == "flag"
    # the crop/flip is a pure function of the aug seed; different seeds give different crops
    assert torch.equal(b.photos[(0, 5)]["image"], b.photos[(0, 5)]["image"])
    assert any(not torch.equal(b.photos[(0, 5)]["image"], b.photos[(0, s)]["image"]) for s in range(6, 12))
    v = build_datasets(cfg, "val")
    assert (len(v.labels), len(v.photos)) == (2, 2)
    # nearest resizing never invents ids
    src = set(np.unique(np.array(Image.open(b.labels.paths[0]))).tolist())
    assert set(b.labels[(0, 3)]["label"].unique().tolist()) <= src


def test_coco_shift(tmp_path):
    root = tmp_path / "coco"
    stored = np.zeros((H, W), dtype=np.uint8)
    stored[:, :16] = 255  # unknown -> 0
    stored[:, 16:32] = 0  # person (stored 0) -> 1
    stored[:, 32:48] = 181  # wood -> 182
    stored[:, 48:] = 40
    for split in ("train", "val"):
        _label(root / f"{split}_label" / "000000000139.png", stored)
        _photo(root / f"{split}_img" / "000000000139.jpg", W, H)
    b = build_datasets(_cfg("coco", root=str(root)), "val")
    lab = b.labels[0]["label"]
    assert b.num_classes == 183 and b.dontcare == 0
    assert (lab[:, :16] == 0).all() and (lab[:, 16:32] == 1).all() and (lab[:, 32:48] == 182).all()
    assert (lab[:, 48:] == 41).all()
    assert b.class_names[1] == "person" and b.class_names[182] == "wood"
    assert len(build_datasets(_cfg("coco", root=str(root)), "train").labels) == 1


def test_gta2cityscapes_layout_and_p_mode(tmp_path):
    cs = _cityscapes(tmp_path / "cs")
    _cityscapes(tmp_path / "cs", n_labels=2, n_photos=2, split="val")
    gta = tmp_path / "gta"
    (gta / "labels").mkdir(parents=True)
    for i in range(5):  # GTA-V labels are palette PNGs: the INDEX is the Cityscapes id
        img = Image.fromarray(_ids(H, W, 34, i).astype(np.uint8), "P")
        img.putpalette([c for _, col in CITYSCAPES for c in col] + [0] * (3 * (256 - 35)))
        img.save(gta / "labels" / f"{i:05d}.png")
    cfg = _cfg("gta2cityscapes", root=str(cs), label_root=str(gta))
    b = build_datasets(cfg, "train")
    assert (len(b.labels), len(b.photos), b.num_classes) == (5, 4, 35)
    _check_label_item(b.labels[(0, 0)], 35)
    expected = torch.from_numpy(_ids(H, W, 34, 0))
    val_cfg = _cfg("gta2cityscapes", root=str(cs), label_root=str(gta), flip=False)
    with pytest.warns(UserWarning, match="Cityscapes val"):
        v = build_datasets(val_cfg, "val")
    assert len(v.labels) == 2 and "gtFine" in v.labels.paths[0]
    # a P-mode label read in val mode (no crop/flip, same size) equals its index array exactly
    pv = build_datasets(_cfg("folder", labels=str(gta / "labels"), photos=str(cs / "leftImg8bit"),
                             num_classes=35), "train")
    pv.labels.geometry = type(pv.labels.geometry)(H, W)  # val geometry: identity at this size
    assert torch.equal(pv.labels[0]["label"], expected)


def test_folder_layout_modes(tmp_path):
    lab_dir = tmp_path / "labels"
    arr = _ids(H, W, 300, 1)
    _label(lab_dir / "a" / "x16.png", arr, mode="I;16")  # 16-bit ids, in a subfolder (recursive search)
    _label(lab_dir / "b.png", _ids(H, W, 5, 2))
    Image.fromarray(np.stack([_ids(H, W, 5, 3).astype(np.uint8)] * 3, -1), "RGB").save(lab_dir / "c_gray_rgb.png")
    _photo(tmp_path / "photos" / "p1.webp", W, H)
    _photo(tmp_path / "photos" / "deep" / "p2.png", W, H)
    cfg = _cfg("folder", labels=str(lab_dir), photos=str(tmp_path / "photos"), num_classes=300, dontcare=None)
    b = build_datasets(cfg, "train")
    assert [Path(p).name for p in b.labels.paths] == ["x16.png", "b.png", "c_gray_rgb.png"]
    assert len(b.photos) == 2 and b.dontcare is None and len(b.palette) == 300
    b.labels.geometry = type(b.labels.geometry)(H, W)
    assert torch.equal(b.labels[0]["label"], torch.from_numpy(arr))
    assert torch.equal(b.labels[2]["label"], torch.from_numpy(_ids(H, W, 5, 3)))
    with pytest.warns(UserWarning, match="val_labels"):
        assert len(build_datasets(cfg, "val").labels) == 3


# ------------------------------------------------------------------------------------------ streams


def _draw(loaders, steps):
    out = []
    for _ in range(steps):
        lab, pho = loaders.next_labels(), loaders.next_photos()
        out.append((list(lab["path"]), list(pho["path"]), lab["label"].clone(), pho["image"].clone()))
    return out


def test_pairings_change_across_epochs(tmp_path):
    b = build_datasets(_folder_cfg(tmp_path), "train")
    loaders = make_loaders(b, batch_size=2, seed=0)
    steps = _draw(loaders, 6)  # 6 items / batch 2 = 3 batches per epoch
    pairs = [dict(zip(lp, pp, strict=True)) for lp, pp in (
        ([p for s in steps[:3] for p in s[0]], [p for s in steps[:3] for p in s[1]]),
        ([p for s in steps[3:] for p in s[0]], [p for s in steps[3:] for p in s[1]]))]
    assert sorted(pairs[0]) == sorted(pairs[1]) == sorted(b.labels.paths)  # each epoch: every label once
    assert pairs[0] != pairs[1]  # ... but paired with other photos
    assert loaders.epochs == (1, 1)
    # the streams are independent: the label order is not the photo order
    order = [Path(p).stem for s in steps[:3] for p in s[0]], [Path(p).stem for s in steps[:3] for p in s[1]]
    assert order[0] != order[1]


def test_streams_with_different_sizes(tmp_path):
    b = build_datasets(_folder_cfg(tmp_path, n_labels=4, n_photos=10), "train")
    loaders = make_loaders(b, batch_size=2, seed=3)
    it = iter(loaders)
    for _ in range(10):
        lab, pho = next(it)
        assert lab["label"].shape == (2, H, W) and pho["image"].shape == (2, 3, H, W)
    assert loaders.epochs == (4, 1)  # labels: 2 batches per epoch, photos: 5


def test_resume_is_exact(tmp_path):
    b = build_datasets(_folder_cfg(tmp_path, load_size=48, n_labels=5, n_photos=7), "train")
    full = _draw(make_loaders(b, batch_size=2, seed=11), 9)
    first = make_loaders(b, batch_size=2, seed=11)
    head = _draw(first, 4)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = make_loaders(b, batch_size=2, seed=11)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    tail = _draw(resumed, 5)
    for a, c in zip(full, head + tail, strict=True):
        assert a[0] == c[0] and a[1] == c[1]
        assert torch.equal(a[2], c[2]) and torch.equal(a[3], c[3])  # same crops and flips too
    # another seed draws another order
    other = _draw(make_loaders(b, batch_size=2, seed=12), 4)
    assert [s[0] for s in other] != [s[0] for s in full[:4]]


def test_resume_with_workers_and_global_rng_untouched(tmp_path):
    b = build_datasets(_folder_cfg(tmp_path, n_labels=5, n_photos=6), "train")
    ref = _draw(make_loaders(b, batch_size=2, seed=5), 5)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    loaders = make_loaders(b, batch_size=2, seed=5, num_workers=1)
    got = _draw(loaders, 3)
    state = loaders.state_dict()
    got += _draw(loaders, 0)
    assert torch.equal(torch.rand(3), expected)  # drawing batches and new epochs did not consume it
    resumed = make_loaders(b, batch_size=2, seed=5, num_workers=1)
    resumed.load_state_dict(state)
    got += _draw(resumed, 2)
    assert [g[0] for g in got] == [r[0] for r in ref] and [g[1] for g in got] == [r[1] for r in ref]
    assert all(torch.equal(g[3], r[3]) for g, r in zip(got, ref, strict=True))


def test_batch_larger_than_set(tmp_path):
    b = build_datasets(_folder_cfg(tmp_path, n_labels=3, n_photos=6), "train")
    with pytest.raises(DatasetError, match="only 3 label maps for batch size 4"):
        make_loaders(b, batch_size=4)


def test_synthetic_bundle():
    cfg = get_preset("synthetic")
    cfg.data.synthetic_train, cfg.data.synthetic_val, cfg.data.height, cfg.data.width = 6, 3, 32, 64
    b = build_datasets(cfg, "train")
    assert b.num_classes == 10 and len(b.labels) == 6 and len(b.class_names) == len(b.palette) == 10
    loaders = make_loaders(b, batch_size=2, seed=0)
    lab, pho = next(iter(loaders))
    assert lab["label"].shape == (2, H, W) and pho["image"].shape == (2, 3, H, W)
    assert len(build_datasets(cfg, "val").labels) == 3
    assert check_dataset(cfg).ok


# ------------------------------------------------------------------------------------------ checks


def test_check_report_ok(tmp_path):
    cfg = _folder_cfg(tmp_path)
    rep = check_dataset(cfg)
    assert rep.ok, rep.problems
    assert (rep.num_labels, rep.num_photos, rep.inspected_labels) == (6, 6, 6)
    assert rep.label_sizes["common"][0] == [96, 48, 6] and rep.photo_sizes["min"] == [96, 48]
    assert sum(rep.class_images) >= 6 and len(rep.class_pixels) == 5 and 0 < rep.dontcare_share < 1
    text = format_report(rep)
    assert "OK" in text and "class_1" in text
    json.dumps(rep.to_dict())
    assert preflight(cfg)[0].ok
    cfg.data.check_samples = 3
    assert check_dataset(cfg).inspected_labels == 3


def test_sample_paths_deterministic():
    paths = [f"{i:04d}" for i in range(100)]
    s = sample_paths(paths, 20)
    assert s == sample_paths(paths, 20) and len(s) == 20 and s[:5] == paths[:5] and s == sorted(s)
    assert sample_paths(paths, 0) == paths


def test_missing_cityscapes_root(tmp_path):
    rep = check_dataset(_cfg("cityscapes", root=""))
    assert not rep.ok and "data.root" in rep.problems[0] and "leftImg8bit/ and gtFine/" in rep.problems[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    rep = check_dataset(_cfg("cityscapes", root=str(empty)))
    msg = "\n".join(rep.problems)
    assert f"{empty}/gtFine/train/*/*_gtFine_labelIds.png" in msg and "--set data.root=DIR" in msg
    # pointed one level too high: suggest the right folder
    _cityscapes(tmp_path / "data" / "cityscapes")
    rep = check_dataset(_cfg("cityscapes", root=str(tmp_path / "data")))
    assert f"did you mean --set data.root={tmp_path / 'data' / 'cityscapes'}" in "\n".join(rep.problems)
    with pytest.raises(DatasetError, match="expected .*gtFine"):
        build_datasets(_cfg("cityscapes", root=str(empty)))


def test_cityscapes_color_only_labels(tmp_path):
    root = tmp_path / "cs"
    _photo(root / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_color.png", W, H)
    _photo(root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png", W, H)
    rep = check_dataset(_cfg("cityscapes", root=str(root)))
    msg = "\n".join(rep.problems)
    assert "ulm_000000_000019_gtFine_color.png" in msg and "*_gtFine_labelIds.png" in msg


def test_binary_mask_labels(tmp_path):
    cfg = _folder_cfg(tmp_path, num=2)
    bad = _label(tmp_path / "labels" / "mask.png", (_ids(48, 96, 2, 7) * 255))
    rep = check_dataset(cfg)
    msg = next(p for p in rep.problems if "mask.png" in p)
    assert str(bad) in msg and "{0, 255}" in msg and "save 0/1" in msg and "data.num_classes" in msg
    b = build_datasets(cfg)
    i = b.labels.paths.index(str(bad))
    with pytest.raises(DatasetError, match="mask.png.*save 0/1"):
        b.labels[i]
    with pytest.raises(DatasetError, match=r"\[train\].*mask.png"):
        preflight(cfg)
    assert run_check(cfg) == 1
    # raised in a worker process: still one clean message, no worker traceback inside
    loaders = make_loaders(b, batch_size=7, num_workers=1, drop_last=False)
    with pytest.raises(DatasetError, match="mask.png") as info:
        loaders.next_labels()
    assert "Traceback" not in str(info.value) and str(info.value).startswith(str(bad))


def test_label_id_out_of_range(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    bad = _label(root / "gtFine" / "train" / "aachen" / "aachen_999999_000019_gtFine_labelIds.png",
                 np.full((H, W), 40))
    rep = check_dataset(_cfg("cityscapes", root=str(root)))
    assert len(rep.problems) == 1
    assert str(bad) in rep.problems[0] and "{40}" in rep.problems[0] and "_labelIds.png" in rep.problems[0]
    b = build_datasets(_cfg("cityscapes", root=str(root)))
    with pytest.raises(DatasetError, match="aachen_999999"):
        b.labels[b.labels.paths.index(str(bad))]
    # folder: a generic id too large suggests the class count
    cfg = _folder_cfg(tmp_path / "f", num=5)
    _label(tmp_path / "f" / "labels" / "z.png", np.full((H, W), 7))
    msg = "\n".join(check_dataset(cfg).problems)
    assert "z.png" in msg and "--set data.num_classes=8" in msg


def test_color_labels_in_folder(tmp_path):
    cfg = _folder_cfg(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "labels" / "colour.png")
    rep = check_dataset(cfg)
    msg = next(p for p in rep.problems if "colour.png" in p)
    assert str(tmp_path / "labels" / "colour.png") in msg and "index PNG" in msg and "mode RGB" in msg
    b = build_datasets(cfg)
    with pytest.raises(DatasetError, match="colour.png.*index PNG"):
        b.labels[b.labels.paths.index(str(tmp_path / "labels" / "colour.png"))]


def test_corrupt_photo(tmp_path):
    cfg = _folder_cfg(tmp_path)
    bad = _truncate(_photo(tmp_path / "photos" / "broken.png", 96, 48, seed=5))
    (tmp_path / "photos" / "notanimage.jpg").write_text("hello")
    rep = check_dataset(cfg)
    msg = "\n".join(rep.problems)
    assert str(bad) in msg and "notanimage.jpg" in msg and "data.skip_corrupt=true" in msg
    b = build_datasets(cfg)
    with pytest.raises(DatasetError, match="broken.png"):
        b.photos[b.photos.paths.index(str(bad))]
    # with skip_corrupt: reported, skipped, not a problem; the dataset substitutes another photo
    cfg.data.skip_corrupt = True
    rep = check_dataset(cfg)
    assert rep.ok and str(bad) in rep.skipped and any("skipping 2 unreadable photos" in w for w in rep.warnings)
    b = build_datasets(cfg)
    with pytest.warns(UserWarning) as record:
        item = b.photos[b.photos.paths.index(str(bad))]
    assert any("broken.png" in str(w.message) for w in record)
    assert item["path"] != str(bad)


def test_all_photos_corrupt_after_skipping(tmp_path):
    cfg = _folder_cfg(tmp_path, n_photos=2, skip_corrupt=True)
    for p in (tmp_path / "photos").iterdir():
        _truncate(p)
    rep = check_dataset(cfg)
    assert any("no readable photos left" in p for p in rep.problems)


def test_small_photos_and_empty_folders(tmp_path):
    cfg = _folder_cfg(tmp_path)
    for i in range(6):
        _photo(tmp_path / "photos" / f"{i:03d}.jpg", 40, 20, seed=i)
    msg = "\n".join(check_dataset(cfg).problems)
    assert "000.jpg (40x20)" in msg and "data.height/data.width" in msg
    cfg.data.load_size = 48  # train: short side must reach load_size as well
    _photo(tmp_path / "photos" / "000.jpg", 64, 40)
    msg = "\n".join(check_dataset(cfg).problems)
    assert "data.load_size" in msg
    # empty folders
    (tmp_path / "nolabels").mkdir()
    (tmp_path / "jpglabels").mkdir()
    _photo(tmp_path / "jpglabels" / "a.jpg", W, H)
    cfg = _cfg("folder", labels=str(tmp_path / "nolabels"), photos=str(tmp_path / "nophotos"), num_classes=3)
    msg = "\n".join(check_dataset(cfg).problems)
    assert f"no label maps under {tmp_path / 'nolabels'}" in msg and "data.photos=" in msg
    cfg.data.labels = str(tmp_path / "jpglabels")
    assert "lossless" in "\n".join(check_dataset(cfg).problems)
    cfg = _cfg("folder", labels="", photos="", num_classes=0)
    msg = "\n".join(check_dataset(cfg).problems)
    assert "data.labels is not set" in msg and "data.num_classes=N" in msg


def test_run_check_json_and_text(tmp_path, capsys):
    cfg = _folder_cfg(tmp_path)
    assert run_check(cfg) == 0
    assert "dataset check: folder (train)" in capsys.readouterr().out
    assert run_check(cfg, json_out=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["train"]["ok"] and data["train"]["num_labels"] == 6
    cfg.data.val_labels, cfg.data.val_photos = str(tmp_path / "labels"), str(tmp_path / "photos")
    assert run_check(cfg, json_out=True) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"train", "val"}


def test_class_file_and_mismatch(tmp_path):
    jf = tmp_path / "classes.json"
    jf.write_text(json.dumps([{"name": "bg", "color": [0, 0, 0]}, {"name": "road", "color": "#804080"},
                              {"name": "car"}]))
    names, colors = load_class_file(jf)
    assert names == ["bg", "road", "car"] and colors[1] == (128, 64, 128) and len(colors) == 3
    cf = tmp_path / "classes.csv"
    cf.write_text("name,r,g,b\nbg,0,0,0\nroad,128,64,128\n")
    assert load_class_file(cf) == (["bg", "road"], [(0, 0, 0), (128, 64, 128)])
    bad = tmp_path / "bad.csv"
    bad.write_text("bg,0,0\n")
    with pytest.raises(ConfigError, match="bad.csv.*name,r,g,b"):
        load_class_file(bad)
    (tmp_path / "badcolor.json").write_text('[{"name": "x", "color": [0, 0, 300]}]')
    with pytest.raises(ConfigError, match="badcolor.json.*0..255"):
        load_class_file(tmp_path / "badcolor.json")
    cfg = _folder_cfg(tmp_path / "f", num=3, class_file=str(jf))
    b = build_datasets(cfg)
    assert b.class_names == ["bg", "road", "car"] and b.palette[1] == (128, 64, 128)
    cfg.data.class_file = str(cf)
    assert "lists 2 classes but data.num_classes=3" in "\n".join(check_dataset(cfg).problems)


def test_palettes():
    assert len(CITYSCAPES) == 35 and len(ADE20K_NAMES) == 151 and len(COCO_STUFF_NAMES) == 183
    for kind, n in (("cityscapes", 35), ("ade20k", 151), ("coco", 183), ("folder", 7)):
        names, pal = class_info(kind, n)
        assert len(names) == len(pal) == n and all(len(c) == 3 for c in pal)
    assert class_info("cityscapes", 35)[1][7] == (128, 64, 128)
    p = make_palette(256, dontcare=0)
    assert p == make_palette(256, dontcare=0) and p[0] == (0, 0, 0) and len(set(p)) == 256
    assert all(0 <= c <= 255 for col in p for c in col)
    rgb = colorize(torch.tensor([[0, 1], [2, 99]]), make_palette(3, dontcare=None))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and tuple(rgb[1, 1]) == (255, 255, 255)


def test_unknown_split_and_class_count(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    with pytest.raises(ConfigError, match="unknown split"):
        build_datasets(_cfg("cityscapes", root=str(root)), "test")
    with pytest.raises(DatasetError, match="num_classes=19.*35 ids"):
        build_datasets(_cfg("cityscapes", root=str(root), num_classes=19))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_datasets(_cfg("cityscapes", root=str(root)))  # no warnings for a correct set-up


def test_sampler_rank_split():
    from usis.data.unpaired import EpochBatchSampler

    ranks = [EpochBatchSampler(5, 1, seed=0, stream=0, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    idx = [[b[0][0] for b in s] for s in ranks]
    assert len(idx[0]) == len(idx[1]) == 3 and set(idx[0] + idx[1]) == set(range(5))  # padded like DDP
    seeds = [[b[0][1] for b in s] for s in ranks]
    assert seeds[0] != seeds[1]  # ranks augment differently
    with pytest.raises(ConfigError, match="torch.distributed is not initialised"):
        make_loaders(build_datasets(_cfg("synthetic", synthetic_train=4)), 2, distributed=True)


# ------------------------------------------------------------------------------------ the CLI on folders

FOLDER_TINY = [*TINY_NETS, "train.batch_size=2", "train.sample_every=0", "train.eval_every=-1", "train.ckpt_every=0",
               "train.num_threads=1", "data.height=64", "data.width=64", "data.load_size=0"]


def _cli_args(labels: Path, photos: Path, num: int, iters: int = 5) -> list[str]:
    args = ["train", "--preset", "folder", "--out", str(labels.parent / "run"), "--iters", str(iters),
            "--no-progress", "--set", f"data.labels={labels}", "--set", f"data.photos={photos}",
            "--set", f"data.num_classes={num}"]
    for s in FOLDER_TINY:
        args += ["--set", s]
    return args


def test_usis_train_on_a_folder(tmp_path):
    labels, photos = _folder(tmp_path, n_labels=5, n_photos=7, num=5, pw=80, ph=72)
    proc = subprocess.run([sys.executable, "-m", "usis.cli", *_cli_args(labels, photos, 5)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # no validation split: one warning line as the CLI prints it, not Python's file:line: UserWarning + source
    assert "usis: warning: data.val_labels / data.val_photos not set" in proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
    state = torch.load(tmp_path / "run/checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 5
    assert state["config"]["data"]["num_classes"] == 5
    assert state["G"]["fc.weight"].shape[1] == 5 + 4  # one-hot classes from the data + z_dim


def test_usis_train_refuses_a_bad_folder_in_seconds(tmp_path, capsys):
    from usis.cli import main

    labels, photos = _folder(tmp_path, n_labels=4, n_photos=4, num=5, pw=80, ph=72)
    _label(labels / "mask.png", np.where(_ids(16, 16, 2, 9) > 0, 255, 0).astype(np.uint8))
    assert main(_cli_args(labels, photos, 5)) == 2
    err = capsys.readouterr().err
    assert "mask.png" in err and "255" in err
    assert not (tmp_path / "run/checkpoints/latest.pt").exists()
