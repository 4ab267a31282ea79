"""``usis app`` without a browser: painting (canvas -> ids, fill), starting maps, uploads, generating with
seeds and per-region styles, downloads, the page's handlers and their messages, and the command."""

import copy
import dataclasses
import socket
import sys
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY, set_args
from PIL import Image

from usis.app import (
    LabelApp,
    Shot,
    block_mode,
    canvas_to_ids,
    check_map_size,
    color_tolerance,
    distinct_palette,
    flood_fill,
    resolve_checkpoint,
)
from usis.cli import main
from usis.data.palette import CITYSCAPES
from usis.errors import CheckpointError, GenerateError, UsisError
from usis.utils.images import to_uint8

# The demo's shape (64x128: the editor shows it 4x enlarged) with tiny networks and per-pixel noise.
APP_TINY = TINY + ["data.width=128", "model.pixel_noise=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("apprun")
    assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "2", "--no-progress",
                 *set_args(APP_TINY)]) == 0
    return out


@pytest.fixture(scope="module")
def app(run):
    return LabelApp.from_checkpoint(run, device="cpu")


def _scene(app) -> np.ndarray:
    ids = app.blank(1)  # sky
    ids[32:] = 2  # road
    ids[40:56, 20:40] = 5  # a car
    ids[10:20, 90:100] = 9  # a sign
    return ids


# ------------------------------------------------------------------------------------------ painting


def test_palette_gives_every_class_its_own_colour():
    palette = [c for _, c in CITYSCAPES]  # five classes share black, car and licence plate share a blue
    colors = distinct_palette(palette)
    assert len({tuple(c) for c in colors.tolist()}) == len(palette) == 35
    assert [tuple(c) for c in colors[:1]] == [(0, 0, 0)] and tuple(colors[26]) == (0, 0, 142)  # first ones kept
    for k, c in enumerate(palette):  # a colour of its own is left as it is
        if palette.index(c) == k:
            assert tuple(colors[k]) == c
    assert 0 < color_tolerance(colors) <= 40


def test_the_painted_canvas_becomes_ids(app):
    assert app.scale == 4 and app.canvas_size == (256, 512)
    base = _scene(app)
    canvas = app.render(base)
    assert canvas.shape == (256, 512, 3)
    assert np.array_equal(app.commit(canvas, base), base)  # nothing painted: the same map
    assert np.array_equal(app.commit(None, base), base)
    sky, car, road = app.colors[1], app.colors[5], app.colors[2]
    painted = canvas.copy()
    painted[8:24, 40:120] = car  # a brush stroke: model pixels (2..5, 10..29)
    painted[8:24, 120:122] = (sky.astype(int) + car) // 2  # its anti-aliased rim: a blend, near no palette colour
    painted[100:104, 200:204] = np.clip(road.astype(int) + 3, 0, 255)  # a near-exact road colour over sky
    ids = app.commit(painted, base)
    assert (ids[2:6, 10:30] == 5).all()
    assert (ids[2:6, 30] == 1).all()  # the rim keeps its class
    assert ids[25, 50] == 2
    changed = ids != base
    assert changed.sum() == 4 * 20 + 1
    # each 4x4 block takes its majority: a 1-pixel-wide line does not change a block, a 3-pixel one does
    line = canvas.copy()
    line[:, 0:1] = car
    line[:, 4:7] = car
    ids = app.commit(line, base)
    assert (ids[:, 0] == base[:, 0]).all() and (ids[:, 1] == 5).all()
    # erasing a stroke (the canvas shows the map again) restores the map: commit depends on canvas + base only
    assert np.array_equal(app.commit(canvas, base), base)
    with pytest.raises(GenerateError, match="canvas is 32x64 pixels"):
        app.commit(np.zeros((32, 64, 3), np.uint8), base)


def test_block_mode_and_canvas_rules_on_small_arrays():
    ids = np.array([[1, 1, 2, 2], [1, 3, 2, 2], [0, 0, 3, 3], [0, 4, 3, 4]])
    assert block_mode(ids, 2, 5).tolist() == [[1, 2], [0, 3]]
    assert block_mode(ids, 1, 5) is ids
    colors = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    base = np.zeros((2, 2), np.int64)
    canvas = np.array([[[250, 250, 250], [128, 128, 128]], [[0, 0, 0], [20, 0, 0]]], np.uint8)
    assert canvas_to_ids(canvas, base, colors, 1, tol=40).tolist() == [[1, 0], [0, 0]]


