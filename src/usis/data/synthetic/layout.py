"""Street layouts of the synthetic benchmark: class ids, sizes, and :func:`make_layout` / :func:`make_scene`
(sky, buildings, a road towards a vanishing point, sidewalks, trees, poles with signs, persons and cars,
drawn far to near). See :mod:`usis.data.synthetic`."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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
_STREAM_LABELS, _STREAM_PHOTOS, _STREAM_PAIRED, _STREAM_LABELLED = 1, 2, 3, 4


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
