"""`usis synthesize` and `USISPipeline.synthesize`: a labelled dataset from label maps, on a tiny checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import set_args
from huggingface_hub import DatasetCard
from PIL import Image

from usis import USISPipeline
from usis.cli import main
from usis.data.palette import load_class_file
from usis.data.synthetic import CLASS_NAMES, SyntheticLabels
from usis.errors import GenerateError
from usis.generate import resize_nearest
from usis.synthesis import select
from usis.synthesize import PAUSE_ENV, STAGING

N_MAPS = 4


def _save(ids: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Four synthetic label maps in nested folders; one of them 32 x 64 (resized to the model's 64 x 64)."""
    root = tmp_path_factory.mktemp("labels")
    maps = SyntheticLabels(3, 64, 64, split="test")
    _save(maps[0]["label"].numpy(), root / "a.png")
    _save(maps[1]["label"].numpy(), root / "city" / "b.png")
    _save(maps[2]["label"].numpy(), root / "city" / "deep" / "c.png")
    _save(SyntheticLabels(1, 32, 64, split="test")[0]["label"].numpy(), root / "city" / "d.png")
    return root


STEMS = ["a", "city/b", "city/d", "city/deep/c"]
DATASET_ARGS = ["--n", "2", "--seed", "5", "--batch-size", "3", "--one-style"]


def _cmd(ckpt, labels, out, *extra):
    return ["synthesize", "--checkpoint", str(ckpt), "--labels", str(labels), "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _ids(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


@pytest.fixture(scope="module")
def dataset(ckpt, tree, tmp_path_factory):
    """`usis synthesize --n 2 --seed 5 --batch-size 3 --one-style` of the tree (no filter): pair k of every map
    has seed 5 + k."""
    out = tmp_path_factory.mktemp("ds") / "out"
    assert main(_cmd(ckpt, tree, out, *DATASET_ARGS)) == 0
    return out


# --------------------------------------------------------------------------------------------- layout


def test_k_pairs_per_map_with_the_input_ids_in_nested_folders(dataset, tree, ckpt, tmp_path, capsys):
    names = [f"{s}_s{k}.png" for s in STEMS for k in (5, 6)]
    for sub in ("images", "labels"):
        assert sorted(p.relative_to(dataset / sub).as_posix() for p in (dataset / sub).rglob("*.png")) == sorted(names)
    for stem in STEMS:
        source = _ids(tree / f"{stem}.png")
        for k in (5, 6):
            with Image.open(dataset / "labels" / f"{stem}_s{k}.png") as im:
                assert im.mode == "L" and im.size == (64, 64)
            assert np.array_equal(_ids(dataset / "labels" / f"{stem}_s{k}.png"), resize_nearest(source, 64, 64))
            with Image.open(dataset / "images" / f"{stem}_s{k}.png") as im:
                assert im.mode == "RGB" and im.size == (64, 64)
    assert not np.array_equal(_ids(dataset / "images/a_s5.png"), _ids(dataset / "images/a_s6.png"))  # seeds differ

    # the images are `usis generate`'s for the same seeds (and batches)
    gen = tmp_path / "gen"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(tree), "--out", str(gen), "--n", "2",
                 "--seed", "5", "--batch-size", "3", "--device", "cpu"]) == 0
    for stem in STEMS:
        for k in (5, 6):
            assert (gen / f"{stem}_seed{k}.png").read_bytes() == (dataset / "images" / f"{stem}_s{k}.png").read_bytes()

    names_, colours = load_class_file(dataset / "classes.json")  # a data.class_file
    assert len(names_) == len(colours) == 10 and names_[1] == "sky"
    assert not (dataset / STAGING).exists() and not list(dataset.rglob("*.tmp"))