def test_fill_changes_the_connected_region_only(app):
    ids = _scene(app)
    ids[0:5, 0:5] = 9  # a second sign region, not touching the first
    out = app.fill(ids, x=4 * 95, y=4 * 15, class_id=4)  # canvas pixel inside the sign at (95, 15)
    assert (out[10:20, 90:100] == 4).all() and (out[0:5, 0:5] == 9).all()
    assert ((out != ids).sum()) == 100
    # a region split in two by another class: only the clicked part
    diag = np.zeros((6, 6), np.int64)
    diag[:, 3] = 1
    filled = flood_fill(diag, 0, 0, 2)
    assert (filled[:, :3] == 2).all() and (filled[:, 4:] == 0).all()
    with pytest.raises(GenerateError, match="outside the 6x6"):
        flood_fill(diag, 6, 0, 2)
    with pytest.raises(GenerateError, match="knows classes 0..9"):
        app.fill(ids, 0, 0, 10)


# ------------------------------------------------------------------------------------- starting maps


def test_blank_and_synthetic_layouts(app):
    assert (app.blank(3) == 3).all() and app.blank().shape == (64, 128)
    assert app.default_class == 1  # not the don't-care id
    a, note = app.layout(7)
    assert a.shape == (64, 128) and a.dtype == np.int64 and "seed 7" in note
    assert np.array_equal(a, app.layout(7)[0]) and not np.array_equal(a, app.layout(8)[0])
    assert len(np.unique(a)) >= 4 and a.min() >= 0 and a.max() < 10


def test_layouts_of_a_real_dataset(app, tmp_path):
    cfg = copy.deepcopy(app.pipe.config)
    cfg.data.kind, cfg.data.labels, cfg.data.photos = "folder", str(tmp_path / "labels"), str(tmp_path / "photos")
    missing = LabelApp(dataclasses.replace(app.pipe, config=cfg))
    with pytest.raises(GenerateError, match="not available"):
        missing.layout(0)
    (tmp_path / "labels").mkdir()
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 64), 3 + i, np.uint8), mode="L").save(tmp_path / f"labels/m{i}.png")
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / f"photos/p{i}.png")
    found = LabelApp(dataclasses.replace(app.pipe, config=cfg))
    ids, note = found.layout(1)
    assert ids.shape == (64, 128) and (ids == 4).all() and "m1.png" in note


def test_uploads_of_ids_and_of_palette_colours(app, tmp_path):
    scene = _scene(app)
    Image.fromarray(scene[::2, ::2].astype(np.uint8), mode="L").save(tmp_path / "ids.png")
    ids, note = app.read_upload(tmp_path / "ids.png")
    assert ids.shape == (64, 128) and "resized to 64x128" in note and "class ids" in note
    assert np.array_equal(ids[::2, ::2], scene[::2, ::2])
    Image.fromarray(app.colors[scene]).save(tmp_path / "colour.png")
    ids, note = app.read_upload(tmp_path / "colour.png")
    assert np.array_equal(ids, scene) and "palette colours" in note and "resized" not in note
    Image.fromarray(np.stack([scene.astype(np.uint8)] * 3, -1)).save(tmp_path / "gray_rgb.png")  # ids as RGB
    assert np.array_equal(app.read_upload(tmp_path / "gray_rgb.png")[0], scene)


@pytest.mark.parametrize("case, message", [
    ("photo", "match no colour of this model's palette"),
    ("stray", r"3 pixels have colours that are not in this model's palette \(#0c0c0c\)"),
    ("ids", r"label ids \{10, 40\} are outside \[0, 10\)"),
    ("tiny", "from 8 to 8192 pixels a side"),
    ("strip", "far from this model's 64x128 shape"),
    ("broken", "cannot read image"),
])
def test_bad_uploads_get_one_clear_message(app, tmp_path, case, message):
    path = tmp_path / f"{case}.png"
    if case == "photo":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(path)
    elif case == "stray":
        rgb = app.colors[_scene(app)]
        rgb[0, :3] = 12
        Image.fromarray(rgb).save(path)
    elif case == "ids":
        ids = np.zeros((64, 128), np.uint8)
        ids[0, 0], ids[1, 1] = 10, 40
        Image.fromarray(ids, mode="L").save(path)
    elif case == "tiny":
        Image.fromarray(np.zeros((4, 8), np.uint8), mode="L").save(path)
    elif case == "strip":
        Image.fromarray(np.zeros((16, 1024), np.uint8), mode="L").save(path)
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UsisError, match=message):
        app.read_upload(path)


