"""``usis app``: paint a label map in a browser, get photos (a Gradio app; ``pip install 'usis[app]'``).

The page shows the checkpoint's classes as a palette (names and colours). You start from a blank map, from
a layout of the checkpoint's dataset (synthetic: a fresh random street scene; a real dataset: one of its
validation label maps, when its folder exists here) or from an uploaded label PNG (class ids, or the
palette's colours), paint with the brush, fill a region by clicking it in the "label map the model sees",
and generate N images, each with its noise seed shown. "New styles" draws new seeds; "Re-draw its style"
keeps an image's noise everywhere except in one class's region, which gets the noise vector of a new seed
(shown in the caption as ``class: seed``), in every image or in the one picked. The images and the label
map (ids and colours) can be downloaded.

From the painted canvas to class ids. The editor shows the map ``scale`` times enlarged, in the app's
palette (the label set's colours, with colours that several classes share replaced by distinct ones, so
that every colour means one class). A canvas pixel that differs from the map it was painted over takes
the class of the nearest palette colour if that colour is within ``tol`` (half the distance between the
two closest palette colours, at most 40); otherwise (the anti-aliased rim of a stroke, a blend of two
colours) it keeps its previous class. Each ``scale x scale`` block then becomes one pixel of the model's
map: the class most of its pixels have.

On a shared server. Serving beyond the loopback address needs a login (:func:`app_credentials`: ``--auth``,
``--auth-file`` or ``$USIS_APP_AUTH``; Gradio's login page) or ``--open``. Uploads are limited in bytes (Gradio
refuses larger ones) and in pixels (:func:`check_map_size`, read from the header before anything is decoded).
Each generation writes its downloads into a folder of its own; only the newest ``keep`` folders stay (Gradio
serves its own copies of them). Generations wait in Gradio's queue (``concurrency`` at a time: one model),
which shows each request its place and the time left; every request's map and seeds travel with the request
(the page's per-session state), and the noise comes from per-image generators, never a shared RNG.

Everything except :meth:`LabelApp.build` (and :func:`serve`) works without Gradio; Gradio is imported
only there, so ``import usis.app`` works without the ``app`` extra.
"""

import collections
import functools
import io
import ipaddress
import os
import random
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from usis.checkpoint import find_checkpoint
from usis.data.datasets import label_png, open_image, resolve_layout
from usis.data.synthetic import make_layout
from usis.errors import CheckpointError, ConfigError, DiskFullError, GenerateError, UsisError, UsisWarning
from usis.generate import ids_outside, image_label_ids, read_label_map, resize_nearest, run_generator
from usis.hub import is_hub_name
from usis.nn.noise import noise_vector, seeded_noise, style_map
from usis.pipeline import USISPipeline
from usis.utils.images import colorize, to_pil
from usis.utils.io import disk_full_cause, disk_full_error

DEFAULT_RUN = Path("runs/demo")
NO_MODEL = ("no model: run `make demo` first (it trains one into runs/demo) or pass --checkpoint "
            "RUN/checkpoints/latest.pt or an export folder (`usis export`)")
NEEDS_GRADIO = "usis app needs Gradio: pip install 'usis[app]' (in this repository: .venv/bin/pip install -e '.[app]')"
MAX_TOL = 40.0  # nearest-palette-colour distance (RGB) beyond which a painted pixel keeps its class
CHANGED = 8  # a canvas pixel differs from the map under it when a channel differs by more than this
UPLOAD_TOL = 12.0  # an uploaded colour map's pixel matches a palette colour within this RGB distance
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 8, 4096, 4.0  # the label-map sizes an upload may have
MAX_PIXELS = 2048 * 2048  # and its pixels: a colour map's palette match peaks at ~48 bytes a pixel (200 MB)
MAX_UPLOAD_BYTES = 16 * 2**20  # Gradio refuses larger uploads; a MAX_PIXELS label PNG is far smaller
KEEP_GENERATIONS = 16  # download folders kept (Gradio serves its own copies; these are only its sources)
MAX_QUEUE = 64  # requests waiting at most; one more is told that the queue is full
AUTH_ENV = "USIS_APP_AUTH"  # USER:PASSWORD, for a login that is not in the shell history
MAX_IMAGES = 8
DEFAULT_IMAGES = 4  # the Images slider's start
ALL = "all images"
EDITOR_HEIGHT, PREVIEW_HEIGHT = 420, 240
CSS = (".usis-legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:0.9em}"
       ".usis-swatch{display:inline-flex;align-items:center;gap:4px}"
       ".usis-swatch i{display:inline-block;width:14px;height:14px;border:1px solid #888}"
       "#usis-gallery .grid-wrap{height:auto!important;min-height:0!important;max-height:none!important;"
       "overflow:visible!important}"
       "#usis-gallery .grid-container{grid-template-rows:none!important;grid-auto-rows:auto!important;"
       "padding-top:30px!important}")


# ----------------------------------------------------------------------------------------- palettes


