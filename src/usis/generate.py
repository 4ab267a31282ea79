"""Inference: load a trained generator, turn label maps into images, export the generator.

A generator comes from either

* a training checkpoint (``RUN/checkpoints/latest.pt`` or ``best.pt``, or the run folder itself): the
  EMA generator ``G_ema`` and the run config are taken from it; or
* an exported folder (:func:`export_generator`): ``generator.safetensors`` (the ``G_ema`` state dict)
  and ``config.json`` (the run config plus ``"format": "usis-generator"`` and ``"step"``).

The generator always runs in eval mode with the batch-norm statistics stored with it (nothing is
refreshed), so an image depends only on its label map and its noise seed.

Noise. Image ``k`` of a label map uses seed ``seed + k``: one ``z_dim`` vector drawn from
``torch.Generator().manual_seed(seed + k)`` (the same vector ``Trainer.generate`` draws for one image
with that seed), broadcast over the image. With ``local_style`` the same generator draws one vector
per class id instead (``num_classes x z_dim``) and every pixel gets the vector of its class: a style
per region, so two regions of different classes vary independently.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from usis.config import Config, ConfigError
from usis.nn.generator import Generator, one_hot_labels

EXPORT_FORMAT = "usis-generator"
EXPORT_WEIGHTS = "generator.safetensors"
EXPORT_CONFIG = "config.json"


class GenerateError(ValueError):
    """A user-fixable problem with a generate / export / evaluate request; the message says the fix."""


# ------------------------------------------------------------------------------------------ loading


@dataclass
class LoadedGenerator:
    """An EMA generator in eval mode plus what it was trained with."""

    G: Generator
    cfg: Config
    step: int
    source: str  # the checkpoint file or export folder it came from
    device: torch.device

    @property
    def num_classes(self) -> int:
        return self.G.num_classes

    @property
    def size(self) -> tuple[int, int]:
        return self.cfg.data.height, self.cfg.data.width


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is a user error."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise GenerateError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"--device {name}: CUDA is not available here; use --device cpu (or auto)")
    return dev


def _is_export_dir(path: Path) -> bool:
    return path.is_dir() and (path / EXPORT_WEIGHTS).is_file()


def _read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    from safetensors.torch import load_file

    folder = path if path.is_dir() else path.parent
    cfg_path = folder / EXPORT_CONFIG
    weights = folder / EXPORT_WEIGHTS if path.is_dir() else path
    if not cfg_path.is_file():
        raise GenerateError(f"{folder}: {EXPORT_CONFIG} is missing next to {weights.name}; re-create the folder "
                            "with `usis export --checkpoint RUN/checkpoints/latest.pt --out DIR`")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise GenerateError(f"{cfg_path}: cannot read the exported config ({e}); re-run `usis export`") from e
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise GenerateError(f"{cfg_path}: not a usis generator export (expected \"format\": \"{EXPORT_FORMAT}\"); "
                            "re-run `usis export`")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # truncated / not a safetensors file
        raise GenerateError(f"{weights}: cannot read the generator weights ({type(e).__name__}: {e}); "
                            "re-run `usis export`") from e
    return state, meta, int(meta.get("step", 0))


def _read_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int, str]:
    from usis.train.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state, dict) or "G_ema" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a usis training checkpoint (no 'G_ema' / 'config' entries); pass "
                              "RUN/checkpoints/latest.pt (or best.pt), or a folder written by `usis export`")
    if path.is_dir():  # load_checkpoint resolved RUN/ to RUN/checkpoints/latest.pt
        for cand in (path / "checkpoints" / "latest.pt", path / "latest.pt"):
            if cand.exists():
                path = cand
                break
    return state["G_ema"], state["config"], int(state.get("step", 0)), str(path)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load the EMA generator from a training checkpoint, a run folder or an export folder.

    Returns it in eval mode on ``device`` with the run's :class:`Config`.
    """
    from usis.train.checkpoint import CheckpointError
    from usis.train.trainer import build_generator

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a training checkpoint (RUN/checkpoints/latest.pt) or "
                              "a folder written by `usis export`")
    if path.is_dir() and not _is_export_dir(path) and not any(
            (path / c).is_file() for c in ("checkpoints/latest.pt", "latest.pt")):
        raise CheckpointError(f"{path} is a folder without {EXPORT_WEIGHTS} (an export) or checkpoints/latest.pt "
                              "(a training run); pass the checkpoint file or the export folder")
    if _is_export_dir(path) or path.suffix == ".safetensors":
        state, cfg_dict, step = _read_export(path)
        source = str(path)
    else:
        state, cfg_dict, step, source = _read_training_checkpoint(path)
    try:
        cfg = Config.from_dict(cfg_dict).sync()
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: the stored config is not readable by this version of usis ({e})") from e
    G = build_generator(cfg)
    try:
        G.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{source}: the generator weights do not fit the stored config ({first}); "
                              "was the file edited or written by another version?") from e
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    G.to(dev).eval().requires_grad_(False)
    return LoadedGenerator(G=G, cfg=cfg, step=step, source=source, device=dev)


