"""Class names and colours for the label sets, a palette generator and a class-file loader.

* Cityscapes: the 35 ``labelIds`` (0..33 plus id 34 for the license plate, whose official id is -1)
  with the official colours.
* ADE20K (SceneParsing, 151 = 0 "other" + 150 classes) and COCO-Stuff (183 = 0 "unknown" + the 182
  COCO ids 1..182, eleven of which are unused) with their official names; their colours come from
  :func:`make_palette` (deterministic, well separated), not from the official colour tables.
* :func:`load_class_file` reads a user's JSON (``[{"name": ..., "color": [r, g, b]}, ...]``) or CSV
  (``name,r,g,b`` per line, optional header) class file.

Colours are ``(r, g, b)`` tuples of ints in ``[0, 255]``; the don't-care class is black.
"""

from __future__ import annotations

import colorsys
import csv
import json
from pathlib import Path

from usis.config import ConfigError

Color = tuple[int, int, int]

# id -> (name, colour); id 34 is the license plate (official id -1, colour of "car").
CITYSCAPES: list[tuple[str, Color]] = [
    ("unlabeled", (0, 0, 0)), ("ego vehicle", (0, 0, 0)), ("rectification border", (0, 0, 0)),
    ("out of roi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)), ("ground", (81, 0, 81)),
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("parking", (250, 170, 160)),
    ("rail track", (230, 150, 140)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("guard rail", (180, 165, 180)), ("bridge", (150, 100, 100)),
    ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)), ("polegroup", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("caravan", (0, 0, 90)),
    ("trailer", (0, 0, 110)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
    ("license plate", (0, 0, 142)),
]

ADE20K_NAMES: list[str] = [
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car",
    "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]

# COCO-Stuff ids after the SPADE-layout shift (stored value v -> id v + 1, 255 -> 0). Ids marked
# "(unused)" were removed from COCO and never occur in the label maps.
COCO_STUFF_NAMES: list[str] = [
    "unknown", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign (unused)", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat (unused)", "backpack",
    "umbrella", "shoe (unused)", "eye glasses (unused)", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "plate (unused)", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "mirror (unused)", "dining table", "window (unused)",
    "desk (unused)", "toilet", "door (unused)", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "blender (unused)", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush (unused)", "banner", "blanket",
    "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt",
    "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]


def make_palette(n: int, dontcare: int | None = 0) -> list[Color]:
    """``n`` distinct, deterministic colours; the ``dontcare`` id (if any) is black.

    Hues step by the golden ratio (neighbouring ids get far-apart hues); saturation and value cycle
    through three levels so that more than a dozen classes stay distinguishable.
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    golden = 0.618033988749895
    colors: list[Color] = []
    for i in range(n):
        h = (0.11 + i * golden) % 1.0
        s = (0.85, 0.55, 1.0)[i % 3]
        v = (0.95, 0.75, 0.55)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    if dontcare is not None and 0 <= dontcare < n:
        colors[dontcare] = (0, 0, 0)
    return colors


def class_info(kind: str, num_classes: int, dontcare: int | None = 0) -> tuple[list[str], list[Color]]:
    """Names and colours for a label set (``cityscapes``, ``gta2cityscapes``, ``ade20k``, ``coco``);
    any other kind gets ``class_<i>`` names and a generated palette of ``num_classes`` colours."""
    if kind in ("cityscapes", "gta2cityscapes"):
        names, colors = [n for n, _ in CITYSCAPES], [c for _, c in CITYSCAPES]
    elif kind == "ade20k":
        names, colors = list(ADE20K_NAMES), make_palette(len(ADE20K_NAMES), dontcare=0)
    elif kind == "coco":
        names, colors = list(COCO_STUFF_NAMES), make_palette(len(COCO_STUFF_NAMES), dontcare=0)
    else:
        return [f"class_{i}" for i in range(num_classes)], make_palette(num_classes, dontcare)
    if len(names) < num_classes:  # more ids than the standard set: name the extra ones generically
        extra = make_palette(num_classes, dontcare)[len(names):]
        names += [f"class_{i}" for i in range(len(names), num_classes)]
        colors += extra
    return names[:num_classes], colors[:num_classes]


def _parse_color(value, where: str) -> Color:
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6:
            raise ConfigError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b]")
        try:
            value = [int(text[i:i + 2], 16) for i in (0, 2, 4)]
        except ValueError as e:
            raise ConfigError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b]") from e
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{where}: colour {value!r} must be [r, g, b] with three integers in 0..255")
    try:
        rgb = tuple(int(c) for c in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: colour {value!r} must be three integers in 0..255") from e
    if any(not 0 <= c <= 255 for c in rgb):
        raise ConfigError(f"{where}: colour {value!r} has a component outside 0..255")
    return rgb  # type: ignore[return-value]


def load_class_file(path: str | Path) -> tuple[list[str], list[Color]]:
    """Read class names and colours, one entry per class id in order (id = position).

    JSON: a list of ``{"name": str, "color": [r, g, b] | "#rrggbb"}`` (or ``{"classes": [...]}``);
    ``color`` may be omitted (a generated colour is used). CSV: ``name,r,g,b`` per line, an optional
    header line whose first field is ``name``. Raises :class:`ConfigError` naming the file and the line.
    """
    path = Path(path)
    hint = ("expected JSON [{\"name\": \"road\", \"color\": [128, 64, 128]}, ...] "
            "or CSV lines 'road,128,64,128'")
    if not path.is_file():
        raise ConfigError(f"class file {path} does not exist; fix --set data.class_file=PATH ({hint})")
    text = path.read_text(encoding="utf-8-sig")
    names: list[str] = []
    colors: list[Color | None] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"class file {path}: invalid JSON ({e}); {hint}") from e
        if isinstance(data, dict):
            data = data.get("classes")
        if not isinstance(data, list) or not data:
            raise ConfigError(f"class file {path}: no class list found; {hint}")
        for i, entry in enumerate(data):
            where = f"class file {path}, entry {i}"
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{where}: expected {{\"name\": ..., \"color\": [r, g, b]}}, got {entry!r}")
            names.append(entry["name"])
            color = entry.get("color", entry.get("colour"))
            colors.append(None if color is None else _parse_color(color, where))
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and rows[0][0].strip().lower() in ("name", "class", "label"):
            rows = rows[1:]
        if not rows:
            raise ConfigError(f"class file {path}: no classes found; {hint}")
        for lineno, row in enumerate(rows, 1):
            where = f"class file {path}, class {lineno - 1} ({row[0].strip()!r})"
            if len(row) == 1:
                names.append(row[0].strip())
                colors.append(None)
            elif len(row) == 4:
                names.append(row[0].strip())
                colors.append(_parse_color([c.strip() for c in row[1:]], where))
            else:
                raise ConfigError(f"{where}: expected 'name,r,g,b', got {','.join(row)!r}")
    generated = make_palette(len(names), dontcare=None)
    return names, [c if c is not None else generated[i] for i, c in enumerate(colors)]
