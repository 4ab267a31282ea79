"""``usis app`` end to end in a real headless browser: the command serves the page behind a login
(``--auth-file``; a wrong password is refused), a brush stroke in the editor reaches the model, Generate shows
images whose seeds differ, and bad uploads (a photo; a map over the pixel limit) get a message in the page,
not a traceback.

Needs Chromium and its driver from the system (Debian: ``apt-get install chromium chromium-driver``; or set
``USIS_CHROMIUM`` / ``USIS_CHROMEDRIVER``), Selenium and Gradio (``pip install -e '.[test]'``); nothing is
downloaded at run time (Selenium gets the driver's path, Selenium Manager stays offline). Without them the
test is skipped with the reason.

The app serves a tiny checkpoint the test trains (2 steps; its images are noise, but noise that depends on
the label map and the seed), or ``USIS_APP_CHECKPOINT`` when set. A screenshot of the page with the
generated images goes to the test's tmp folder and, when ``USIS_APP_SCREENSHOT`` is set, to that path:

    USIS_APP_CHECKPOINT=runs/demo USIS_APP_SCREENSHOT=/tmp/app.png .venv/bin/python -m pytest tests/test_app_browser.py
"""

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, set_args
from PIL import Image

from usis.cli import main

CHROMIUM = os.environ.get("USIS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMEDRIVER = os.environ.get("USIS_CHROMEDRIVER") or shutil.which("chromedriver") or ""
TREE = (107, 142, 35)  # the synthetic palette's tree colour (class 4)
WAIT = 120  # seconds for the page and each step on a slow, shared CPU
USER, PASSWORD = "alice", "s3cret"


def _skip_without_browser():
    reasons = []
    for module, why in (("selenium", "Selenium"), ("gradio", "Gradio")):
        try:
            __import__(module)
        except ImportError:
            reasons.append(f"{why} is not installed (pip install -e '.[test]')")
    for name, path, var in (("chromium", CHROMIUM, "USIS_CHROMIUM"),
                            ("chromedriver", CHROMEDRIVER, "USIS_CHROMEDRIVER")):
        if not (path and os.path.isfile(path) and os.access(path, os.X_OK)):
            reasons.append(f"no {name} found (apt-get install chromium chromium-driver, or set {var})")
    if reasons:
        print("test_app_browser skipped: " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _skip_without_browser()
    ckpt = os.environ.get("USIS_APP_CHECKPOINT")
    if not ckpt:
        out = tmp_path_factory.mktemp("browser_run")
        assert main(["train", "--preset", "synthetic", "--out", str(out), "--iters", "2", "--no-progress",
                     *set_args(TINY + ["data.width=128", "model.pixel_noise=2"])]) == 0
        ckpt = str(out)
    port = _free_port()
    folder = tmp_path_factory.mktemp("browser_log")
    log, logins = folder / "app.log", folder / "logins"
    logins.write_text(f"{USER}:{PASSWORD}\n")
    logins.chmod(0o600)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "usis.cli", "app", "--checkpoint", ckpt, "--port", str(port),
                                 "--device", "cpu", "--auth-file", str(logins)], stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + WAIT
        while True:
            assert proc.poll() is None, f"usis app exited with {proc.returncode}:\n{log.read_text()}"
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline, f"usis app did not answer on {url}:\n{log.read_text()}"
                time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser(monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--enable-unsafe-swiftshader", "--hide-scrollbars"):  # swiftshader: WebGL for the editor's canvas
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _fetch(url: str, driver) -> Image.Image:
    """An image the page shows, fetched with the browser's login cookies."""
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=30) as r:
        return Image.open(io.BytesIO(r.read()))


def _png_header(width: int, height: int) -> bytes:
    """A PNG file with a grayscale ``width x height`` header and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def _log_in(d, wait, password: str) -> None:
    from selenium.webdriver.common.by import By

    user = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input:not([type=password])"))[0]
    secret = d.find_element(By.CSS_SELECTOR, "input[type=password]")
    for box, text in ((user, USER), (secret, password)):
        box.clear()
        box.send_keys(text)
    next(b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip().lower() == "login").click()


def _count(img: Image.Image, rgb) -> int:
    return int((np.asarray(img.convert("RGB")) == rgb).all(-1).sum())


def test_log_in_paint_generate_and_bad_uploads_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = server
    d = browser
    wait = WebDriverWait(d, WAIT)
    d.get(url)
    # the login page: the editor is not there until the right password is given
    _log_in(d, wait, "wrong")
    wait.until(lambda d: "incorrect" in d.find_element(By.TAG_NAME, "body").text.lower())
    assert not d.find_elements(By.ID, "usis-editor")
    d.save_screenshot(str(tmp_path / "login.png"))
    _log_in(d, wait, PASSWORD)
    canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#usis-editor canvas"))[-1]
    preview = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#usis-preview img"))
    trees_before = _count(_fetch(preview.get_attribute("src"), d), TREE)
    status = d.find_element(By.CSS_SELECTOR, "#usis-status textarea")

    # pick the class "tree" (the brush takes its colour), then paint a stroke across the upper half
    box = d.find_element(By.CSS_SELECTOR, "#usis-class input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("4 tree")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: box.get_attribute("value") == "4 tree")
    time.sleep(1)  # the editor receives its new brush colour
    w = canvas.size["width"]
    ActionChains(d).move_to_element_with_offset(canvas, -w // 6, -canvas.size["height"] // 4).click_and_hold() \
        .move_by_offset(w // 9, 2).move_by_offset(w // 9, 2).move_by_offset(w // 9, 0).release().perform()

    # generate four images with seeds 0..3
    d.find_element(By.ID, "usis-generate").click()
    wait.until(lambda d: "seeds 0..3" in status.get_attribute("value"))
    images = wait.until(lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, "#usis-gallery img")
                                   if i.get_attribute("src")][:4] or None)
    assert len(images) == 4, status.get_attribute("value")
    gallery_text = d.find_element(By.ID, "usis-gallery").text
    assert all(f"seed {k}" in gallery_text for k in range(4))
    pixels = [np.asarray(_fetch(i.get_attribute("src"), d).convert("RGB")).astype(int) for i in images]
    h, w = pixels[0].shape[:2]
    assert all(p.shape == (h, w, 3) for p in pixels) and w == 2 * h  # the model's 64x128 (or 256x512)
    assert np.abs(pixels[0] - pixels[1]).mean() > 0.5  # two seeds, two images
    assert all(p.std() > 0 for p in pixels)

    # the stroke reached the model: the map it saw (preview and the label_ids.png download) has more tree
    seen = _fetch(d.find_element(By.CSS_SELECTOR, "#usis-preview img").get_attribute("src"), d)
    trees_after, scale = _count(seen, TREE), seen.size[0] // w
    assert trees_after > trees_before + 100 * scale**2, (trees_before, trees_after)
    links = {a.get_attribute("href").rsplit("/", 1)[-1]: a.get_attribute("href")
             for a in d.find_elements(By.CSS_SELECTOR, "#usis-files a") if a.get_attribute("href")}
    assert {"label_ids.png", "label_color.png", "usis_app.zip"} <= set(links), links
    ids = np.asarray(_fetch(links["label_ids.png"], d))
    assert ids.shape == (h, w) and (ids == 4).sum() * scale**2 == trees_after

    shot = tmp_path / "app.png"
    d.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("USIS_APP_SCREENSHOT"):  # a compact copy (256 colours) for the README
        target = Path(os.environ["USIS_APP_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)
    print(f"screenshot: {shot}")

    # a photo instead of a label map: a message in the page, not a stack trace
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(photo)
    d.find_element(By.CSS_SELECTOR, "input[type=file][data-testid$='upload-button']").send_keys(str(photo))
    wait.until(lambda d: status.get_attribute("value").startswith("error:"))
    assert "photo.png" in status.get_attribute("value") and "palette" in status.get_attribute("value")

    # a map over the pixel limit (8000x8000 in its header; the app decodes none of it): a message in the page
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(8000, 8000))
    d.find_element(By.CSS_SELECTOR, "input[type=file][data-testid$='upload-button']").send_keys(str(huge))
    wait.until(lambda d: "8000x8000" in status.get_attribute("value"))
    assert status.get_attribute("value").startswith("error: huge.png: the label map is 8000x8000 pixels: label "
                                                    "maps from 8 to 4096 pixels a side")
    assert "Traceback" not in d.page_source and "Traceback" not in log.read_text()

    # everything the page loaded came from the app itself
    loaded = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith((url, "data:", "blob:")) for u in loaded), [u for u in loaded if url not in u]