# -------------------------------------------------------------------------------------------- export


def export_generator(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/generator.safetensors`` (the EMA generator) and ``out_dir/config.json``.

    ``config.json`` holds the run config plus ``"format": "usis-generator"`` and ``"step"``. Both files
    are written atomically. Returns their paths.
    """
    from safetensors.torch import save_file

    gen = load_generator(checkpoint, "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in gen.G.state_dict().items()}
    weights, cfg_path = out / EXPORT_WEIGHTS, out / EXPORT_CONFIG
    fd, tmp = tempfile.mkstemp(prefix=weights.name + ".", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": EXPORT_FORMAT, "step": str(gen.step)})
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {**gen.cfg.to_dict(), "format": EXPORT_FORMAT, "step": gen.step, "source": gen.source}
    fd, tmp = tempfile.mkstemp(prefix=cfg_path.name + ".", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cfg_path)
    return weights, cfg_path


# --------------------------------------------------------------------------------------------- noise


def noise_vector(seed: int, z_dim: int) -> torch.Tensor:
    """The ``z_dim`` noise vector of seed ``seed`` (equal to ``Trainer.generate``'s for one image)."""
    return torch.randn(1, max(z_dim, 1), generator=torch.Generator().manual_seed(int(seed)))[0, :z_dim]


def noise_for(labels: torch.Tensor, seeds: Sequence[int], z_dim: int, num_classes: int,
              local_style: bool = False) -> torch.Tensor:
    """Noise for a batch: ``N x z_dim`` (one vector per image) or, with ``local_style``,
    ``N x z_dim x H x W`` where every class id of image i has its own vector drawn from seed i."""
    if not local_style:
        return torch.stack([noise_vector(s, z_dim) for s in seeds])
    maps = []
    for lab, s in zip(labels.cpu(), seeds, strict=True):
        per_class = torch.randn(num_classes, max(z_dim, 1), generator=torch.Generator().manual_seed(int(s)))
        maps.append(per_class[:, :z_dim][lab.long()].permute(2, 0, 1))  # H x W x z -> z x H x W
    return torch.stack(maps)


def pixel_noise_for(G: Generator, seeds: Sequence[int], height: int, width: int) -> torch.Tensor | None:
    """``G``'s per-pixel noise (``N x G.pixel_noise x H x W``, on the CPU; ``None`` without any): image
    i's drawn from seed i's generator right after its noise vector, so ``z`` is unchanged by it."""
    if not G.pixel_noise:
        return None
    maps = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        torch.randn(1, max(G.z_dim, 1), generator=g)  # the noise vector comes first
        maps.append(G.sample_pixel_noise(1, height, width, generator=g, device="cpu"))
    return torch.cat(maps)


@torch.no_grad()
def generate_images(G: Generator, labels: torch.Tensor, seeds: Sequence[int], local_style: bool = False,
                    batch_size: int = 8) -> torch.Tensor:
    """Images (float ``N x 3 x H x W`` in [-1, 1], on the CPU) for int64 ``labels`` (``N x H x W``),
    image i with noise seed ``seeds[i]``. ``G`` should be in eval mode."""
    if len(seeds) != len(labels):
        raise ValueError(f"{len(seeds)} seeds for {len(labels)} label maps")
    device = next(G.parameters()).device
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size]
        z = noise_for(lab, seeds[i:i + batch_size], G.z_dim, G.num_classes, local_style)
        m = one_hot_labels(lab.to(device), G.num_classes)
        pn = pixel_noise_for(G, seeds[i:i + batch_size], *lab.shape[-2:])
        out.append(G(m, z.to(device) if G.z_dim else None, None if pn is None else pn.to(device)).float().cpu())
    if not out:
        return torch.empty(0, 3, *labels.shape[-2:])
    return torch.cat(out)


# -------------------------------------------------------------------------------------- label files


def label_set(cfg: Config) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours of a run's label set (synthetic, standard sets, class file, generic)."""
    from usis.data.palette import class_info, load_class_file

    k = cfg.data.num_classes
    if cfg.data.kind == "synthetic":
        from usis.data import synthetic

        return list(synthetic.CLASS_NAMES), [tuple(c) for c in synthetic.PALETTE]
    if cfg.data.class_file and Path(cfg.data.class_file).is_file():
        try:
            names, colors = load_class_file(cfg.data.class_file)
        except ConfigError:
            names = []
        if len(names) == k:
            return names, colors
    return class_info(cfg.data.kind, k, cfg.data.dontcare)


def list_label_files(path: str | os.PathLike) -> list[Path]:
    """One label file, or every label image under a folder (recursive, sorted)."""
    from usis.data.datasets import LABEL_EXTS, LOSSY_EXTS

    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise GenerateError(f"--labels {p}: no such file or folder; pass a label PNG or a folder of them")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in LABEL_EXTS
                   and not f.name.startswith("."))
    if not files:
        lossy = sorted(f for f in p.rglob("*") if f.suffix.lower() in LOSSY_EXTS)
        hint = (f" (found {len(lossy)} JPEG/WebP files: label maps must be lossless PNGs, JPEG changes ids at "
                "region borders)") if lossy else ""
        raise GenerateError(f"--labels {p}: no label images (.png, .bmp, .tif) in this folder{hint}")
    return files


