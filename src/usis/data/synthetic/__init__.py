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
synthetic evaluator (:mod:`usis.metrics.synthetic_eval`); :class:`SyntheticLabelled`, a fourth, holds the
labelled pairs of a semi-supervised run (``data.labelled``).

Item ``i`` is a pure function of ``(seed, split, stream, i, height, width)``: its generator is
``np.random.default_rng([DATA_VERSION, seed, split_code, stream_code, i, height, width])``, so items do
not depend on access order, and the splits (``train``, ``val``, ``test``) use disjoint streams.

The code is split in three: :mod:`~usis.data.synthetic.layout` (classes, sizes, layouts),
:mod:`~usis.data.synthetic.rendering` (photos) and :mod:`~usis.data.synthetic.datasets` (the streams); this
package exports their public names.
"""

from usis.data.synthetic.datasets import (
    SyntheticLabelled,
    SyntheticLabels,
    SyntheticPaired,
    SyntheticPhotos,
    item_rng,
    stack,
)
from usis.data.synthetic.layout import (
    BUILDING,
    CAR,
    CLASS_NAMES,
    DATA_VERSION,
    DONTCARE,
    NUM_CLASSES,
    PALETTE,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    SPLITS,
    TREE,
    UNLABELED,
    Scene,
    check_size,
    make_layout,
    make_scene,
)
from usis.data.synthetic.rendering import labels_to_rgb, render

__all__ = ["BUILDING", "CAR", "CLASS_NAMES", "DATA_VERSION", "DONTCARE", "NUM_CLASSES", "PALETTE", "PERSON", "POLE",
           "ROAD", "SIDEWALK", "SIGN", "SKY", "SPLITS", "TREE", "UNLABELED", "Scene", "SyntheticLabels",
           "SyntheticLabelled", "SyntheticPaired", "SyntheticPhotos", "check_size", "item_rng", "labels_to_rgb", "make_layout", "make_scene",
           "render", "stack"]