def test_check_map_size():
    check_map_size(64, 128, (64, 128))
    check_map_size(1024, 2048, (256, 512))
    check_map_size(300, 400, (256, 512))  # another aspect is resized
    with pytest.raises(GenerateError):
        check_map_size(7, 14, (64, 128))
    with pytest.raises(GenerateError):
        check_map_size(9000, 9000, (256, 256))


# ---------------------------------------------------------------------------------------- generating


def test_images_are_the_pipelines_images_for_their_seeds(app):
    ids = _scene(app)
    shots = app.shots(3, 3)
    assert [s.seed for s in shots] == [3, 4, 5]
    for local in (False, True):
        images = app.generate(ids, shots, local_style=local)
        ref = app.pipe(ids, seeds=[3, 4, 5], local_style=local, output_type="pt")
        assert [im.size for im in images] == [(128, 64)] * 3
        for im, r in zip(images, ref, strict=True):
            assert np.array_equal(np.asarray(im), to_uint8(r))
    a, b = (np.asarray(im).astype(int) for im in app.generate(ids, shots[:2]))
    assert np.abs(a - b).mean() > 0  # two seeds, two images
    with pytest.raises(GenerateError, match="1 to 8"):
        app.shots(0, 9)


def test_redrawing_one_regions_style_changes_its_noise_only(app):
    ids = _scene(app)
    labels = torch.from_numpy(ids)
    shots = app.shots(0, 2)
    new = app.restyle(shots, 5, ids, seed=100)
    assert new == [Shot(0, ((5, 100),)), Shot(1, ((5, 101),))]
    assert app.caption(new[0]) == "seed 0 · car: seed 100"
    z_dim = app.pipe.generator.z_dim
    for local in (False, True):
        z0, pn0 = app.noise(labels, shots[0], local)
        z1, pn1 = app.noise(labels, new[0], local)
        z0 = z0 if z0.dim() == 3 else z0[:, None, None].expand(z_dim, *ids.shape)
        car = torch.from_numpy(ids == 5)
        assert torch.equal(z1[:, ~car], z0[:, ~car]) and not torch.equal(z1[:, car], z0[:, car])
        assert torch.equal(pn0, pn1)  # the per-pixel noise is the image's own
    before, after = app.generate(ids, shots[:1])[0], app.generate(ids, new[:1])[0]
    diff = np.abs(np.asarray(after).astype(float) - np.asarray(before)).mean(-1)
    assert diff[ids == 5].mean() > 0
    # one image only, and again: the region's newest seed replaces the older one
    again = app.restyle(new, 5, ids, targets=[1], seed=7)
    assert again[0] == new[0] and again[1] == Shot(1, ((5, 7),))
    assert app.restyle(shots, 9, ids, seed=1)[0].regions == ((9, 1),)
    with pytest.raises(GenerateError, match="'tree' is not in the label map"):
        app.restyle(shots, 4, ids)
    with pytest.raises(GenerateError, match="generate images first"):
        app.restyle([], 5, ids)


def test_downloads_hold_the_images_and_the_label_map(app):
    ids = _scene(app)
    shots = app.restyle(app.shots(0, 2), 5, ids, seed=9)
    images = app.generate(ids, shots)
    paths = app.save(ids, images, shots)
    names = [p.name for p in paths]
    assert names == ["label_ids.png", "label_color.png", "image_seed0_c5s9.png", "image_seed1_c5s10.png",
                     "usis_app.zip"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), ids)
    assert np.array_equal(np.asarray(Image.open(paths[1])), app.colors[ids])
    assert np.array_equal(np.asarray(Image.open(paths[2])), np.asarray(images[0]))
    with zipfile.ZipFile(paths[-1]) as z:
        assert sorted(z.namelist()) == sorted(names[:-1])


# --------------------------------------------------------------------------------------- the page


