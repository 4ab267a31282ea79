"""``usis app`` without a browser: painting (canvas -> ids, fill), starting maps, uploads, generating with
seeds and per-region styles, downloads, the page's handlers and their messages, the command, and the app on
a shared server (a login beyond the loopback address, upload limits, bounded download folders, concurrent
clients and the queue's wait estimate; served on 127.0.0.1 only)."""

import copy
import dataclasses
import os
import socket
import struct
import sys
import threading
import time
import urllib.request
import zipfile
import zlib

import numpy as np
import pytest
import torch
from conftest import TINY, set_args
from PIL import Image

from usis.app import (
    AUTH_ENV,
    LabelApp,
    Shot,
    app_credentials,
    block_mode,
    canvas_to_ids,
    check_map_size,
    color_tolerance,
    distinct_palette,
    flood_fill,
    is_loopback,
    resolve_checkpoint,
    serve,
)
from usis.cli import main
from usis.data.palette import CITYSCAPES
from usis.errors import CheckpointError, ConfigError, GenerateError, UsisError, UsisWarning
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


def _png_header(width: int, height: int) -> bytes:
    """A PNG file with a grayscale ``width x height`` header and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


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
    ("tiny", "from 8 to 4096 pixels a side"),
    ("strip", "far from this model's 64x128 shape"),
    ("broken", "cannot read image"),
    ("huge", r"the label map is 8000x8000 pixels: label maps from 8 to 4096 pixels a side and up to 4.2 mega"),
    ("megapixels", r"the label map is 2400x4000 pixels: .* up to 4.2 megapixels"),
    ("bomb", "over 179 megapixels"),
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
    elif case in ("huge", "megapixels", "bomb"):  # headers only: decoding them would fail ("cannot read image")
        path.write_bytes(_png_header(*{"huge": (8000, 8000), "megapixels": (4000, 2400), "bomb": (20000, 20000)}[case]))
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UsisError, match=message) as e:
        app.read_upload(path)
    assert str(e.value).split(": ")[0].endswith(path.name)  # the message names the file


def test_check_map_size():
    check_map_size(64, 128, (64, 128))
    check_map_size(1024, 2048, (256, 512))
    check_map_size(300, 400, (256, 512))  # another aspect is resized
    with pytest.raises(GenerateError):
        check_map_size(7, 14, (64, 128))
    with pytest.raises(GenerateError):
        check_map_size(9000, 9000, (256, 256))
    check_map_size(2048, 2048, (256, 256))
    check_map_size(1024, 4096, (256, 512))
    with pytest.raises(GenerateError, match="4.2 megapixels"):  # each side fits, the pixels do not
        check_map_size(3000, 3000, (256, 256))


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


def test_a_generator_with_a_style_per_class_keeps_it_when_a_region_is_redrawn(app, monkeypatch):
    from usis.nn.noise import seeded_noise

    ids = _scene(app)
    labels = torch.from_numpy(ids)
    G = app.pipe.generator
    monkeypatch.setattr(G, "class_style", 2)  # as trained with model.class_style=2
    z0, _ = app.noise(labels, Shot(0), False)
    want = seeded_noise([0], G.z_dim, G.pixel_noise, *ids.shape, labels=labels[None], num_classes=app.num_classes,
                        class_style=2)[0][0]
    assert torch.equal(z0, want)  # the pipeline's noise for its seed
    z1, _ = app.noise(labels, Shot(0, ((5, 100),)), False)
    car = torch.from_numpy(ids == 5)
    assert torch.equal(z1[:, ~car], z0[:, ~car]) and not torch.equal(z1[:, car], z0[:, car])


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


# ---------------------------------------------------------------------------------- on a shared server


def test_only_the_loopback_address_is_this_machine_only():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]", "app.localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "10.0.0.1", "lab-server", "localhost.example.org"):
        assert not is_loopback(host), host


def test_serving_beyond_the_loopback_address_needs_a_login_or_open(tmp_path, monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert app_credentials("127.0.0.1") is None and app_credentials("localhost") is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(ConfigError, match=f"--host {host} serves the app to the network without a login"):
            app_credentials(host)
    assert app_credentials("0.0.0.0", open_network=True) is None
    assert app_credentials("0.0.0.0", auth="alice:pa:ss word") == [("alice", "pa:ss word")]  # the first colon
    assert app_credentials("127.0.0.1", auth="alice:x") == [("alice", "x")]  # a login on loopback too
    # a file: a line per user, comments and blank lines skipped
    f = tmp_path / "logins"
    f.write_text("# the lab\nalice:s3cret\n\n  bob:hunter2  \n")
    f.chmod(0o600)
    assert app_credentials("0.0.0.0", auth_file=f) == [("alice", "s3cret"), ("bob", "hunter2")]
    f.chmod(0o644)
    with pytest.warns(UsisWarning, match="can be read by other users of this machine: chmod 600"):
        app_credentials("0.0.0.0", auth_file=f)
    # the environment (not in the shell history); --auth and --auth-file come first
    assert app_credentials("0.0.0.0", environ={AUTH_ENV: "carol:pw"}) == [("carol", "pw")]
    assert app_credentials("0.0.0.0", auth="dan:pw", environ={AUTH_ENV: "carol:pw"}) == [("dan", "pw")]
    # bad logins: the message names where it came from, never the text (a password)
    for kwargs, where in [({"auth": "alice"}, "--auth"), ({"auth": ":pw"}, "--auth"), ({"auth": "alice:"}, "--auth"),
                          ({"environ": {AUTH_ENV: "s3cret"}}, f"\\${AUTH_ENV}")]:
        with pytest.raises(ConfigError, match=f"^{where}: expected USER:PASSWORD") as e:
            app_credentials("0.0.0.0", **kwargs)
        assert "s3cret" not in str(e.value) and "alice" not in str(e.value)
    f.write_text("alice:ok\ns3cret\n")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="logins line 2: expected USER:PASSWORD") as e:
        app_credentials("0.0.0.0", auth_file=f)
    assert "s3cret" not in str(e.value)
    f.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="no USER:PASSWORD line"):
        app_credentials("0.0.0.0", auth_file=f)
    with pytest.raises(ConfigError, match="missing: cannot read it"):
        app_credentials("0.0.0.0", auth_file=tmp_path / "missing")


def test_the_command_refuses_the_network_without_a_login(run, monkeypatch, capsys):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    monkeypatch.setattr(LabelApp, "from_checkpoint", lambda *a, **k: pytest.fail("the model was loaded"))
    t0 = time.perf_counter()
    assert main(["app", "--checkpoint", str(run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --host 0.0.0.0 serves the app to the network without "
                                                   "a login: give it one with --auth-file FILE")
    assert "USIS_APP_AUTH=USER:PASSWORD" in err and "--open" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 5  # at once: before the model
    assert main(["app", "--checkpoint", str(run), "--host", "0.0.0.0", "--auth", "s3cret"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --auth: expected USER:PASSWORD (a user name, a colon, a password; neither empty)\n"
    with pytest.raises(SystemExit):  # one login source at a time
        main(["app", "--auth", "a:b", "--auth-file", "f"])


def test_uploads_over_the_limits_get_a_message_in_the_page(app, tmp_path):
    gr = pytest.importorskip("gradio")
    demo = app.build()
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(8000, 8000))  # 8000x8000 in its header: refused before decoding
    out = _handler(demo, "on_upload")(str(huge))
    assert out[:3] == (gr.skip(),) * 3
    assert out[3].startswith("error: huge.png: the label map is 8000x8000 pixels: label maps from 8 to 4096 "
                             "pixels a side")
    # bytes: Gradio refuses uploads over max_upload_bytes; read_upload checks them too
    small = LabelApp(app.pipe, max_upload_bytes=1000)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 10, (64, 128), dtype=np.uint8), mode="L").save(big)
    assert big.stat().st_size > 1000
    out = _handler(small.build(), "on_upload")(str(big))
    assert out[3].startswith("error: big.png: ") and "uploads up to 0.977 KB are accepted" in out[3]


def test_the_download_folder_stays_bounded(app):
    pytest.importorskip("gradio")
    bounded = LabelApp(app.pipe, keep=3)
    generate = _handler(bounded.build(), "on_generate")
    base = _scene(bounded)
    canvas = bounded.editor_value(base)
    kept = []
    for k in range(12):
        files = generate(canvas, base, 2, 10 * k, False)[4]
        kept.append(files)
        folders = [p for p in bounded.tmp_dir.iterdir()]
        assert len(folders) == min(k + 1, 3), folders
        assert all(os.path.exists(f) for f in files)  # the newest generation's files are there
    assert sum(len(files) for _, _, files in os.walk(bounded.tmp_dir)) == 3 * 5
    assert not any(os.path.exists(f) for f in kept[-4])  # the older ones are gone
    assert LabelApp(app.pipe, keep=1, concurrency=2).keep == 3  # never one Gradio has not copied yet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_login_page_and_two_clients_each_getting_their_own_images(run, app, tmp_path, capsys):
    """Served as ``usis app --auth-file`` serves it, two generations at once: two clients (two sessions) that
    generate at the same time get the images of their own label map and seeds, as made directly."""
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AuthenticationError

    logins = tmp_path / "logins"
    logins.write_text("alice:s3cret\n")
    logins.chmod(0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    demo = serve(run, host="127.0.0.1", port=port, device="cpu", block=False, auth_file=logins, concurrency=2)
    try:
        assert f"open http://127.0.0.1:{port} (login: alice)" in capsys.readouterr().err
        # the page asks for the login; only the right password opens it
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        assert httpx.get(url + "config", timeout=30).status_code == 401
        assert httpx.post(url + "login", data={"username": "alice", "password": "wrong"}, timeout=30).status_code >= 400
        with httpx.Client(timeout=30) as s:
            assert s.post(url + "login", data={"username": "alice", "password": "s3cret"}).status_code == 200
            assert s.get(url + "config").status_code == 200
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)

        maps = {"a": _scene(app), "b": np.where(_scene(app) == 1, 4, _scene(app))}  # b: trees for sky
        maps["b"][:, :20] = 7
        results: dict[str, list] = {"a": [], "b": []}
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def client(name: str, first_seeds: list[int]):
            try:
                c = Client(url, auth=("alice", "s3cret"), verbose=False, download_files=str(tmp_path / name))
                composite = tmp_path / f"{name}.png"
                Image.fromarray(app.render(maps[name])).save(composite)
                canvas = {"background": handle_file(str(composite)), "layers": [],
                          "composite": handle_file(str(composite)), "id": None}
                start.wait(timeout=60)
                for first in first_seeds:
                    results[name].append((first, c.predict(canvas, 3, first, False, "all images",
                                                           api_name="/on_generate")))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=client, args=("a", [0, 50])),
                   threading.Thread(target=client, args=("b", [3, 49]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        for name, runs in results.items():
            assert len(runs) == 2
            for first, (_, gallery, _, files, status) in runs:
                gallery = gallery["value"] if isinstance(gallery, dict) else gallery  # a gr.update
                shots = app.shots(first, 3)
                expected = app.generate(maps[name], shots)
                assert [g["caption"] for g in gallery] == [f"seed {s.seed}" for s in shots], (name, first)
                for g, im in zip(gallery, expected, strict=True):
                    assert np.array_equal(np.asarray(Image.open(g["image"]).convert("RGB")), np.asarray(im)), \
                        (name, first, g["caption"])
                label_ids = next(f for f in files if f.endswith("label_ids.png"))
                assert np.array_equal(np.asarray(Image.open(label_ids)), maps[name]), (name, first)
                assert f"seeds {first}..{first + 2}" in status
    finally:
        demo.close()


def test_the_queue_says_how_long_the_wait_is(app, tmp_path, monkeypatch):
    """One generation at a time: requests that wait are told their place in the queue and the time left
    (estimated from the start, before any request has finished). And Gradio refuses uploads over the limit."""
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    served = LabelApp(app.pipe, max_upload_bytes=100_000)
    port = _free_port()
    demo = served.launch("127.0.0.1", port, block=False)
    try:
        upload = f"http://127.0.0.1:{port}/gradio_api/upload"
        refused = httpx.post(upload, files={"files": ("big.png", b"\0" * 150_000)}, timeout=30)
        assert refused.status_code == 413 and "maximum allowed size of 100000 bytes" in refused.text
        assert httpx.post(upload, files={"files": ("ok.png", b"\0" * 50_000)}, timeout=30).status_code == 200
        model_fns = [f for f in demo.fns.values() if f.concurrency_id == "model"]
        assert sorted(f.name for f in model_fns) == ["on_generate", "on_new_styles", "on_restyle"]
        assert all(f.concurrency_limit == 1 for f in model_fns)
        generate, gate = served.generate, threading.Event()  # no request finishes before the gate opens
        monkeypatch.setattr(served, "generate", lambda *a, **k: (gate.wait(120), generate(*a, **k))[1])
        Image.fromarray(served.render(_scene(served))).save(tmp_path / "map.png")
        canvas = {"background": handle_file(str(tmp_path / "map.png")), "layers": [],
                  "composite": handle_file(str(tmp_path / "map.png")), "id": None}
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(3)]
        jobs = [c.submit(canvas, 1, 0, False, "all images", api_name="/on_generate") for c in clients]
        seen = []  # what the waiting requests are told before any request finished: (place, queue length, seconds)
        deadline = time.time() + 90
        try:
            while not any(rank == 1 for rank, _, _ in seen) and time.time() < deadline:  # one runs, two wait
                for j in jobs:
                    st = j.status()
                    if st.code == Status.IN_QUEUE:
                        seen.append((st.rank, st.queue_size, st.eta))
                time.sleep(0.05)
        finally:
            gate.set()
        assert [j.result(timeout=60)[-1].startswith("1 images, seeds 0..0") for j in jobs] == [True] * 3
        assert any(rank == 1 and size == 2 for rank, size, _ in seen), seen  # "queue: 2/2"
        assert all(eta is not None and eta > 0 for _, _, eta in seen), seen  # and the time left
    finally:
        demo.close()
