"""Photos for synthetic layouts: :func:`render` paints every class with textures and varied looks
(asphalt and lane markings, facades with windows, leaves, paving, car colours, skies). See
:mod:`usis.data.synthetic`."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from usis.data.synthetic.layout import (
    BUILDING,
    CAR,
    NUM_CLASSES,
    PALETTE,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TREE,
    UNLABELED,
)


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