def _handler(demo, name):
    return next(f.fn for f in demo.fns.values() if f.name == name)


def test_the_pages_handlers_show_messages_not_tracebacks(app, tmp_path, recwarn):
    gr = pytest.importorskip("gradio")
    demo = app.build()
    base = _scene(app)
    editor = app.editor_value(base)
    painted = dict(editor, composite=editor["composite"].copy())
    painted["composite"][0:16, 0:64] = app.colors[8]  # a person, 4 x 16 model pixels
    preview, gallery, shots, which, files, status = _handler(demo, "on_generate")(painted, base, 2, 5, False)
    assert [caption for _, caption in gallery["value"]] == ["seed 5", "seed 6"] and shots == [Shot(5), Shot(6)]
    assert gallery["selected_index"] is None and which == "all images"
    assert "seeds 5..6" in status and "per image" in status
    assert (app.commit(painted["composite"], base)[0:4, 0:16] == 8).all()
    assert np.array_equal(np.asarray(Image.open(files[0])), app.commit(painted["composite"], base))
    assert preview.shape == (256, 512, 3)
    # a new region style for the picked image (clicking an image picks it)
    pick = _handler(demo, "on_select")(gr.SelectData(None, {"index": 1, "value": None, "selected": True}))
    assert pick == "image 2"
    out = _handler(demo, "on_restyle")(painted, base, shots, 8, pick, False)
    assert out[2][0] == Shot(5) and out[2][1].regions[0][0] == 8 and out[3] == "image 2" and "image 2" in out[-1]
    assert out[1]["selected_index"] == 1 and out[1]["value"][1][1].startswith("seed 6 · person: seed ")
    out = _handler(demo, "on_restyle")(painted, base, shots, 8, "image 3", False)
    assert out[-1] == "error: image 3: there are 2 images; pick one of them or all images"
    assert _handler(demo, "on_generate")(painted, base, 4, 0, False, "image 2")[3] == "image 2"  # kept
    assert _handler(demo, "on_generate")(painted, base, 1, 0, False, "image 2")[3] == "all images"  # gone
    # fill: the select event's pixel is a canvas pixel
    evt = gr.SelectData(None, {"index": [4 * 100, 4 * 50], "value": None, "selected": True})
    ids, _, _, status = _handler(demo, "on_fill")(editor, base, 6, evt)
    assert (ids == 6).sum() == (base == 2).sum() and (ids[32:] == 6).all(1).any() and "filled the road region" in status
    # bad input: a warning and a message, the other outputs untouched
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    out = _handler(demo, "on_upload")(str(tmp_path / "p.png"))
    assert out[:3] == (gr.skip(),) * 3 and out[3].startswith("error: p.png: a colour image")
    assert any("match no colour" in str(w.message) for w in recwarn)
    out = _handler(demo, "on_restyle")(editor, base, [], 5, "all images", False)
    assert out[-1] == "error: generate images first, then re-draw a region's style"
    out = _handler(demo, "on_blank")(42)
    assert out[-1] == "error: class 42: this model knows classes 0..9"
    ids, _, _, status = _handler(demo, "on_blank")(4)
    assert (ids == 4).all() and status == "blank map: tree"


def test_the_page_is_served(app):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.launch("127.0.0.1", port, block=False)
    try:
        html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "usis app" in html
        with pytest.raises(GenerateError, match="pass another --port"):  # the port is taken: a message
            app.launch("127.0.0.1", port, block=False)
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------ command


def test_app_without_a_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["app"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model: run `make demo` first") and "--checkpoint" in err
    assert "Traceback" not in err
    (tmp_path / "runs/demo").mkdir(parents=True)  # an interrupted demo: a folder without a checkpoint
    assert main(["app"]) == 2
    assert "runs/demo has no checkpoint yet" in capsys.readouterr().err
    assert main(["app", "--checkpoint", "nowhere.pt"]) == 2
    assert "nowhere.pt: no such file or folder" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        resolve_checkpoint(None)


def test_app_finds_the_demo_run_and_needs_gradio(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/demo").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    assert str(resolve_checkpoint(None)) == "runs/demo"
    monkeypatch.setitem(sys.modules, "gradio", None)  # not installed
    assert main(["app", "--port", "1"]) == 2
    assert "usis app needs Gradio: pip install 'usis[app]'" in capsys.readouterr().err
