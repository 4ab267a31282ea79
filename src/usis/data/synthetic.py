"""Procedural street scenes: a tiny, CPU-fast stand-in for Cityscapes.

Every sample is drawn from a seeded numpy generator in two steps:

1. :func:`make_layout` draws a street layout, an ``int64`` ``H x W`` map of class ids: sky on top,
   buildings of varied heights, a road trapezoid towards a vanishing point, sidewalks on both sides,
   trees, poles with signs, persons on the sidewalks and cars on the road (drawn far to near, so near
   objects occlude far ones), plus a thin don't-care (id 0) border now and then.
2. :func:`render` paints a photo for a layout: every class has textures with high-frequency detail
   (asphalt grain and lane markings, bricks / glass / plaster facades with window grids, speckled
   leaves, paving tiles, ...) and several looks drawn per image or per instance (car colours, day /
   overcast / dusk skies, ...).

Training data is UNPAIRED by construction: :class:`SyntheticLabels` and :class:`SyntheticPhotos` draw
their layouts from different random streams, so a photo's own layout is never handed out as a label.
:class:`SyntheticPaired` is a third stream (photo + its own layout) used only to train and measure the
synthetic evaluator (:mod:`usis.metrics.synthetic_eval`).

Item ``i`` is a pure function of ``(seed, split, stream, i, height, width)``: its generator is
``np.random.default_rng([DATA_VERSION, seed, split_code, stream_code, i, height, width])``, so items do
not depend on access order, and the splits (``train``, ``val``, ``test``) use disjoint streams.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

# Bump when layouts or rendering change: it keys cached evaluator weights and feature statistics.
DATA_VERSION = 2

NUM_CLASSES = 10
DONTCARE = 0
CLASS_NAMES: list[str] = [
    "unlabeled",
    "sky",
    "road",
    "building",
    "tree",
    "car",
    "sidewalk",
    "pole",
    "person",
    "sign",
]
UNLABELED, SKY, ROAD, BUILDING, TREE, CAR, SIDEWALK, POLE, PERSON, SIGN = range(NUM_CLASSES)
# Label colours (Cityscapes-like) for visualising label maps; index = class id.
PALETTE: list[tuple[int, int, int]] = [
    (0, 0, 0),
    (70, 130, 180),
    (128, 64, 128),
    (70, 70, 70),
    (107, 142, 35),
    (0, 0, 142),
    (244, 35, 232),
    (153, 153, 153),
    (220, 20, 60),
    (220, 220, 0),
]

SPLITS = {"train": 0, "val": 1, "test": 2}
_STREAM_LABELS, _STREAM_PHOTOS, _STREAM_PAIRED = 1, 2, 3


def check_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of 32."""
    if (
        not isinstance(height, int | np.integer)
        or not isinstance(width, int | np.integer)
        or height < 32
        or width < 32
        or height % 32
        or width % 32
    ):
        raise ValueError(
            f"synthetic data needs height and width that are positive multiples of 32 "
            f"(e.g. 64x128, 128x256); got {height}x{width}"
        )


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; use one of {sorted(SPLITS)}")
    return SPLITS[split]


# ----------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------


class _Drawing:
    """A label map being drawn, with an instance-id map and a box per instance (id 0 = no instance)."""

    def __init__(self, lab: np.ndarray) -> None:
        self.lab = lab
        self.inst = np.zeros(lab.shape, np.int32)
        self.boxes: list[tuple[float, float, float, float]] = [(0.0, 1.0, 0.0, 1.0)]

    def new(self, y0: float, y1: float, x0: float, x1: float) -> int:
        """Start an instance whose (unclipped) extent is rows [y0, y1) x cols [x0, x1); returns its id."""
        self.boxes.append((y0, y1, x0, x1))
        return len(self.boxes) - 1

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int, k: int = 0) -> None:
        """Fill rows [y0, y1) x cols [x0, x1) (clipped; at least one pixel wide and tall)."""
        h, w = self.lab.shape
        ya, xa = math.floor(y0), math.floor(x0)
        yb, xb = max(ya + 1, round(y1)), max(xa + 1, round(x1))
        ya, xa, yb, xb = max(ya, 0), max(xa, 0), min(yb, h), min(xb, w)
        if yb > ya and xb > xa:
            self.lab[ya:yb, xa:xb] = cls
            self.inst[ya:yb, xa:xb] = k

    def blob(
        self,
        cy: float,
        cx: float,
        ry: float,
        rx: float,
        cls: int,
        k: int = 0,
        lobes: tuple[float, float, float] | None = None,
    ) -> None:
        """Fill an ellipse; ``lobes=(amplitude, frequency, phase)`` makes its outline wavy (tree crowns)."""
        h, w = self.lab.shape
        ry, rx = max(ry, 0.6), max(rx, 0.6)
        grow = 1.0 + (lobes[0] if lobes else 0.0)
        ya, yb = max(int(cy - ry * grow) - 1, 0), min(int(cy + ry * grow) + 2, h)
        xa, xb = max(int(cx - rx * grow) - 1, 0), min(int(cx + rx * grow) + 2, w)
        if yb <= ya or xb <= xa:
            return
        dy = (np.arange(ya, yb, dtype=np.float32)[:, None] + 0.5 - cy) / ry
        dx = (np.arange(xa, xb, dtype=np.float32)[None, :] + 0.5 - cx) / rx
        r = np.sqrt(dy * dy + dx * dx)
        limit = 1.0
        if lobes:
            amp, freq, phase = lobes
            theta = np.arctan2(dy, dx)
            limit = 1.0 + amp * np.sin(freq * theta + phase) + 0.5 * amp * np.sin(2.3 * freq * theta - phase)
        inside = r <= limit
        self.lab[ya:yb, xa:xb][inside] = cls
        self.inst[ya:yb, xa:xb][inside] = k