def test_the_manifest_lists_every_pair_with_its_seed_and_score(dataset):
    rows = _manifest(dataset)
    assert [(r["source"], r["seed"]) for r in rows] == [(f"{s}.png", k) for s in STEMS for k in (5, 6)]
    for r in rows:
        assert r["image"] == f"images/{r['source'][:-4]}_s{r['seed']}.png" and r["label"] == r["image"].replace(
            "images/", "labels/") and r["kept"] is True
        assert set(r["score"]) == {"miou", "pixel_accuracy"}
        assert 0 <= r["score"]["miou"] <= 100 and 0 <= r["score"]["pixel_accuracy"] <= 100
        counts = np.bincount(_ids(dataset / r["label"]).ravel(), minlength=10)
        assert r["pixels"] == {str(i): int(c) for i, c in enumerate(counts) if c}
    settings = json.loads((dataset / "synthesize.json").read_text())
    assert settings["complete"] and settings["pairs"] == settings["kept"] == 8 and settings["scorer"] == "S"


def test_a_rerun_writes_nothing(dataset, ckpt, tree, capsys):
    before = _snapshot(dataset)
    assert main(_cmd(ckpt, tree, dataset, *DATASET_ARGS)) == 0
    assert "nothing generated" in capsys.readouterr().err
    assert _snapshot(dataset) == before  # same files, same bytes, not even rewritten


def test_data_check_folder_preset_accepts_the_output(dataset, capsys):
    assert main(["data", "check", "--preset", "folder", *set_args([
        f"data.labels={dataset / 'labels'}", f"data.photos={dataset / 'images'}", "data.num_classes=10",
        f"data.class_file={dataset / 'classes.json'}", "data.dontcare=0", "data.height=64", "data.width=64",
        "data.load_size=0"])]) == 0
    out = capsys.readouterr().out
    assert "8 found" in out and "OK" in out and "sky" in out


# ------------------------------------------------------------------------------------------- resuming