def distinct_palette(palette) -> np.ndarray:
    """``K x 3`` uint8: the palette with each colour that an earlier class already has replaced by the
    colour (of a 6-level RGB grid) farthest from every colour in use, so that a colour names one class."""
    grid = np.stack(np.meshgrid(*[np.arange(0, 256, 51)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    out: list[np.ndarray] = []
    seen: set[tuple[int, int, int]] = set()
    originals = {tuple(int(v) for v in c) for c in palette}
    for c in palette:
        rgb = tuple(int(v) for v in c)
        if rgb in seen:
            used = np.array(out + [np.array(o) for o in originals], dtype=float)
            far = ((grid[:, None, :] - used[None]) ** 2).sum(-1).min(1)
            rgb = tuple(int(v) for v in grid[int(np.argmax(far))])
        seen.add(rgb)
        out.append(np.array(rgb))
    return np.array(out, dtype=np.uint8).reshape(-1, 3)


def color_tolerance(colors: np.ndarray) -> float:
    """Half the smallest distance between two palette colours, at most :data:`MAX_TOL`: within it a colour
    is unambiguously one class."""
    c = colors.astype(float)
    if len(c) < 2:
        return MAX_TOL
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    d[np.diag_indices(len(c))] = np.inf
    return float(min(MAX_TOL, d.min() / 2))


def nearest_color(rgb: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``... x 3`` pixels: the index of the nearest palette colour and its (Euclidean RGB) distance."""
    flat = rgb.reshape(-1, 3).astype(np.float32)
    c = colors.astype(np.float32)
    best = np.zeros(len(flat), dtype=np.int64)
    dist = np.full(len(flat), np.inf, dtype=np.float32)
    for k in range(len(c)):  # one class at a time: memory stays O(pixels) for 183-class palettes
        d = ((flat - c[k]) ** 2).sum(1)
        closer = d < dist
        best[closer], dist[closer] = k, d[closer]
    return best.reshape(rgb.shape[:-1]), np.sqrt(dist).reshape(rgb.shape[:-1])


def hex_color(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


# -------------------------------------------------------------------------------------- label maps


def upscale(ids: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel a ``scale x scale`` block."""
    return ids if scale == 1 else np.repeat(np.repeat(ids, scale, 0), scale, 1)


def block_mode(ids: np.ndarray, scale: int, num_classes: int) -> np.ndarray:
    """``H*s x W*s`` ids -> ``H x W``: the most frequent class of each ``s x s`` block (ties: the lower id)."""
    if scale == 1:
        return ids
    h, w = ids.shape[0] // scale, ids.shape[1] // scale
    blocks = ids[:h * scale, :w * scale].reshape(h, scale, w, scale)
    counts = np.stack([(blocks == k).sum((1, 3)) for k in range(num_classes)], -1)
    return counts.argmax(-1).astype(np.int64)


def canvas_to_ids(canvas: np.ndarray, base: np.ndarray, colors: np.ndarray, scale: int,
                  tol: float | None = None) -> np.ndarray:
    """The model-size id map of a painted canvas (``H*scale x W*scale x 3`` or RGBA, uint8) painted over
    the map ``base`` (``H x W`` ids, shown in ``colors``). See the module's docstring for the rule."""
    tol = color_tolerance(colors) if tol is None else tol
    h, w = base.shape
    canvas = np.asarray(canvas)
    if canvas.ndim == 2:
        canvas = np.repeat(canvas[..., None], 3, -1)
    rgb = canvas[..., :3]
    if rgb.shape[:2] != (h * scale, w * scale):
        raise GenerateError(f"the painted canvas is {rgb.shape[0]}x{rgb.shape[1]} pixels, but this model's label "
                            f"map shows as {h * scale}x{w * scale} (height x width): start again from a blank map "
                            "or a layout")
    under = upscale(base, scale)
    shown = colors[under]
    changed = (np.abs(rgb.astype(np.int16) - shown.astype(np.int16)) > CHANGED).any(-1)
    ids = under.copy()
    if changed.any():
        best, dist = nearest_color(rgb[changed], colors)
        ids[changed] = np.where(dist <= tol, best, under[changed])
    return block_mode(ids, scale, len(colors))


def flood_fill(ids: np.ndarray, row: int, col: int, class_id: int) -> np.ndarray:
    """``ids`` with the 4-connected region of ``ids[row, col]`` that contains that pixel set to ``class_id``."""
    h, w = ids.shape
    if not (0 <= row < h and 0 <= col < w):
        raise GenerateError(f"fill: the point ({col}, {row}) is outside the {h}x{w} label map")
    regions, _ = ndimage.label(ids == ids[row, col])
    out = ids.copy()
    out[regions == regions[row, col]] = class_id
    return out


def check_map_size(height: int, width: int, size: tuple[int, int]) -> None:
    """Raise :class:`GenerateError` for a label map the model cannot take (it resizes any other)."""
    mh, mw = size
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise GenerateError(f"the label map is {height}x{width} pixels: label maps from {MIN_SIDE} to {MAX_SIDE} "
                            f"pixels a side and up to {MAX_PIXELS / 1e6:.1f} megapixels (e.g. 2048x2048, "
                            f"1024x4096) are accepted; this model makes {mh}x{mw} images, so resize the map "
                            "first (nearest neighbour, which keeps the class ids)")
    ratio = (width / height) / (mw / mh)
    if ratio > MAX_ASPECT or ratio < 1 / MAX_ASPECT:
        raise GenerateError(f"the label map is {height}x{width} pixels (height x width), far from this model's "
                            f"{mh}x{mw} shape (aspect ratio off by more than {MAX_ASPECT:g}x): crop it to about "
                            f"{mh}:{mw} (height:width) first")


def header_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` from an image file's header (PIL decodes no pixels for it), or None when PIL cannot
    read the header (:func:`usis.data.datasets.open_image` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked by the caller
            with Image.open(path) as img:
                return img.size[1], img.size[0]
    except Image.DecompressionBombError:
        raise GenerateError(f"{Path(path).name}: the image has over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                            f"megapixels: label maps up to {MAX_PIXELS / 1e6:.1f} megapixels are accepted") from None
    except Exception:  # noqa: BLE001 - not an image PIL knows: open_image gives the message
        return None


def color_map_ids(rgb: np.ndarray, colors: np.ndarray, names, name: str = "upload") -> np.ndarray:
    """An RGB label map painted in the palette's colours -> ids; every pixel must be within
    :data:`UPLOAD_TOL` of a palette colour."""
    best, dist = nearest_color(rgb, colors)
    off = dist > UPLOAD_TOL
    if off.mean() > 0.5:
        some = np.unique(rgb[off].reshape(-1, 3), axis=0)[:3]
        raise GenerateError(f"{name}: a colour image whose colours ({', '.join(hex_color(c) for c in some)}, ...) "
                            f"match no colour of this model's palette ({', '.join(names[:4])}, ...) in "
                            f"{off.mean():.0%} of its pixels: upload a map of class ids (grayscale / index PNG) or "
                            "one painted in the palette's colours")
    if off.any():
        some = np.unique(rgb[off].reshape(-1, 3), axis=0)
        raise GenerateError(f"{name}: {int(off.sum())} pixels have colours that are not in this model's palette "
                            f"({', '.join(hex_color(c) for c in some[:4])}{', ...' if len(some) > 4 else ''}); "
                            "save the map losslessly (PNG) in the palette's colours, or as class ids")
    return best


# -------------------------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class Shot:
    """One generated image: its noise seed, and the classes whose region has another seed's noise vector."""

    seed: int
    regions: tuple[tuple[int, int], ...] = ()  # (class id, seed of that region's noise vector)

    def with_region(self, class_id: int, seed: int) -> "Shot":
        kept = tuple((c, s) for c, s in self.regions if c != class_id)
        return replace(self, regions=(*kept, (int(class_id), int(seed))))


# ---------------------------------------------------------------------------------------------- app


class LabelApp:
    """The app's state-free logic around a :class:`~usis.pipeline.USISPipeline` (what the page calls)."""

    def __init__(self, pipe: USISPipeline, scale: int | None = None, keep: int = KEEP_GENERATIONS,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, concurrency: int = 1):
        """``keep``: the download folders of the newest ``keep`` generations stay on disk; ``max_upload_bytes``:
        the largest upload; ``concurrency``: generations that run at once (the others wait in the queue)."""
        self.pipe = pipe
        self.names = list(pipe.class_names)
        self.colors = distinct_palette(pipe.palette)
        self.tol = color_tolerance(self.colors)
        self.size = pipe.size
        h, w = self.size
        self.scale = int(scale or max(1, min(8, round(512 / w))))
        self.canvas_size = (h * self.scale, w * self.scale)
        self.num_classes = pipe.num_classes
        if len(self.names) != self.num_classes:
            raise CheckpointError(f"{pipe.source}: {len(self.names)} class names for a generator of "
                                  f"{self.num_classes} classes")
        dontcare = pipe.config.data.dontcare
        self.default_class = next((k for k in range(self.num_classes) if k != dontcare), 0)
        if int(keep) < 1 or int(concurrency) < 1:
            raise ConfigError(f"keep={keep}, concurrency={concurrency}: both must be at least 1")
        self.max_upload_bytes, self.concurrency = int(max_upload_bytes), int(concurrency)
        self.keep = max(int(keep), self.concurrency + 1)  # a folder is gone only after Gradio copied its files
        self._tmp = tempfile.TemporaryDirectory(prefix="usis-app-")
        self.tmp_dir = Path(self._tmp.name)  # one folder per generation under it, the newest `keep` kept
        self._folders: collections.deque[Path] = collections.deque()
        self._folders_lock = threading.Lock()  # requests save from several threads
        self._val_paths: list[str] | None = None
        self._val_problem = ""

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str = "auto", revision: str | None = None,
                        **kwargs) -> "LabelApp":
        """The app for a checkpoint, run folder, export folder or Hub model repo (``org/name``, at
        ``revision``); ``kwargs``: :class:`LabelApp`'s options."""
        return cls(USISPipeline.from_pretrained(resolve_checkpoint(path), device=device, revision=revision), **kwargs)

    # ------------------------------------------------------------------------------ starting maps

    def blank(self, class_id: int | None = None) -> np.ndarray:
        k = self.default_class if class_id is None else self.check_class(class_id)
        return np.full(self.size, k, dtype=np.int64)

    def layout(self, seed: int) -> tuple[np.ndarray, str]:
        """A label map of the checkpoint's dataset: a fresh synthetic scene, or a validation label map."""
        cfg = self.pipe.config
        h, w = self.size
        if cfg.data.kind == "synthetic":
            return make_layout(np.random.default_rng(seed), h, w), f"a synthetic street scene (seed {seed})"
        if self._val_paths is None:
            try:
                lay = resolve_layout(cfg, "val")
                self._val_paths = [] if lay.problems else list(lay.label_paths)
                self._val_problem = "; ".join(lay.problems)
            except UsisError as e:
                self._val_paths, self._val_problem = [], str(e)
        if not self._val_paths:
            raise GenerateError(f"no {cfg.data.kind} layouts here: the dataset this model was trained on is not "
                                f"available ({self._val_problem or 'no validation label maps'}); paint one, start "
                                "blank or upload a label PNG")
        path = self._val_paths[seed % len(self._val_paths)]
        ids = read_label_map(path, cfg)
        return resize_nearest(ids, h, w), f"validation label map {Path(path).name}"

    def read_upload(self, path: str | Path) -> tuple[np.ndarray, str]:
        """An uploaded label image (class ids, or the palette's colours) as model-size ids, and a note."""
        name = Path(path).name
        try:
            nbytes = os.path.getsize(path)
        except OSError:
            nbytes = 0  # open_image names the problem
        if nbytes > self.max_upload_bytes:
            raise GenerateError(f"{name}: {_size(nbytes)}; uploads up to {_size(self.max_upload_bytes)} are "
                                "accepted (a label map PNG is usually far smaller)")
        shape = header_size(path)
        try:
            if shape is not None:  # refused before a pixel is decoded
                check_map_size(*shape, self.size)
            img = open_image(str(path))  # decodes
            check_map_size(img.size[1], img.size[0], self.size)
        except GenerateError as e:
            raise GenerateError(e if str(e).startswith(f"{name}:") else f"{name}: {e}") from None
        with img:
            width, height = img.size
            rgb = np.asarray(img.convert("RGB")) if img.mode in ("RGB", "RGBA") else None
            if rgb is not None and not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                ids, how = color_map_ids(rgb, self.colors, self.names, name), "palette colours"
            else:  # index / grayscale PNGs, and ids saved as gray RGB
                ids, how = image_label_ids(img, name, self.pipe.config.data.kind), "class ids"
        shown = ids_outside(ids, self.num_classes)
        if shown:
            raise GenerateError(f"{name}: label ids {shown} are outside [0, {self.num_classes}): this model knows "
                                f"{self.num_classes} classes (ids 0..{self.num_classes - 1}, see the palette)")
        h, w = self.size
        note = f"{name}: {height}x{width} {how}"
        if (height, width) != (h, w):
            note += f", resized to {h}x{w} (nearest neighbour)"
        return resize_nearest(ids.astype(np.int64), h, w), note

    def check_ids(self, ids) -> np.ndarray:
        """Model-size int64 ids, checked (the pipeline's rules: integers in range; resized nearest)."""
        return self.pipe.label_ids(np.asarray(ids)).numpy()

    def check_class(self, class_id) -> int:
        try:
            k = int(class_id)
        except (TypeError, ValueError):
            raise GenerateError(f"class {class_id!r}: pick a class of the palette") from None
        if not 0 <= k < self.num_classes:
            raise GenerateError(f"class {k}: this model knows classes 0..{self.num_classes - 1}")
        return k

    # -------------------------------------------------------------------------------- painting

    def render(self, ids: np.ndarray) -> np.ndarray:
        """The map as the editor shows it: ``scale`` times enlarged, in the app's palette (uint8 RGB)."""
        return colorize(upscale(np.asarray(ids), self.scale), [tuple(c) for c in self.colors])

    def commit(self, canvas, base: np.ndarray) -> np.ndarray:
        """The model-size ids of an editor canvas painted over ``base``; the canvas None: ``base``."""
        if canvas is None:
            return base
        return canvas_to_ids(np.asarray(canvas), base, self.colors, self.scale, self.tol)

    def fill(self, ids: np.ndarray, x: int, y: int, class_id: int) -> np.ndarray:
        """Fill the region under canvas pixel ``(x, y)`` with ``class_id``."""
        return flood_fill(ids, int(y) // self.scale, int(x) // self.scale, self.check_class(class_id))

    # ------------------------------------------------------------------------------ generating

    def shots(self, first_seed: int, n: int) -> list[Shot]:
        n = int(n)
        if not 1 <= n <= MAX_IMAGES:
            raise GenerateError(f"{n} images: generate 1 to {MAX_IMAGES} at a time")
        return [Shot(int(first_seed) + k) for k in range(n)]

    def noise(self, labels: torch.Tensor, shot: Shot, local_style: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``z`` (``z_dim`` or ``z_dim x H x W``) and the pixel noise of one image: the pipeline's noise for
        its seed (:func:`usis.nn.noise.seeded_noise`), with each region of ``shot.regions`` given the noise
        vector of its own seed."""
        G = self.pipe.generator
        k = self.num_classes
        z, pn = seeded_noise([shot.seed], G.z_dim, G.pixel_noise, *labels.shape, labels=labels[None],
                             num_classes=k, local_style=local_style, class_style=G.class_style)
        z, pn = z[0], None if pn is None else pn[0]
        if not shot.regions or not G.z_dim:
            return z, pn
        if local_style or G.class_style:  # the per-class table style_map draws the map from
            table = style_map(torch.arange(k)[None], shot.seed, G.z_dim, k)[:, 0].T.clone()
            if not local_style:  # a generator trained with a style per class: the image's vector in the rest
                table[:, : G.z_dim - G.class_style] = noise_vector(shot.seed, G.z_dim)[: G.z_dim - G.class_style]
        else:
            table = z[None].repeat(k, 1)
        for c, s in shot.regions:
            table[c] = noise_vector(s, G.z_dim)
        return table[labels.long()].permute(2, 0, 1), pn

    @torch.no_grad()
    def generate(self, ids: np.ndarray, shots: list[Shot], local_style: bool = False) -> list[Image.Image]:
        """One image per shot for the label map ``ids``."""
        labels = torch.from_numpy(self.check_ids(ids))
        noise = [self.noise(labels, s, local_style) for s in shots]
        zs = [z for z, _ in noise]
        if any(z.dim() == 3 for z in zs):
            zs = [z if z.dim() == 3 else z[:, None, None].expand(-1, *labels.shape) for z in zs]
        pixel_noise = torch.stack([p for _, p in noise]) if self.pipe.generator.pixel_noise else None
        images = run_generator(self.pipe.generator, labels[None].expand(len(shots), -1, -1), torch.stack(zs),
                               pixel_noise)
        return [to_pil(img) for img in images]

    def restyle(self, shots: list[Shot], class_id: int, ids: np.ndarray, targets: list[int] | None = None,
                seed: int | None = None) -> list[Shot]:
        """New noise for class ``class_id``'s region in the images ``targets`` (default: all): image i of
        them gets the vector of seed ``seed + i`` (``seed`` random when None)."""
        k = self.check_class(class_id)
        if not shots:
            raise GenerateError("generate images first, then re-draw a region's style")
        if not (np.asarray(ids) == k).any():
            raise GenerateError(f"'{self.names[k]}' is not in the label map: nothing to re-draw")
        if not self.pipe.generator.z_dim:
            raise GenerateError("this generator was trained without noise (model.noise_3d=false): a region "
                                "has one look only")
        seed = random.randrange(1, 2**31 - MAX_IMAGES) if seed is None else int(seed)
        targets = list(range(len(shots))) if targets is None else targets
        out = list(shots)
        for i, t in enumerate(targets):
            out[t] = out[t].with_region(k, seed + i)
        return out

    def caption(self, shot: Shot) -> str:
        return " · ".join([f"seed {shot.seed}", *(f"{self.names[c]}: seed {s}" for c, s in shot.regions)])

    def save(self, ids: np.ndarray, images: list[Image.Image], shots: list[Shot]) -> list[Path]:
        """Write the images, the label map (ids and colours) and a zip of them; returns the paths. On a full
        disk nothing of them is left and a :class:`~usis.errors.DiskFullError` says so (the page still shows
        the images: :meth:`build`)."""
        try:
            folder = Path(tempfile.mkdtemp(dir=self.tmp_dir))  # this request's own folder
        except OSError as e:
            if disk_full_cause(e) is None:
                raise
            raise self._downloads_full(e, self.tmp_dir) from e
        try:
            paths = [folder / "label_ids.png", folder / "label_color.png"]
            label_png(ids, self.num_classes).save(paths[0])
            Image.fromarray(colorize(ids, [tuple(c) for c in self.colors])).save(paths[1])
            for img, shot in zip(images, shots, strict=True):
                regions = "".join(f"_c{c}s{s}" for c, s in shot.regions)
                paths.append(folder / f"image_seed{shot.seed}{regions}.png")
                img.save(paths[-1])
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for p in paths:
                    z.write(p, p.name)
            paths.append(folder / "usis_app.zip")
            paths[-1].write_bytes(buf.getvalue())
        except BaseException as e:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(e, Exception) and disk_full_cause(e) is not None:
                raise self._downloads_full(e, folder) from e
            raise
        self._keep_newest(folder)
        return paths

    def _downloads_full(self, e: Exception, folder: Path) -> DiskFullError:
        """The one message for downloads that met a full disk (``e``: the failed write)."""
        return disk_full_error(e, folder, for_what=" for the downloads",
                               hint="the images are shown but cannot be downloaded; free some space there (or set "
                                    "TMPDIR to another disk before starting usis app) and generate again")

    def _keep_newest(self, folder: Path) -> None:
        """Remember ``folder`` and delete the folders of generations older than the newest :attr:`keep`
        (Gradio has copied their files into its own cache by then: the page's links stay valid)."""
        with self._folders_lock:
            self._folders.append(folder)
            old = [self._folders.popleft() for _ in range(len(self._folders) - self.keep)]
        for f in old:
            shutil.rmtree(f, ignore_errors=True)

    # ------------------------------------------------------------------------------------- page

    def legend_html(self) -> str:
        items = "".join(
            f'<span class="usis-swatch" title="id {k}"><i style="background:{hex_color(c)}"></i>{k} {name}</span>'
            for k, (name, c) in enumerate(zip(self.names, self.colors, strict=True)))
        return f'<div class="usis-legend">{items}</div>'

    def editor_value(self, ids: np.ndarray) -> dict[str, Any]:
        canvas = self.render(ids)
        return {"background": canvas, "layers": [], "composite": canvas}

    def build(self):
        """The Gradio page (a ``gr.Blocks``)."""
        gr = _gradio()
        p = self.pipe
        h, w = self.size
        hexes = [hex_color(c) for c in self.colors]
        class_choices = [(f"{k} {n}", k) for k, n in enumerate(self.names)]

        def brush(k: int):
            return gr.Brush(colors=hexes, default_color=hexes[k], color_mode="fixed",
                            default_size=max(3 * self.scale, round(self.canvas_size[1] / 40)))

        def guard(n_out: int):
            """Errors a user can fix: a warning in the page and the message box; the rest: the same plus the
            traceback in the terminal (never in the page)."""
            def wrap(fn):
                @functools.wraps(fn)
                def run(*args):
                    try:
                        return fn(*args)
                    except UsisError as e:
                        msg = f"error: {e}"
                    except Exception as e:  # noqa: BLE001 - the page shows a message, the terminal the traceback
                        traceback.print_exc()
                        msg = f"error: {type(e).__name__}: {e} (details in the terminal running usis app)"
                    gr.Warning(msg)
                    return (*([gr.skip()] * (n_out - 1)), msg)
                return run
            return wrap

        start = self.layout(0)[0] if p.config.data.kind == "synthetic" else self.blank()
        # Gradio's own cache (the images the page shows, copies of the downloads, uploads): files over an
        # hour old are deleted every 10 minutes
        with gr.Blocks(title="usis app", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
            gr.Markdown(f"## usis: paint a label map, get photos\nModel `{p.hub or p.source}` (step {p.step}): "
                        f"{p.num_classes} classes, {h}x{w} images (height x width).")
            base = gr.State(start)
            shots = gr.State([])
            with gr.Row():
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(
                        value=None, label="Label map: paint with the brush (palette colours)",
                        image_mode="RGB", type="numpy", format="png", sources=[], transforms=[], layers=False,
                        brush=brush(self.default_class), eraser=gr.Eraser(), canvas_size=self.canvas_size[::-1],
                        fixed_canvas=True, height=EDITOR_HEIGHT, elem_id="usis-editor")
                    gr.HTML(self.legend_html())
                    with gr.Row(equal_height=True):
                        cls = gr.Dropdown(class_choices, value=self.default_class, label="Class (brush, fill, blank)",
                                          elem_id="usis-class", scale=2)
                        blank_btn = gr.Button("Blank map", elem_id="usis-blank", scale=1)
                        layout_btn = gr.Button("Dataset layout", elem_id="usis-layout", scale=1)
                        upload = gr.UploadButton("Upload label PNG", file_types=["image"], elem_id="usis-upload",
                                                 scale=1)
                    preview = gr.Image(self.render(start), label="The label map the model sees: click a region to fill "
                                       "it with the class", interactive=False, format="png", height=PREVIEW_HEIGHT,
                                       buttons=["download"], elem_id="usis-preview")
                with gr.Column(scale=2):
                    with gr.Row():
                        n = gr.Slider(1, MAX_IMAGES, value=DEFAULT_IMAGES, step=1, label="Images")
                        seed = gr.Number(0, precision=0, label="First seed", elem_id="usis-seed")
                    local = gr.Checkbox(False, label="A style per region (local style)")
                    with gr.Row():
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="usis-generate")
                        new_btn = gr.Button("New styles", elem_id="usis-new-styles")
                    gallery = gr.Gallery(label="Generated images (click one to pick it)", columns=2, format="png",
                                         object_fit="contain", elem_id="usis-gallery")
                    with gr.Row(equal_height=True):
                        region = gr.Dropdown(class_choices, value=self.default_class, label="Region (class)",
                                             elem_id="usis-region")
                        target = gr.Dropdown([ALL] + [f"image {i}" for i in range(1, MAX_IMAGES + 1)], value=ALL,
                                             label="In (or click an image)", elem_id="usis-restyle-in")
                        restyle_btn = gr.Button("Re-draw its style", elem_id="usis-restyle")
                    status = gr.Textbox(label="Messages", interactive=False, elem_id="usis-status")
                    files = gr.File(label="Download: images, label map (ids, colours), zip", file_count="multiple",
                                    interactive=False, elem_id="usis-files")

            def new_map(ids, note):
                return ids, self.editor_value(ids), self.render(ids), note

            map_outputs = [base, editor, preview, status]

            @guard(4)
            def on_blank(k):
                k = self.check_class(k)
                return new_map(self.blank(k), f"blank map: {self.names[k]}")

            @guard(4)
            def on_layout():
                ids, note = self.layout(random.randrange(2**31))
                return new_map(ids, note)

            @guard(4)
            def on_upload(f):
                if f is None:
                    return (gr.skip(),) * 4
                ids, note = self.read_upload(f)
                return new_map(ids, note)

            @guard(4)
            def on_fill(canvas, ids, k, evt: gr.SelectData):
                ids = self.commit(_composite(canvas), ids)
                x, y = evt.index
                filled = self.fill(ids, x, y, k)
                return new_map(filled, f"filled the {self.names[ids[int(y) // self.scale, int(x) // self.scale]]} "
                               f"region at ({int(x) // self.scale}, {int(y) // self.scale}) with "
                               f"{self.names[int(k)]}")

            @guard(2)
            def on_paint(canvas, ids):
                return self.render(self.commit(_composite(canvas), ids)), gr.skip()

            def run(canvas, ids, shot_list, use_local, note, which=ALL):
                ids = self.commit(_composite(canvas), ids)
                t0 = time.perf_counter()
                images = self.generate(ids, shot_list, bool(use_local))
                dt = time.perf_counter() - t0
                msg = f"{note} in {dt:.2f} s ({dt / len(images):.3f} s per image on {p.device.type})"
                try:
                    paths = self.save(ids, images, shot_list)
                except DiskFullError as e:  # the images are made: show them, say why there are no downloads
                    paths, msg = [], f"error: {e}"
                    gr.Warning(msg)
                gal = [(img, self.caption(s)) for img, s in zip(images, shot_list, strict=True)]
                sel = None if which == ALL else int(which.split()[-1]) - 1
                return (self.render(ids), gr.update(value=gal, selected_index=sel), shot_list, which,
                        [str(x) for x in paths], msg)

            gen_outputs = [preview, gallery, shots, target, files, status]

            @guard(6)
            def on_generate(canvas, ids, count, first, use_local, which=ALL):
                shot_list = self.shots(first if first is not None else 0, count)
                which = which or ALL
                if which != ALL and int(which.split()[-1]) > len(shot_list):  # the picked image is gone
                    which = ALL
                return run(canvas, ids, shot_list, use_local,
                           f"{len(shot_list)} images, seeds {shot_list[0].seed}..{shot_list[-1].seed},", which)

            @guard(7)
            def on_new_styles(canvas, ids, count, use_local, which=ALL):
                first = random.randrange(0, 2**31 - MAX_IMAGES)
                return (first, *on_generate(canvas, ids, count, first, use_local, which))

            @guard(6)
            def on_restyle(canvas, ids, shot_list, k, which, use_local):
                k = self.check_class(k)
                which = which or ALL
                targets = None
                if which != ALL:
                    i = int(which.split()[-1]) - 1
                    if not shot_list or i >= len(shot_list):
                        raise GenerateError(f"{which}: there {'is' if len(shot_list) == 1 else 'are'} "
                                            f"{len(shot_list)} image{'' if len(shot_list) == 1 else 's'}; pick "
                                            "one of them or all images")
                    targets = [i]
                new = self.restyle(shot_list, k, self.commit(_composite(canvas), ids), targets)
                return run(canvas, ids, new, use_local, f"new {self.names[k]} style in {which},", which)

            def on_select(evt: gr.SelectData):
                return f"image {evt.index + 1}"

            def on_class(k):
                return gr.ImageEditor(brush=brush(self.check_class(k)))

            # the model's events share one queue, `concurrency` at a time; the queue shows each its place and
            # the time left (the rest are quick and each has its own queue)
            model = {"concurrency_id": "model", "concurrency_limit": self.concurrency}
            blank_btn.click(on_blank, [cls], map_outputs)
            layout_btn.click(on_layout, None, map_outputs)
            upload.upload(on_upload, [upload], map_outputs)
            preview.select(on_fill, [editor, base, cls], map_outputs)
            editor.change(on_paint, [editor, base], [preview, status], show_progress="hidden")
            cls.change(on_class, [cls], [editor])
            gen_btn.click(on_generate, [editor, base, n, seed, local, target], gen_outputs, **model)
            new_btn.click(on_new_styles, [editor, base, n, local, target], [seed, *gen_outputs], **model)
            restyle_btn.click(on_restyle, [editor, base, shots, region, target, local], gen_outputs, **model)
            gallery.select(on_select, None, [target])
            # the canvas is set on load: Gradio's editor swallows its first change event (that one, then), so that
            # the first stroke already updates the preview
            demo.load(lambda: self.editor_value(start), None, [editor])
        return demo

    def warm_up(self) -> float:
        """Generate one image (the first call of a model is the slowest); its time in seconds."""
        t0 = time.perf_counter()
        self.generate(self.blank(), [Shot(0)])
        return time.perf_counter() - t0

    def launch(self, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
               auth: list[tuple[str, str]] | None = None):
        """Build the page and serve it on ``host:port``, behind Gradio's login page when ``auth`` (``[(user,
        password), ...]``) is given; with ``block=False`` return the running ``gr.Blocks`` (``.close()`` stops
        it). Host checks: :func:`serve`."""
        gr = _gradio()
        demo = self.build()
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "monospace"])  # system fonts: nothing fetched
        demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
        _seed_wait_estimates(demo, DEFAULT_IMAGES * self.warm_up())
        try:
            demo.launch(
                server_name=host, server_port=int(port), prevent_thread_lock=not block, quiet=True, show_error=False,
                inbrowser=False, footer_links=[], theme=theme, auth=auth or None, max_file_size=self.max_upload_bytes,
                auth_message="usis app: log in with the user and password of the person who runs it",
                css=CSS + f"#usis-gallery .thumbnail-item{{aspect-ratio:{self.size[1]}/{self.size[0]}}}")
        except OSError as e:
            raise GenerateError(f"cannot serve on {host}:{port} ({e}); pass another --port") from None
        return demo


def _seed_wait_estimates(demo, seconds: float) -> None:
    """Give Gradio's queue a first estimate of the model's events (``seconds`` each): it shows a waiting
    request the time left only once it knows how long the event takes, which it otherwise learns from the
    first request of each. Gradio's internals: without them (another version), nothing happens."""
    try:
        times = demo._queue.process_time_per_fn
        for fn in demo.fns.values():
            if fn.concurrency_id == "model" and fn not in times:
                times[fn].add(seconds)
    except (AttributeError, TypeError):
        pass


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3g} MB" if nbytes >= 2**20 else f"{nbytes / 1024:.3g} KB"


def _composite(value) -> np.ndarray | None:
    """The painted image of an ImageEditor value (``{"background", "layers", "composite"}``)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("composite")
    return value


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app talks to nothing but its own page
    try:
        import gradio as gr  # lazy: an optional dependency (pip install 'usis[app]'); import usis.app works without
    except ImportError as e:
        raise GenerateError(f"{NEEDS_GRADIO} ({e})") from None
    return gr


def resolve_checkpoint(path: str | Path | None) -> Path | str:
    """``--checkpoint`` or, without it, ``runs/demo`` (what ``make demo`` writes). A Hub model repo
    (``org/name`` that is no local path) is returned as it is: ``USISPipeline.from_pretrained`` fetches it."""
    if path is None:
        if DEFAULT_RUN.is_dir() and find_checkpoint(DEFAULT_RUN) is not None:
            return DEFAULT_RUN
        raise CheckpointError(NO_MODEL if not DEFAULT_RUN.exists() else
                              f"no model: {DEFAULT_RUN} has no checkpoint yet; " + NO_MODEL.removeprefix("no model: "))
    p = Path(path).expanduser()
    if not p.exists():
        if is_hub_name(path):
            return str(path)
        raise CheckpointError(f"--checkpoint {p}: no such file or folder; pass a training checkpoint "
                              "(RUN/checkpoints/latest.pt), a run folder, a folder written by `usis export`, or a "
                              "Hugging Face Hub model repo (org/name)")
    return p


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address (127.x, ::1). Any other
    name or address (0.0.0.0, ::, a host name, an interface's address) may be reached from the network."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_login(text: str, where: str) -> tuple[str, str]:
    """``USER:PASSWORD`` -> ``(user, password)`` (split at the first colon). Messages name ``where`` the text
    came from, never the text (a password)."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where}: expected USER:PASSWORD (a user name, a colon, a password; neither empty)")
    return user, password


def app_credentials(host: str, auth: str | None = None, auth_file: str | Path | None = None,
                    open_network: bool = False, environ=None) -> list[tuple[str, str]] | None:
    """The logins the page asks for: from ``auth`` (``--auth USER:PASSWORD``), else ``auth_file``
    (``--auth-file``: a line ``USER:PASSWORD`` per user; blank lines and ``#`` comments skipped), else the
    environment variable :data:`AUTH_ENV`; None without any. Without a login, a ``host`` beyond the loopback
    address needs ``open_network`` (``--open``): otherwise :class:`ConfigError` says how."""
    environ = os.environ if environ is None else environ
    logins: list[tuple[str, str]] = []
    if auth is not None:
        logins = [parse_login(auth, "--auth")]
    elif auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            lines = path.read_text().splitlines()
            mode = path.stat().st_mode
        except OSError as e:
            raise ConfigError(f"--auth-file {path}: cannot read it ({e.strerror or e}); write a line USER:PASSWORD "
                              f"into it (chmod 600 {path})") from None
        logins = [parse_login(line, f"--auth-file {path} line {i}") for i, line in enumerate(lines, 1)
                  if line.strip() and not line.lstrip().startswith("#")]
        if not logins:
            raise ConfigError(f"--auth-file {path}: no USER:PASSWORD line in it")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(f"--auth-file {path} can be read by other users of this machine: chmod 600 {path}",
                          UsisWarning, stacklevel=2)
    elif environ.get(AUTH_ENV):
        logins = [parse_login(environ[AUTH_ENV], f"${AUTH_ENV}")]
    if not logins and not open_network and not is_loopback(host):
        raise ConfigError(f"--host {host} serves the app to the network without a login: give it one with "
                          f"--auth-file FILE (a line USER:PASSWORD) or {AUTH_ENV}=USER:PASSWORD (or --auth "
                          "USER:PASSWORD, which stays in the shell history), or pass --open to serve it to anyone "
                          "who can reach it")
    return logins or None


def serve(checkpoint: str | Path | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True, auth: str | None = None, auth_file: str | Path | None = None,
          open_network: bool = False, concurrency: int = 1, revision: str | None = None):
    """``usis app``: check the login (:func:`app_credentials`), load the model, build the page and serve it
    on ``host:port``, ``concurrency`` generations at a time. With ``block=False`` returns the running
    ``gr.Blocks`` (``.close()`` stops it)."""
    logins = app_credentials(host, auth, auth_file, open_network)  # before anything slow
    if int(concurrency) < 1:
        raise ConfigError(f"--concurrency {concurrency}: run at least 1 generation at a time (1 suits one model)")
    path = resolve_checkpoint(checkpoint)
    _gradio()  # before loading the model: say at once that the extra is missing
    app = LabelApp.from_checkpoint(path, device=device, revision=revision, concurrency=concurrency)
    shown = socket.gethostname() if host.strip("[]") in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    access = (f"login: {', '.join(u for u, _ in logins)}" if logins else
              "open to anyone who can reach it (--open)" if not is_loopback(host) else "this machine only")
    print(f"usis app: {app.pipe.hub or app.pipe.source} (step {app.pipe.step}), {app.num_classes} classes, "
          f"{app.size[0]}x{app.size[1]} images; open http://{shown}:{port} ({access})", file=sys.stderr)
    return app.launch(host, port, block, auth=logins)