@dataclass
class _Street:
    """Geometry of one layout: horizon row, vanishing column, road / sidewalk half-widths."""

    h: int
    w: int
    hz: int
    vx: float
    road_top: float
    road_bot: float
    side_top: float
    side_bot: float

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return min(max((y - self.hz) / (self.h - self.hz), 0.0), 1.0)

    def road_hw(self, d: np.ndarray | float) -> np.ndarray | float:
        return self.road_top + (self.road_bot - self.road_top) * d

    def side_hw(self, d: np.ndarray | float) -> np.ndarray | float:
        return self.road_hw(d) + self.side_top + (self.side_bot - self.side_top) * d


def _sidewalk_spot(rng: np.random.Generator, st: _Street, near: float = 0.0) -> tuple[float, float, float]:
    """A base point (y, x, depth) on a sidewalk; ``near`` in [0, 1) biases towards the kerb."""
    for _ in range(6):
        y = rng.uniform(st.hz + 0.12 * (st.h - st.hz), st.h - 1)
        d = st.depth(y)
        lo, hi = st.road_hw(d), st.side_hw(d)
        off = lo + (hi - lo) * rng.uniform(0.15, 1.0 - near)
        x = st.vx + off * (1 if rng.random() < 0.5 else -1)
        if 1 <= x < st.w - 1:
            return y, x, d
    return -1.0, -1.0, -1.0


class Scene(NamedTuple):
    """A layout with its objects: ``labels`` (int64 H x W class ids), ``instances`` (int32 H x W, one id per
    drawn object, 0 = none) and ``boxes`` (float32 K x 4: rows y0, y1, cols x0, x1 of each instance's
    unclipped extent; row 0 unused). The renderer uses the instances for per-object looks."""

    labels: np.ndarray
    instances: np.ndarray
    boxes: np.ndarray


def make_layout(rng: np.random.Generator, height: int = 64, width: int = 128) -> np.ndarray:
    """Draw one street layout.

    Args:
        rng: the generator to draw from (consumed).
        height, width: size in pixels, multiples of 32.

    Returns:
        ``int64`` array ``height x width`` of class ids in ``[0, NUM_CLASSES)`` (0 = don't care).
    """
    return make_scene(rng, height, width).labels