def kill_after_the_first_batch(cmd: list[str], out: Path) -> Path:
    """Run `usis` with ``cmd`` in a subprocess (two seconds' pause after each batch), ``kill -9`` it once its
    first batch is recorded; returns the staging records file."""
    env = dict(os.environ, **{PAUSE_ENV: "2"})
    proc = subprocess.Popen([sys.executable, "-m", "usis.cli", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    records = out / STAGING / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (records.is_file() and records.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    return records


def test_kill_9_then_rerun_gives_the_files_of_an_uninterrupted_run(ckpt, tree, tmp_path):
    args = ["--n", "2", "--seed", "0", "--batch-size", "2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(_cmd(ckpt, tree, whole, *args)) == 0

    records = kill_after_the_first_batch(_cmd(ckpt, tree, killed, *args), killed)
    staged = list((killed / STAGING).rglob("*.png"))
    assert 1 <= len(staged) < 8 and not (killed / "manifest.jsonl").exists()  # killed part-way
    # what a kill in the middle of a write leaves: a torn record, an atomic write's temporary file
    with open(records, "a") as f:
        f.write('{"source": "city/d.p')
    (killed / STAGING / "images" / "a_s1.png.k9xyz.tmp").write_bytes(b"\x89PNG half")

    from usis.synthesize import _read_records, _repair_records

    assert len(_read_records(killed)) == records.read_text().count("\n")  # the torn record is not read...
    _repair_records(killed)
    assert records.read_text().endswith("}\n")  # ...and is cut off before the next one is appended
    assert main(_cmd(ckpt, tree, killed, *args)) == 0
    a, b = _snapshot(whole), _snapshot(killed)
    assert a.keys() == b.keys()
    assert all(a[k][0] == b[k][0] for k in a), [k for k in a if a[k][0] != b[k][0]]


# ------------------------------------------------------------------------------------------- bad input


def test_a_bad_map_anywhere_is_exit_2_naming_it_and_nothing_is_written(ckpt, tree, tmp_path, capsys):
    import shutil

    def bad_tree(name: str, write) -> Path:
        root = tmp_path / name
        shutil.copytree(tree, root)
        write(root / "city" / "deep" / "zz_bad.png")
        return root

    ids = np.zeros((64, 64), np.uint8)
    ids[:4, :4] = 200
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 90
    cases = {
        "ids": (lambda p: _save(ids, p), "{200}"),
        "photo": (lambda p: Image.fromarray(rgb, "RGB").save(p), "colour image"),
        "unreadable": (lambda p: p.write_bytes(b"not a png"), "cannot read"),
    }
    for name, (write, says) in cases.items():
        out = tmp_path / f"out_{name}"
        assert main(_cmd(ckpt, bad_tree(name, write), out, "--n", "2")) == 2
        err = capsys.readouterr().err
        assert "zz_bad.png" in err and says in err and "Traceback" not in err, err
        assert not out.exists()


def test_an_out_folder_of_other_settings_is_refused(dataset, ckpt, tree, tmp_path, capsys):
    before = _snapshot(dataset)
    assert main(_cmd(ckpt, tree, dataset, *DATASET_ARGS, "--local-style")) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(_cmd(ckpt, tree, dataset, "--n", "2", "--seed", "5")) == 2  # per-map seeds: not how it was made
    assert "seeds: 'one-style' there, 'per-map' now" in capsys.readouterr().err
    assert main(_cmd(ckpt, tree, dataset, "--n", "1", "--seed", "5", "--one-style")) == 2  # fewer pairs than it holds
    assert "do not make" in capsys.readouterr().err
    assert _snapshot(dataset) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    assert main(_cmd(ckpt, tree, other)) == 2
    assert "not empty" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- filtering


def test_keep_keeps_the_best_scores_and_reselects_on_rerun(dataset, ckpt, tree, tmp_path, capsys):
    out = tmp_path / "kept"
    args = DATASET_ARGS
    assert main(_cmd(ckpt, tree, out, *args, "--keep", "0.6")) == 0  # round(0.6 * 8) = 5
    rows = _manifest(out)
    assert len(rows) == 8 and sum(r["kept"] for r in rows) == 5
    best = sorted(rows, key=lambda r: -r["score"]["miou"])[:5]
    assert {r["image"] for r in rows if r["kept"]} == {r["image"] for r in best}
    assert min(r["score"]["miou"] for r in best) >= max(r["score"]["miou"] for r in rows if not r["kept"])
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert on_disk == {r["image"] for r in best}
    assert {p.relative_to(out).as_posix() for p in (out / "labels").rglob("*.png")} == {r["label"] for r in best}
    assert [(r["seed"], r["score"]) for r in rows] == [(r["seed"], r["score"]) for r in _manifest(dataset)]

    # a threshold on rerun: only re-selection; then everything: the rejected images come back, byte-identical
    cut = sorted(r["score"]["miou"] for r in rows)[5]
    assert main(_cmd(ckpt, tree, out, *args, "--min-score", str(cut))) == 0
    assert {r["image"] for r in _manifest(out) if r["kept"]} == {r["image"] for r in rows if r["score"]["miou"] >= cut}
    assert main(_cmd(ckpt, tree, out, *args)) == 0
    full = _snapshot(dataset)
    assert {k: v[0] for k, v in _snapshot(out).items() if k != "synthesize.json"} == {
        k: v[0] for k, v in full.items() if k != "synthesize.json"}
    capsys.readouterr()

    assert select([{"miou": 3.0}, None, {"miou": 3.0}, {"miou": 9.0}], keep=0.5) == [True, False, False, True]
    assert select([{"miou": 3.0}, None], min_score=3.0) == [True, False]


# ------------------------------------------------------------------------------------------ dataset card


def _card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), text


def test_the_dataset_card_counts_the_pairs_and_names_the_filter(ckpt, tree, tmp_path):
    out = tmp_path / "carded"
    assert main(_cmd(ckpt, tree, out, *DATASET_ARGS, "--keep", "0.5")) == 0  # 4 of 8 pairs
    meta, card = _card(out)
    settings = json.loads((out / "synthesize.json").read_text())
    kept = sum(r["kept"] for r in _manifest(out))
    assert settings["pairs"] == 8 and settings["kept"] == kept == 4
    assert meta["task_categories"] == ["image-segmentation"] and meta["task_ids"] == ["semantic-segmentation"]
    assert meta["size_categories"] == ["n<1K"] and {"usis", "synthetic"} <= set(meta["tags"])
    assert "license" not in meta and "# license: not set" in card
    assert DatasetCard(card).data.task_categories == ["image-segmentation"]  # the Hub's parser reads it
    assert "# usis synthesized dataset: 4 image / label pairs" in card
    assert "from 4 label maps: 8 pairs generated, **4 kept** and 4 rejected" in card
    assert "score filter: the best 50 % by mIoU kept (`--keep 0.5`)" in card
    assert f"sha256 `{settings['generator']}`" in card and "step 1" in card and str(ckpt) in card
    assert "its model card: none (a training checkpoint" in card
    assert "pair k of every map has seed `seed + k`" in card and "`--seed` 5" in card
    assert "**ignore id: 0**" in card and "ignore_index=0" in card and "reduce_zero_label=False" in card
    assert 'data_prefix=dict(img_path="images", seg_map_path="labels")' in card and 'img_suffix=".png"' in card
    assert 'cast_column("label", Image())' in card
    for i, name in enumerate(CLASS_NAMES):
        assert f"| {i} | {name}" in card
    # another selection rewrites it; the same one leaves it as it is (byte for byte, not even rewritten)
    assert main(_cmd(ckpt, tree, out, *DATASET_ARGS, "--keep", "0.75")) == 0
    assert "**6 kept** and 2 rejected" in _card(out)[1]
    before = _snapshot(out)
    assert main(_cmd(ckpt, tree, out, *DATASET_ARGS, "--keep", "0.75")) == 0
    assert _snapshot(out) == before


def test_the_card_of_a_filtered_dataset_says_how_it_was_filtered(filtered):
    out, _ = filtered
    _, card = _card(out)
    losses = json.loads((out / "class_losses.json").read_text())
    settings = json.loads((out / "synthesize.json").read_text())
    assert f"**{settings['kept']} kept** and 0 rejected; no score filter: every pair kept" in card
    assert "exceeds 1.1 x its class's mean loss is labelled 0 (ignored)" in card
    assert "re-sampling `hard`: 1 to 3 pairs per map by the rank of its hardness" in card
    assert f"class means of `{losses['segmenter_name']}` over {losses['real_pairs']} real labelled photos" in card


# ------------------------------------------------------------------------------------------ Python API


def test_pipeline_synthesize_shares_the_cli_code(ckpt, tree, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(_cmd(ckpt, tree / "a.png", out, "--n", "2", "--seed", "3", "--batch-size", "2", "--one-style")) == 0
    rows = _manifest(out)
    pipe = USISPipeline.from_pretrained(ckpt, device="cpu")
    pairs = pipe.synthesize(Image.open(tree / "a.png"), seeds=[3, 4], batch_size=2)
    assert [p.seed for p in pairs] == [3, 4] and all(p.kept for p in pairs)
    for p, r in zip(pairs, rows, strict=True):
        assert np.array_equal(p.image, _ids(out / r["image"]))
        assert np.array_equal(p.label, _ids(out / r["label"])) and p.pixels == r["pixels"]
        assert p.score == r["score"]
    kept = pipe.synthesize([_ids(tree / "a.png"), _ids(tree / "city/b.png")], seeds=[0, 1], keep=0.5)
    assert [p.index for p in kept] == [0, 0, 1, 1] and sum(p.kept for p in kept) == 2
    assert kept[0].label_pil(pipe.num_classes).mode == "L"

    # an export has no S: the API says how to score; the CLI writes unscored pairs, and refuses to filter
    exp = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(exp)]) == 0
    with pytest.raises(GenerateError, match="without the segmenter S.*score=False"):
        USISPipeline.from_pretrained(exp, device="cpu").synthesize(_ids(tree / "a.png"))
    assert USISPipeline.from_pretrained(exp, device="cpu").synthesize(_ids(tree / "a.png"), score=False)[0].score is None
    assert main(_cmd(exp, tree / "a.png", tmp_path / "unscored")) == 0
    assert "not scored" in capsys.readouterr().err
    assert _manifest(tmp_path / "unscored")[0]["score"] is None
    assert main(_cmd(exp, tree / "a.png", tmp_path / "refused", "--keep", "0.5")) == 2
    assert "training checkpoint" in capsys.readouterr().err and not (tmp_path / "refused").exists()


# --------------------------------------------------------------------------------- benchmarks/downstream


def test_downstream_benchmark_runs_end_to_end_at_a_tiny_size(ckpt, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("downstream", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "downstream.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--checkpoints", str(ckpt), str(ckpt), "--maps", "6", "--few", "2", "--test", "2", "--steps", "1",
            "--work", str(tmp_path / "work"), "--report-dir", str(tmp_path / "report"), "--threads", "1"]
    assert mod.main(argv) == 0
    data = json.loads((tmp_path / "report" / "downstream.json").read_text())
    assert list(data["rows"]) == mod.ROWS and all(r["n"] == 2 for r in data["rows"].values())
    rows = data["rows"]
    assert rows["usis_kept"]["train_pairs"] == 4 and rows["few_real+usis"]["train_pairs"] == 8
    assert rows["usis_seeds"]["train_pairs"] == rows["usis_filtered"]["train_pairs"] == 6
    recipe = rows["usis_filtered_resampled"]["train_pairs"]
    assert rows["usis_resampled"]["train_pairs"] == recipe and 6 < recipe < 6 * mod.RESAMPLE_N  # 1 to 4 per map
    assert rows["few10"]["train_pairs"] == 6 and rows["few10+usis_half"]["train_pairs"] == 6 + recipe  # 6 maps only
    assert rows["few50_ft"]["train_pairs"] == 2 and len(rows["usis_filtered"]["ignored"]) == 2
    assert "| oracle |" in (tmp_path / "report" / "downstream.md").read_text()
    assert (tmp_path / "report" / "downstream_pairs.png").is_file()
    results = sorted((tmp_path / "work" / "results").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert mod.main(argv) == 0  # a rerun reuses every result
    assert [p.stat().st_mtime_ns for p in results] == stamps


# ------------------------------------------------------------------------- seeds, pixel filter, resampling


def test_two_maps_get_noise_of_their_own_by_default_and_one_style_on_request(ckpt, tree, tmp_path):
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("one.png", "two.png"):  # the same layout twice
        (twins / name).write_bytes((tree / "a.png").read_bytes())
    for extra, same in (([], False), (["--one-style"], True)):
        out = tmp_path / f"out{len(extra)}"
        assert main(_cmd(ckpt, twins, out, "--n", "1", "--seed", "3", *extra)) == 0
        rows = _manifest(out)
        images = [_ids(out / r["image"]) for r in rows]
        assert (rows[0]["seed"] == rows[1]["seed"]) == same
        assert np.array_equal(images[0], images[1]) == same
    from usis.synthesis import pair_seed

    assert [r["seed"] for r in _manifest(tmp_path / "out0")] == [pair_seed(3, "one.png", 0), pair_seed(3, "two.png", 0)]
    assert [r["seed"] for r in _manifest(tmp_path / "out1")] == [3, 3]


def test_the_pixel_filter_ignores_exactly_the_pixels_over_the_margin():
    import torch

    from usis.synthesis import PixelFilter, PixelLosses, class_mean_losses

    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 6, 5))
    known = torch.rand(2, 6, 5) * 3  # the segmenter's loss at every pixel
    known[labels == 0] = float("nan")  # class 0 is the don't-care id: not scored
    losses = PixelLosses("known", "known", lambda images, lab: known.clone())
    means = class_mean_losses(losses, [(None, labels)], 4)
    assert means[0] is None
    for c in (1, 2, 3):
        assert means[c] == pytest.approx(float(known[labels == c].double().mean()))
    means[3] = None  # a class never seen on real photos is never filtered
    filt = PixelFilter(losses, means, margin=1.25, ignore_id=0)
    filtered, fractions = filt(torch.zeros(2, 3, 6, 5), labels)
    limit = torch.tensor([float("inf"), 1.25 * means[1], 1.25 * means[2], float("inf")])
    over = known > limit[labels]
    assert torch.equal(filtered, torch.where(over, 0, labels))
    assert 0 < int(over.sum()) < int((labels > 0).sum())
    for i in range(2):
        for c in range(4):
            n = int((labels[i] == c).sum())
            if n:
                assert fractions[i][str(c)] == pytest.approx(float((over[i] & (labels[i] == c)).sum()) / n, abs=1e-4)


def _filter_segmenter(folder: Path) -> list[str]:
    """A TorchScript segmenter of the 10 synthetic classes (a random 3x3 convolution: each class has its own
    losses), 4 real labelled photos, and the arguments that make `usis synthesize` filter with them."""
    import torch

    from usis.data.synthetic import CLASS_NAMES, SyntheticPaired

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    net = torch.nn.Conv2d(3, 10, 3, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 marks TorchScript deprecated
        torch.jit.script(net).save(str(folder / "seg.pt"))
    (folder / "seg.json").write_text(json.dumps({"num_classes": 10, "map": {str(i): i for i in range(10)},
                                                 "names": list(CLASS_NAMES), "input": "minus1_1"}))
    real = SyntheticPaired(4, 64, 64, split="val")
    for i in range(4):
        item = real[i]
        rgb = ((item["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        (folder / "photos").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(folder / "photos" / f"r{i}.jpg")
        _save(item["label"].numpy(), folder / "labels" / f"r{i}.png")
    return ["--filter-segmenter", "torchscript", "--filter-segmenter-path", str(folder / "seg.pt"),
            "--real-photos", str(folder / "photos"), "--real-labels", str(folder / "labels")]


FILTER_ARGS = ["--n", "3", "--seed", "1", "--batch-size", "2", "--pixel-filter", "1.1", "--resample", "hard"]


@pytest.fixture(scope="module")
def filtered(ckpt, tree, tmp_path_factory):
    """`usis synthesize --pixel-filter 1.1 --resample hard --n 3` of the tree, with a TorchScript filter."""
    root = tmp_path_factory.mktemp("filtered")
    args = [*FILTER_ARGS, *_filter_segmenter(root / "filter")]
    out = root / "out"
    assert main(_cmd(ckpt, tree, out, *args)) == 0
    return out, args


def test_the_filtered_and_resampled_dataset_says_what_it_did(filtered, tree):
    out, _ = filtered
    rows = _manifest(out)
    classes = json.loads((out / "classes.json").read_text())
    assert classes["ignore_id"] == classes["dontcare"] == 0
    means = json.loads((out / "class_losses.json").read_text())["class_means"]
    assert means[0] is None and all(m > 0 for m in means[1:] if m is not None)
    per_map: dict[str, list[dict]] = {}
    for r in rows:
        per_map.setdefault(r["source"], []).append(r)
        assert {"ignored", "hardness", "samples", "pixels", "score", "seed"} <= r.keys()
    counts = {s: len(v) for s, v in per_map.items()}
    assert set(counts) == {f"{s}.png" for s in STEMS} and all(1 <= c <= 3 for c in counts.values())
    assert all(r["samples"] == counts[r["source"]] for r in rows)
    by_hardness = sorted(per_map, key=lambda s: per_map[s][0]["hardness"])
    assert counts[by_hardness[0]] == 1 and counts[by_hardness[-1]] == 3  # the easiest one, the hardest n
    dropped = 0
    for r in rows:  # the label files hold the source map with exactly the recorded fractions ignored
        source = resize_nearest(_ids(tree / r["source"]), 64, 64)
        written = _ids(out / r["label"])
        changed = written != source
        assert (written[changed] == 0).all()
        for c, frac in r["ignored"].items():
            on = source == int(c)
            assert frac == pytest.approx(float(changed[on].sum()) / on.sum(), abs=1e-4)
        dropped += int(changed.sum())
    assert dropped > 0  # the margin filters something


def test_a_filtered_rerun_writes_nothing_and_reuses_the_class_means(filtered, ckpt, tree, monkeypatch, capsys):
    out, args = filtered
    before = _snapshot(out)

    def no_recount(*a, **k):
        raise AssertionError("the class means were computed again")

    monkeypatch.setattr("usis.synthesize.class_mean_losses", no_recount)
    assert main(_cmd(ckpt, tree, out, *args)) == 0
    assert "nothing generated" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_the_ignore_id_round_trips_through_data_check(filtered, capsys):
    out, _ = filtered
    assert main(["data", "check", "--preset", "folder", *set_args([
        f"data.labels={out / 'labels'}", f"data.photos={out / 'images'}", "data.num_classes=10",
        f"data.class_file={out / 'classes.json'}", "data.dontcare=0", "data.height=64", "data.width=64",
        "data.load_size=0"])]) == 0
    assert "OK" in capsys.readouterr().out


def test_kill_9_then_rerun_with_the_filter_and_resampling(filtered, ckpt, tree, tmp_path):
    whole, args = filtered
    killed = tmp_path / "killed"
    kill_after_the_first_batch(_cmd(ckpt, tree, killed, *args), killed)
    assert list((killed / STAGING / "labels").glob("*.png")) and not (killed / "manifest.jsonl").exists()
    assert main(_cmd(ckpt, tree, killed, *args)) == 0
    a, b = _snapshot(whole), _snapshot(killed)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k][0] != b[k][0] and k != "synthesize.json"]
    assert not differ, differ


def test_pipeline_synthesize_has_the_same_options(filtered, ckpt, tree):
    out, args = filtered
    folder = Path(args[args.index("--filter-segmenter-path") + 1]).parent
    pipe = USISPipeline.from_pretrained(ckpt, device="cpu")
    maps = [_ids(tree / "a.png"), _ids(tree / "city/b.png"), _ids(tree / "city/deep/c.png")]
    plain = pipe.synthesize(maps, score=False)  # one pair per map, each map with noise of its own
    assert len({p.seed for p in plain}) == 3
    assert len({p.seed for p in pipe.synthesize(maps, score=False, one_style=True, seed=4)}) == 1
    filt = pipe.pixel_filter(1.1, segmenter="torchscript", segmenter_path=str(folder / "seg.pt"),
                             real_photos=str(folder / "photos"), real_labels=str(folder / "labels"))
    assert filt.class_means == json.loads((out / "class_losses.json").read_text())["class_means"]
    pairs = pipe.synthesize(maps, score=False, n=3, pixel_filter=filt, resample="hard")
    per_map = [sum(p.index == i for p in pairs) for i in range(3)]
    assert sorted(per_map) == [1, 2, 3] and all(p.samples == per_map[p.index] for p in pairs)
    for p in pairs:
        source = maps[p.index]
        assert np.array_equal(p.label[p.label != source], np.zeros(int((p.label != source).sum()), np.int64))
        assert p.pixels == {str(i): int(c) for i, c in enumerate(np.bincount(source.ravel())) if c}
        assert set(p.ignored) == set(p.pixels) and p.hardness is not None
    with pytest.raises(GenerateError, match="pixel_filter"):
        pipe.synthesize(maps, score=False, resample="hard")