def read_label_map(path: str | os.PathLike, cfg: Config) -> np.ndarray:
    """A label file as int64 ``H x W`` class ids of the run's label set, checked against its class count.

    Label files are read like the training data (index / grayscale PNGs; COCO-Stuff's stored values
    shifted by one). Raises :class:`~usis.data.datasets.DatasetError` naming the file and the fix.
    """
    from usis.data.datasets import DatasetError, label_array, open_image, remap_coco

    path = str(path)
    k = cfg.data.num_classes
    with open_image(path) as img:
        raw = label_array(img, path, cfg.data.kind)
    ids = remap_coco(raw) if cfg.data.kind == "coco" else raw
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        bad = np.unique(ids[(ids < 0) | (ids >= k)])
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise DatasetError(
            f"{path}: label ids {{{shown}}} are outside [0, {k}): this generator was trained on "
            f"{cfg.data.kind} label maps with {k} classes (ids 0..{k - 1}); use label maps of that label set "
            f"(same ids as the training data) or remap these ids")
    return ids


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` id map (pixel-centre sampling, like the data loaders)."""
    h, w = ids.shape
    if (h, w) == (height, width):
        return ids
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return np.ascontiguousarray(ids[rows[:, None], cols[None, :]])


def save_image(image: torch.Tensor, path: Path) -> None:
    """Write one ``3 x H x W`` image in [-1, 1] as an 8-bit RGB PNG."""
    from usis.train.monitor import to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)


# ----------------------------------------------------------------------------------------- generate


def _jobs(files: list[Path], root: Path | None, n: int, seed: int) -> Iterator[tuple[Path, str, int]]:
    for f in files:
        rel = f.relative_to(root).parent if root is not None else Path()
        for k in range(n):
            yield f, str(rel / f.stem), seed + k


def generate_from_files(gen: LoadedGenerator, labels: str | os.PathLike, out_dir: str | os.PathLike, n: int = 4,
                        seed: int = 0, colorize: bool = False, local_style: bool = False, batch_size: int = 8,
                        log=None) -> list[Path]:
    """Generate ``n`` images per label file into ``out_dir`` as ``<stem>_seed<S>.png`` (S = seed + k).

    Files from sub-folders of a ``labels`` folder keep their relative sub-folder. With ``colorize`` the
    colourised label map is written beside them as ``<stem>_label.png``. Every file is read and checked
    before anything is generated. Returns the written image paths.
    """
    if n < 1:
        raise GenerateError(f"--n {n}: generate at least one image per label map")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    src = Path(labels).expanduser()
    files = list_label_files(src)
    root = src if src.is_dir() else None
    height, width = gen.size
    maps: dict[Path, torch.Tensor] = {}
    resized = []
    for f in files:
        ids = read_label_map(f, gen.cfg)
        if ids.shape != (height, width):
            resized.append(f"{ids.shape[0]}x{ids.shape[1]}")
            ids = resize_nearest(ids, height, width)
        maps[f] = torch.from_numpy(ids.astype(np.int64))
    if resized:
        sizes = ", ".join(sorted(set(resized)))
        log(f"note: resizing {len(resized)} of {len(files)} label maps ({sizes}) to the model's "
            f"{height}x{width} (nearest neighbour)")
    if gen.G.z_dim == 0 and (n > 1 or local_style):
        log("note: this generator was trained without noise (model.noise_3d=false): every seed gives the same "
            "image")
    stems = [stem for _, stem, _ in _jobs(files, root, 1, 0)]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise GenerateError(f"--labels {src}: two label files share the name {dup!r} (different extensions); "
                            "rename one")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if colorize:
        from usis.data.palette import colorize as colorize_ids

        _, palette = label_set(gen.cfg)
        for f, stem in zip(files, stems, strict=True):
            path = out / f"{stem}_label.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colorize_ids(maps[f], palette)).save(path)
    jobs = list(_jobs(files, root, n, seed))
    written: list[Path] = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        lab = torch.stack([maps[f] for f, _, _ in chunk])
        images = generate_images(gen.G, lab, [s for _, _, s in chunk], local_style, batch_size)
        for (_, stem, s), img in zip(chunk, images, strict=True):
            path = out / f"{stem}_seed{s}.png"
            save_image(img, path)
            written.append(path)
    return written