def make_scene(rng: np.random.Generator, height: int = 64, width: int = 128) -> Scene:
    """:func:`make_layout` plus the object instances (same draws from ``rng``, same labels)."""
    check_size(height, width)
    h, w = int(height), int(width)
    lab = np.full((h, w), SKY, dtype=np.int64)
    hz = int(round(h * rng.uniform(0.40, 0.56)))
    st = _Street(
        h=h,
        w=w,
        hz=hz,
        vx=w * rng.uniform(0.3, 0.7),
        road_top=w * rng.uniform(0.005, 0.03),
        road_bot=w * rng.uniform(0.28, 0.5),
        side_top=w * rng.uniform(0.005, 0.02),
        side_bot=w * rng.uniform(0.12, 0.35),
    )
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]

    # Buildings: a row of blocks with varied roof lines, down to the street.
    tops = np.empty(w, dtype=np.int64)
    x = -int(rng.integers(0, max(2, w // 10)))
    while x < w:
        bw = max(3, int(w * rng.uniform(0.07, 0.24)))
        if rng.random() < 0.15:  # low block far away: sky shows down to near the horizon
            top = hz - max(1, int(h * rng.uniform(0.02, 0.08)))
        else:
            top = int(h * rng.uniform(0.06, 0.36))
        tops[max(x, 0) : x + bw] = top
        x += bw
    lab[rows >= tops[None, :]] = BUILDING

    # Ground: sidewalk trapezoid, road trapezoid inside it, both towards the vanishing point.
    ground = lab[hz:]  # a view
    dist = np.abs(cols - st.vx)
    d_rows = (np.arange(h - hz)[:, None]) / (h - hz)
    ground[dist <= st.side_hw(d_rows)] = SIDEWALK
    ground[dist <= st.road_hw(d_rows)] = ROAD

    # Objects, drawn far to near (sorted by base row) so that near ones occlude far ones.
    dr = _Drawing(lab)
    objects: list[tuple[float, Callable[[], None]]] = []

    def tree() -> None:
        y, x, d = _sidewalk_spot(rng, st)
        if y < 0:
            return
        s = 0.35 + 0.9 * d
        trunk = h * s * rng.uniform(0.1, 0.22)
        ry, rx = h * s * rng.uniform(0.12, 0.22), w * s * rng.uniform(0.04, 0.09)
        cy = y - trunk - 0.7 * ry
        lobes = (rng.uniform(0.08, 0.2), float(rng.integers(4, 8)), rng.uniform(0, 6.3))

        def draw() -> None:
            k = dr.new(cy - ry, y, x - rx, x + rx)
            tw = max(1.0, s * w / 100)
            dr.rect(cy, y, x - tw / 2, x + tw / 2, TREE, k)
            dr.blob(cy, x, ry, rx, TREE, k, lobes)

        objects.append((y, draw))

    def pole() -> None:
        y, x, d = _sidewalk_spot(rng, st, near=0.6)
        if y < 0:
            return
        s = 0.35 + 0.9 * d
        ph = h * s * rng.uniform(0.4, 0.7)
        pw = max(1.0, round(s * w / 40))
        sign = rng.random() < 0.8
        size = max(2.0, h * s * rng.uniform(0.06, 0.1))
        shape = int(rng.integers(0, 3))
        side = st.vx - x  # signs hang towards the road
        sx = x + np.sign(side) * rng.uniform(0, 0.6) * size
        sy = y - ph + size * rng.uniform(0.5, 1.0)

        def draw() -> None:
            dr.rect(y - ph, y, x - pw / 2, x + pw / 2, POLE, dr.new(y - ph, y, x - pw / 2, x + pw / 2))
            if not sign:
                return
            hh, hw = (size / 3, size * 0.75) if shape == 2 else (size / 2, size / 2)  # 2: wide panel
            k = dr.new(sy - hh, sy + hh, sx - hw, sx + hw)
            if shape == 1:
                dr.blob(sy, sx, hh, hw, SIGN, k)
            else:
                dr.rect(sy - hh, sy + hh, sx - hw, sx + hw, SIGN, k)

        objects.append((y, draw))

    def person() -> None:
        y, x, d = _sidewalk_spot(rng, st)
        if y < 0:
            return
        s = 0.35 + 0.9 * d
        ph = h * s * rng.uniform(0.18, 0.27)
        pw = max(1.5, ph * rng.uniform(0.3, 0.4))
        stride = rng.uniform(0.0, 0.35)

        def draw() -> None:
            top = y - ph
            lw = max(1.0, pw * 0.4)
            k = dr.new(top, y, x - max(pw / 2, lw + stride * pw / 2), x + max(pw / 2, lw + stride * pw / 2))
            dr.rect(top, top + 0.19 * ph, x - 0.32 * pw, x + 0.32 * pw, PERSON, k)  # head
            dr.rect(top + 0.18 * ph, y - 0.42 * ph, x - pw / 2, x + pw / 2, PERSON, k)  # torso
            dr.rect(y - 0.45 * ph, y, x - lw - stride * pw / 2, x - stride * pw / 2 + 0.2, PERSON, k)  # legs
            dr.rect(y - 0.45 * ph, y, x + stride * pw / 2 - 0.2, x + lw + stride * pw / 2, PERSON, k)

        objects.append((y, draw))

    def car() -> None:
        y = rng.uniform(st.hz + 0.12 * (h - st.hz), h + 0.1 * (h - st.hz))
        d = st.depth(min(y, h - 1))
        x = st.vx + rng.uniform(-0.75, 0.75) * st.road_hw(d)
        s = 0.3 + 0.9 * d
        cw = w * s * rng.uniform(0.15, 0.24)
        ch = cw * rng.uniform(0.5, 0.65) * min(1.0, 2 * h / w)
        inset = rng.uniform(0.12, 0.22)

        def draw() -> None:
            k = dr.new(y - ch, y, x - cw / 2, x + cw / 2)
            # Body (corners trimmed), then a narrower cabin on top.
            dr.rect(y - 0.55 * ch, y - 0.08 * ch, x - cw / 2, x + cw / 2, CAR, k)
            dr.rect(y - 0.08 * ch, y, x - 0.45 * cw, x + 0.45 * cw, CAR, k)
            dr.rect(y - 0.78 * ch, y - 0.55 * ch, x - (0.5 - inset) * cw, x + (0.5 - inset) * cw, CAR, k)
            dr.rect(y - ch, y - 0.78 * ch, x - (0.44 - inset) * cw, x + (0.44 - inset) * cw, CAR, k)

        objects.append((y, draw))

    for _ in range(int(rng.choice([0, 1, 2, 2, 3, 4]))):
        tree()
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        pole()
    for _ in range(int(rng.choice([0, 1, 1, 2, 3, 4]))):
        person()
    for _ in range(int(rng.choice([0, 1, 2, 2, 3, 4]))):
        car()
    for _, draw in sorted(objects, key=lambda o: o[0]):
        draw()

    # Don't care: an ego-vehicle hood at the bottom and/or a thin rectification border, now and then.
    if rng.random() < 0.5:
        hood = rng.uniform(0.5, max(1.0, h / 40))
        bulge = hood * (1 - ((cols - w * rng.uniform(0.3, 0.7)) / (0.8 * w)) ** 2)
        band = h - math.ceil(hood + 1)  # the hood lies below this row
        below = rows[band:] >= h - np.maximum(bulge, 0.0) - 0.5
        lab[band:][below] = UNLABELED
        dr.inst[band:][below] = 0
    if rng.random() < 0.3:
        bw = int(rng.integers(1, max(2, w // 64) + 1))
        side = slice(0, bw) if rng.random() < 0.5 else slice(w - bw, w)
        lab[:, side] = UNLABELED
        dr.inst[:, side] = 0
    return Scene(lab, dr.inst, np.asarray(dr.boxes, np.float32))


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat float32 row and column coordinates of an h x w image (read-only, cached)."""
    yy = np.repeat(np.arange(h, dtype=np.float32), w)
    xx = np.tile(np.arange(w, dtype=np.float32), h)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@functools.lru_cache(maxsize=64)
def _lerp_plan(n: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    f = (np.arange(n, dtype=np.float32) + 0.5) / cell
    i = np.floor(f).astype(np.intp)
    t = f - i
    return i, (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no grid creases


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Flat value noise with blobs of ~``cell`` pixels, zero mean, roughly unit scale."""
    iy, ty = _lerp_plan(h, cell)
    ix, tx = _lerp_plan(w, cell)
    g = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32) * 1.6
    a = g[:, ix]
    a += (g[:, ix + 1] - a) * tx
    b = a[iy]
    b += (a[iy + 1] - b) * ty[:, None]
    return b.ravel()


@functools.lru_cache(maxsize=16)
def _mortar(h: int, w: int) -> np.ndarray:
    """Flat 0/1 brick-joint pattern (staggered courses), scaled with the image height."""
    s = h / 64
    bh, bw = max(2, round(2 * s)), max(4, round(4 * s))
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    joint = (ys % bh == 0) | ((xs + (ys // bh % 2) * (bw // 2)) % bw == 0)
    out = joint.ravel().astype(np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def _columns(h: int, w: int) -> np.ndarray:
    """Flat integer column index of an h x w image (read-only, cached)."""
    out = np.tile(np.arange(w, dtype=np.intp), h)
    out.flags.writeable = False
    return out


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


@dataclass
class _Canvas:
    lab: np.ndarray  # h x w class ids
    rng: np.random.Generator
    yy: np.ndarray  # flat coordinates
    xx: np.ndarray
    fine: np.ndarray  # flat per-pixel white noise
    mid: np.ndarray  # flat noise, blobs of a few pixels
    low: np.ndarray  # flat noise, blobs of ~a sixth of the height
    hz: int  # estimated horizon row (first row with ground)
    dusk: bool
    inst: np.ndarray  # flat instance ids (see Scene)
    boxes: np.ndarray  # instance boxes (see Scene)


def _pick(rng: np.random.Generator, table: np.ndarray, n: int, jitter: float = 0.06) -> np.ndarray:
    """n colours drawn from a table of looks (rows), each jittered a little."""
    return table[rng.integers(0, len(table), n)] + rng.uniform(-jitter, jitter, (n, 3)).astype(np.float32)


_THINGS = (CAR, PERSON, SIGN)


def _components(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instances for a bare layout: connected components of the countable classes (one
    ``ndimage.label`` call on their masks stacked vertically, a blank row between them, so a component
    never spans two classes). Returns ``(instances, boxes)`` as in :class:`Scene`."""
    h, w = lab.shape
    stack = np.zeros((len(_THINGS) * (h + 1), w), bool)
    for k, cls in enumerate(_THINGS):
        stack[k * (h + 1) : k * (h + 1) + h] = lab == cls
    comp, n = ndimage.label(stack)
    inst = np.zeros((h, w), np.int32)
    for k in range(len(_THINGS)):
        inst += comp[k * (h + 1) : k * (h + 1) + h].astype(np.int32)
    boxes = np.zeros((n + 1, 4), np.float32)
    boxes[0] = (0, 1, 0, 1)
    for j, sl in enumerate(ndimage.find_objects(comp), 1):
        off = sl[0].start // (h + 1) * (h + 1)
        boxes[j] = (sl[0].start - off, sl[0].stop - off, sl[1].start, sl[1].stop)
    return inst, boxes


def _parts(cv: _Canvas, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per pixel of ``idx``: instance id, row and column relative to the instance box (about [0, 1)),
    and the number of instance ids (for drawing one look per instance)."""
    ids = cv.inst[idx]
    b = cv.boxes[ids]
    ry = (cv.yy[idx] + 0.5 - b[:, 0]) / np.maximum(b[:, 1] - b[:, 0], 1e-3)
    rx = (cv.xx[idx] + 0.5 - b[:, 2]) / np.maximum(b[:, 3] - b[:, 2], 1e-3)
    return ids, ry, rx, len(cv.boxes)


_SKY_DAY = np.array([[0.25, 0.48, 0.85], [0.62, 0.78, 0.95]], np.float32)
_SKY_GREY = np.array([[0.6, 0.63, 0.68], [0.82, 0.84, 0.86]], np.float32)
_SKY_DUSK = np.array([[0.14, 0.14, 0.38], [0.98, 0.56, 0.3]], np.float32)


def _paint_sky(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng = cv.rng
    grad = _SKY_DUSK if cv.dusk else (_SKY_DAY if rng.random() < 0.7 else _SKY_GREY)
    grad = grad + rng.uniform(-0.05, 0.05, (1, 3)).astype(np.float32)
    t = np.minimum(cv.yy[idx] * (1.0 / max(cv.hz, 1)), 1.0)[:, None]
    col = grad[0] + (grad[1] - grad[0]) * t
    cover = np.clip((cv.low[idx] + 0.25 * cv.mid[idx] - 1.3 + rng.uniform(0.2, 1.0)) * 0.8, 0, 0.85)
    cloud = np.array([1.0, 0.78, 0.7] if cv.dusk else [0.97, 0.97, 0.98], np.float32)
    col += (cloud - col) * cover[:, None]
    col += 0.025 * cv.fine[idx, None]
    return col


_ROAD_TINT = np.array([[1.0, 1.0, 1.0], [0.95, 0.97, 1.08], [1.06, 1.0, 0.93]], np.float32)


def _paint_road(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng, lab = cv.rng, cv.lab
    h, w = lab.shape
    ys, xs = cv.yy[idx], cv.xx[idx]
    grey = rng.uniform(0.2, 0.36) * _ROAD_TINT[rng.integers(0, 3)]
    v = 1 + 0.22 * np.tanh(cv.fine[idx]) + 0.1 * cv.mid[idx] + 0.08 * cv.low[idx]
    col = grey * v[:, None]
    # Per-row road extent -> centre line and lane edges in perspective.
    m = lab == ROAD
    left = m.argmax(1).astype(np.float32)
    right = (w - 1 - m[:, ::-1].argmax(1)).astype(np.float32)
    ytop = float(np.argmax(m.any(1)))
    r = ys.astype(np.intp)
    centre, half = ((left + right) * 0.5)[r], ((right - left) * 0.5)[r]
    dist = np.abs(xs - centre)
    paint = np.zeros(len(idx), bool)
    if rng.random() < 0.85:  # dashed centre line; dashes lengthen towards the camera
        period = rng.uniform(15, 35) * h / 64
        paint |= (dist <= np.maximum(0.55, 0.03 * half)) & (_frac(period / (ys - ytop + 2)) < 0.5)
    if rng.random() < 0.6:  # solid lane edges
        paint |= np.abs(dist - 0.85 * half) <= np.maximum(0.5, 0.025 * half)
    if rng.random() < 0.3:  # zebra crossing
        y0 = rng.uniform(ytop + 0.3 * (h - ytop), h - 3)
        band = (ys >= y0) & (ys < y0 + max(2.0, 0.12 * (h - ytop))) & (dist < 0.8 * half)
        paint |= band & (_frac((xs - centre) / np.maximum(1.0, 0.24 * half)) < 0.5)
    paint_col = np.array([0.88, 0.88, 0.85] if rng.random() < 0.7 else [0.9, 0.75, 0.2], np.float32)
    col[paint] = paint_col * (0.85 + 0.1 * cv.fine[idx[paint], None])
    return col


_FACADES = np.array(
    [
        # brick (0-3)
        [0.58, 0.27, 0.18],
        [0.5, 0.3, 0.22],
        [0.66, 0.4, 0.3],
        [0.45, 0.2, 0.15],
        # glass (4-7)
        [0.32, 0.48, 0.58],
        [0.38, 0.52, 0.52],
        [0.3, 0.36, 0.45],
        [0.45, 0.55, 0.62],
        # plaster (8-12)
        [0.85, 0.78, 0.62],
        [0.72, 0.72, 0.7],
        [0.9, 0.88, 0.84],
        [0.78, 0.62, 0.5],
        [0.6, 0.6, 0.55],
    ],
    np.float32,
)
_PANES = np.array([[0.12, 0.14, 0.19], [0.95, 0.82, 0.45]], np.float32)  # dark, lit
_FACADE_FIRST, _FACADE_COUNT = np.array([0, 4, 8]), np.array([4, 4, 5])


def _paint_building(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng, lab = cv.rng, cv.lab
    h, w = lab.shape
    s = h / 64
    # Instances: runs of columns sharing a roof line. Everything per column is a length-w vector.
    m = lab == BUILDING
    top = m.argmax(0)
    starts = np.ones(w, bool)
    starts[1:] = top[1:] != top[:-1]
    inst = np.cumsum(starts) - 1
    n = int(inst[-1]) + 1
    x0 = np.flatnonzero(starts)[inst]
    look = rng.integers(0, 3, n)  # 0 brick, 1 glass, 2 plaster
    colour = _FACADE_FIRST[look] + (rng.random(n) * _FACADE_COUNT[look]).astype(np.intp)
    base = (_FACADES[colour] + rng.uniform(-0.06, 0.06, (n, 3)).astype(np.float32))[inst]
    px = (rng.integers(4, 8, n) * s)[inst]  # window grid periods
    py = (rng.integers(4, 7, n) * s)[inst]
    fx, fy = rng.uniform(0.4, 0.7, n)[inst], rng.uniform(0.4, 0.65, n)[inst]
    lx = (np.arange(w) - x0 - rng.uniform(0, 3, n)[inst]) / px
    ly = ((np.arange(h)[:, None] - 2 * s) - top) / py
    win2d = (_frac(lx) < fx) & (_frac(ly) < fy) & (ly > 0)
    # Per pixel: one brightness factor and one grey offset on top of the facade colour.
    c = _columns(h, w)[idx]
    lk = look[inst][c]
    win = win2d.ravel()[idx]
    glass = lk == 1
    mort = _mortar(h, w)[idx] * (lk == 0)  # brick joints: lighter, greyer
    refl = np.clip(0.35 * cv.low[idx] + 0.2, 0, 0.6) * glass  # sky reflections on glass
    dim = (1 - 0.55 * (glass & ~win)) * (1 - refl)  # dark mullions between glass panes
    mult = (1 + 0.12 * cv.fine[idx] + 0.1 * cv.mid[idx]) * (1 - 0.45 * mort) * dim
    add = 0.35 * mort * dim + 0.9 * refl * (1 - 0.55 * (glass & ~win))
    col = base[c] * mult[:, None] + add[:, None]
    # Windows on brick and plaster: dark panes, some lit (more at dusk).
    pane = win & ~glass
    pi = idx[pane]
    wid = np.floor(lx)[c[pane]] * 7919 + np.floor(ly.ravel()[pi]) * 104729
    lit = (wid.astype(np.int64) % (3 if cv.dusk else 11)) == 0
    col[pane] = _PANES[lit.view(np.uint8)] + (0.1 * cv.low[pi] + 0.04 * cv.fine[pi])[:, None]
    return col


_LEAVES = np.array([[0.22, 0.42, 0.12], [0.12, 0.3, 0.1], [0.32, 0.5, 0.16], [0.55, 0.45, 0.12]], np.float32)


def _paint_tree(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    base = _pick(cv.rng, _LEAVES, 1, 0.04)[0]
    f, m = cv.fine[idx], cv.mid[idx]
    v = 0.55 + 0.45 * np.tanh(0.9 * f + 0.6 * m) + 0.1 * cv.low[idx]
    v += (f + m > 1.4) * (0.5 * v + 0.15)  # sunlit leaves
    return base * v[:, None]


_CAR = np.array(
    [
        [0.75, 0.1, 0.1],
        [0.12, 0.25, 0.65],
        [0.9, 0.9, 0.9],
        [0.08, 0.08, 0.1],
        [0.62, 0.64, 0.68],
        [0.92, 0.78, 0.12],
        [0.12, 0.38, 0.22],
        [0.45, 0.12, 0.35],
    ],
    np.float32,
)


def _paint_car(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng = cv.rng
    comp, ry, rx, n = _parts(cv, idx)
    f = cv.fine[idx]
    col = _pick(rng, _CAR, n, 0.05)[comp] * (1.05 - 0.25 * ry + 0.04 * f)[:, None]
    shine = np.abs(ry - rng.uniform(0.5, 0.6)) < 0.035
    col[shine] = col[shine] * 0.6 + 0.4
    glass = (ry > 0.06) & (ry < 0.42) & (np.abs(rx - 0.5) < 0.25) & (np.abs(rx - 0.5) > 0.03)
    col[glass] = np.array([0.12, 0.16, 0.22], np.float32) + (0.25 * (0.42 - ry[glass]) + 0.03 * f[glass])[:, None]
    wheel = (ry > 0.8) & (np.abs(np.abs(rx - 0.5) - 0.3) < 0.1)
    col[wheel] = (0.06 + 0.03 * f[wheel])[:, None]
    hub = wheel & (np.abs(ry - 0.92) < 0.04) & (np.abs(np.abs(rx - 0.5) - 0.3) < 0.04)
    col[hub] = 0.55
    lamp = (ry > 0.48) & (ry < 0.62) & (np.abs(rx - 0.5) > 0.42)
    col[lamp] = np.array([0.95, 0.15, 0.1] if rng.random() < 0.5 else [1.0, 0.9, 0.6], np.float32)
    return col


_FLOOR = np.array([[0.62, 0.62, 0.6], [0.7, 0.45, 0.4], [0.72, 0.68, 0.58], [0.52, 0.54, 0.56]], np.float32)


def _paint_sidewalk(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng, lab = cv.rng, cv.lab
    h, w = lab.shape
    ys, xs = cv.yy[idx], cv.xx[idx]
    base = _pick(rng, _FLOOR, 1, 0.05)[0]
    # Paving tiles that grow towards the camera, with dark joints.
    d = np.clip((ys - cv.hz + 1) * (1.0 / max(h - cv.hz, 1)), 0.05, 1)
    inv = 1.0 / ((1.5 + 7 * d) * (w / 128 * rng.uniform(0.8, 1.3)))
    ty = ys * inv * 1.7
    joint = (_frac(xs * inv + 0.5 * np.floor(ty)) < 0.9 * inv) | (_frac(ty) < 1.5 * inv)
    v = (1 + 0.13 * cv.fine[idx] + 0.07 * cv.mid[idx]) * (1 - 0.3 * joint)
    col = base * v[:, None]
    # Kerb: a light edge next to the road.
    road = lab == ROAD
    near = np.zeros_like(road)
    near[:, 1:] |= road[:, :-1]
    near[:, :-1] |= road[:, 1:]
    kerb = near.ravel()[idx]
    col[kerb] = (0.82 + 0.05 * cv.fine[idx[kerb]])[:, None]
    return col


_METAL = np.array([[0.35, 0.36, 0.38], [0.6, 0.62, 0.64], [0.18, 0.3, 0.22], [0.25, 0.25, 0.28]], np.float32)


def _paint_pole(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    base = _pick(cv.rng, _METAL, 1, 0.04)[0]
    band = _frac(cv.yy[idx] * (1.0 / max(3.0, cv.lab.shape[0] / 12))) < 0.25
    return base * (1 + 0.15 * cv.fine[idx] - 0.35 * band)[:, None]


_SKIN = np.array([[0.93, 0.76, 0.62], [0.75, 0.55, 0.4], [0.45, 0.3, 0.2]], np.float32)
_CLOTH = np.array(
    [[0.8, 0.15, 0.15], [0.15, 0.3, 0.7], [0.95, 0.95, 0.9], [0.2, 0.55, 0.25], [0.95, 0.75, 0.1], [0.5, 0.2, 0.55]],
    np.float32,
)
_PANTS = np.array([[0.1, 0.12, 0.25], [0.08, 0.08, 0.08], [0.55, 0.48, 0.35], [0.3, 0.3, 0.32]], np.float32)


def _paint_person(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng = cv.rng
    comp, ry, _, n = _parts(cv, idx)
    skin, shirt, pants = _pick(rng, _SKIN, n, 0.03), _pick(rng, _CLOTH, n), _pick(rng, _PANTS, n, 0.04)
    col = np.where((ry < 0.2)[:, None], skin[comp], np.where((ry < 0.57)[:, None], shirt[comp], pants[comp]))
    return col * (1 + 0.12 * cv.fine[idx])[:, None]


_SIGN = np.array(
    [[0.85, 0.1, 0.1], [0.1, 0.25, 0.75], [0.95, 0.8, 0.05], [0.1, 0.5, 0.25], [0.95, 0.95, 0.95]], np.float32
)


def _paint_sign(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    rng = cv.rng
    comp, ry, rx, n = _parts(cv, idx)
    face = _pick(rng, _SIGN, n, 0.04)[comp]
    col = face * (1 + 0.08 * cv.fine[idx])[:, None]
    # A rim (the outermost ring of pixels) and a bar symbol: white, or black on white signs.
    rim = (np.minimum(ry, 1 - ry) * 2 < 0.2) | (np.minimum(rx, 1 - rx) * 2 < 0.2)
    mark = rim | ((np.abs(ry - 0.5) < 0.12) & (np.abs(rx - 0.5) < 0.3))
    bright = face.mean(1) > 0.8
    col[mark & ~bright] = 0.95
    col[mark & bright] = 0.1
    return col


def _paint_unlabeled(cv: _Canvas, idx: np.ndarray) -> np.ndarray:
    base = np.float32(0.07 + cv.rng.uniform(0, 0.12))
    v = base + 0.05 * cv.fine[idx] + 0.04 * cv.mid[idx]
    return v[:, None] * np.array([1.0, 1.0, 1.25], np.float32)


_PAINTERS: dict[int, Callable[[_Canvas, np.ndarray], np.ndarray]] = {
    UNLABELED: _paint_unlabeled,
    SKY: _paint_sky,
    ROAD: _paint_road,
    BUILDING: _paint_building,
    TREE: _paint_tree,
    CAR: _paint_car,
    SIDEWALK: _paint_sidewalk,
    POLE: _paint_pole,
    PERSON: _paint_person,
    SIGN: _paint_sign,
}


def render(
    layout: np.ndarray,
    rng: np.random.Generator,
    instances: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Paint a textured photo of a layout.

    Args:
        layout: ``H x W`` integer class ids in ``[0, NUM_CLASSES)`` (H, W >= 8).
        rng: the generator to draw looks and noise from (consumed).
        instances, boxes: the objects of the layout (see :class:`Scene`, from :func:`make_scene`), for one
            look per object; without them, connected components of cars, persons and signs are used.

    Returns:
        ``float32`` array ``3 x H x W`` with values in ``[-1, 1]``.
    """
    lab = np.asarray(layout)
    if lab.ndim != 2 or lab.shape[0] < 8 or lab.shape[1] < 8 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"render() needs an H x W integer label map (H, W >= 8); got {lab.dtype} {lab.shape}")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= NUM_CLASSES:
        raise ValueError(f"label ids must lie in [0, {NUM_CLASSES}); got values in [{lo}, {hi}]")
    h, w = lab.shape
    if instances is None or boxes is None:
        instances, boxes = _components(lab)
    inst = np.asarray(instances)
    if inst.shape != lab.shape or inst.min() < 0 or inst.max() >= len(boxes):
        raise ValueError("instances must be an H x W map of ids indexing boxes (see make_scene)")
    yy, xx = _grid(h, w)
    flat = lab.ravel().astype(np.uint8)
    order = np.argsort(flat, kind="stable")  # pixels grouped by class, row-major inside a class
    counts = np.bincount(lab.ravel(), minlength=NUM_CLASSES)
    ends = np.cumsum(counts)
    starts = ends - counts
    idx = {c: order[starts[c] : ends[c]] for c in range(NUM_CLASSES) if ends[c] > starts[c]}
    # Horizon: the first row with ground (class pixels are listed row-major, so the first is the topmost).
    ground = [int(idx[c][0]) // w for c in (ROAD, SIDEWALK) if c in idx]
    cv = _Canvas(
        lab=lab,
        rng=rng,
        yy=yy,
        xx=xx,
        fine=(rng.random(h * w, dtype=np.float32) - np.float32(0.5)) * np.float32(3.4),  # ~unit variance
        mid=_smooth_noise(rng, h, w, 2 * max(1, h // 64)),
        low=_smooth_noise(rng, h, w, max(4, h // 6)),
        hz=min(ground) if ground else h // 2,
        dusk=bool(rng.random() < 0.25),
        inst=inst.ravel(),
        boxes=boxes,
    )
    # Paint class by class into a buffer sorted by class, then un-sort with one gather.
    buf = np.empty((h * w, 3), np.float32)
    for cls, paint in _PAINTERS.items():
        if cls in idx:
            buf[starts[cls] : ends[cls]] = paint(cv, idx[cls])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(h * w)
    img = np.take(buf, inverse, axis=0)
    # Camera: exposure, white balance, sensor noise; then to [-1, 1], channels first.
    gain = (rng.uniform(0.88, 1.08) * (1 + rng.uniform(-0.04, 0.04, 3))).astype(np.float32)
    if cv.dusk:
        gain *= np.array([1.0, 0.9, 0.85], np.float32)
    out = img.T * (2 * gain)[:, None]
    out += 0.024 * cv.fine[::-1] + np.float32(2 * rng.uniform(-0.03, 0.03) - 1)
    np.clip(out, -1, 1, out=out)
    return out.reshape(3, h, w)


def labels_to_rgb(label: np.ndarray | torch.Tensor) -> np.ndarray:
    """Colour a label map (``H x W`` ids) with :data:`PALETTE`; returns ``uint8 H x W x 3``."""
    lab = np.asarray(label)
    return np.asarray(PALETTE, np.uint8)[np.clip(lab, 0, NUM_CLASSES - 1)]


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


def item_rng(seed: int, split: str, stream: int, index: int, height: int, width: int) -> np.random.Generator:
    """The generator of one item: a pure function of its coordinates."""
    return np.random.default_rng([DATA_VERSION, int(seed), _check_split(split), stream, int(index), height, width])


class _SyntheticBase(Dataset):
    """``n`` items of one stream. Item ``i`` depends only on ``(seed, split, i, height, width)``.

    Args:
        n: number of items.
        height, width: image size, multiples of 32.
        seed: data seed; ``split``: ``"train"``, ``"val"`` or ``"test"`` (disjoint streams).
        cache: keep generated items in memory (about 100 KB per 64 x 128 photo); items are cheap to
            regenerate (a few ms), so this is off by default.
    """

    stream: int = 0
    kind: str = ""

    def __init__(
        self, n: int, height: int = 64, width: int = 128, seed: int = 0, split: str = "train", cache: bool = False
    ) -> None:
        check_size(height, width)
        _check_split(split)
        if n < 0:
            raise ValueError(f"number of synthetic items must be >= 0; got {n}")
        self.n, self.height, self.width, self.seed, self.split = int(n), int(height), int(width), int(seed), split
        self.cache = cache
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"synthetic index {i} out of range for {self.n} items")
        return i

    def _rng(self, i: int) -> np.random.Generator:
        return item_rng(self.seed, self.split, self.stream, i, self.height, self.width)

    def layout(self, i: int) -> np.ndarray:
        """The layout item ``i`` is made from (for tests and inspection; never a training label of photos)."""
        return make_layout(self._rng(self._index(i)), self.height, self.width)

    def _make(self, i: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        if self.cache and i in self._cache:
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._cache[i].items()}
        item = self._make(i)
        item["path"] = f"synthetic://{self.split}/{self.kind}/{i}"
        if self.cache:  # callers may modify what they get in place: keep a private copy
            self._cache[i] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
        return item

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.n}, height={self.height}, width={self.width}, "
            f"seed={self.seed}, split={self.split!r})"
        )


class SyntheticLabels(_SyntheticBase):
    """Label maps: ``{"label": int64 H x W, "path": "synthetic://<split>/labels/<i>"}``."""

    stream, kind = _STREAM_LABELS, "labels"

    def _make(self, i: int) -> dict:
        return {"label": torch.from_numpy(make_layout(self._rng(i), self.height, self.width))}


class SyntheticPhotos(_SyntheticBase):
    """Photos of layouts from their own stream (never returned as labels):
    ``{"image": float32 3 x H x W in [-1, 1], "path": "synthetic://<split>/photos/<i>"}``."""

    stream, kind = _STREAM_PHOTOS, "photos"

    def _make(self, i: int) -> dict:
        rng = self._rng(i)
        scene = make_scene(rng, self.height, self.width)
        return {"image": torch.from_numpy(render(scene.labels, rng, scene.instances, scene.boxes))}


class SyntheticPaired(_SyntheticBase):
    """Photo + its own layout (a third stream), only for training / measuring the evaluator:
    ``{"label": int64 H x W, "image": float32 3 x H x W in [-1, 1], "path": ...}``."""

    stream, kind = _STREAM_PAIRED, "paired"

    def _make(self, i: int) -> dict:
        rng = self._rng(i)
        scene = make_scene(rng, self.height, self.width)
        image = render(scene.labels, rng, scene.instances, scene.boxes)
        return {"label": torch.from_numpy(scene.labels), "image": torch.from_numpy(image)}


def stack(dataset: Dataset, key: str, n: int | None = None) -> torch.Tensor:
    """Stack ``dataset[i][key]`` for the first ``n`` items (all by default) into one tensor."""
    n = len(dataset) if n is None else min(n, len(dataset))
    if n == 0:
        raise ValueError("cannot stack an empty synthetic dataset")
    return torch.stack([dataset[i][key] for i in range(n)])
