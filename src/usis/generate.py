"""Inference: load a trained generator, turn label maps into images, export the generator.

A generator comes from either

* a training checkpoint (``RUN/checkpoints/latest.pt`` or ``best.pt``, or the run folder itself): the
  EMA generator ``G_ema`` and the run config are taken from it; or
* an exported folder (:func:`export_generator`): ``generator.safetensors`` (the ``G_ema`` state dict),
  ``config.json`` (the run config plus ``"format": "usis-generator"``, ``"step"`` and the run's evaluation
  records) and ``README.md`` (its model card, :mod:`usis.cards`); or
* a model repo on the Hugging Face Hub, ``org/name``, which holds an export folder (:mod:`usis.hub`: fetched
  into huggingface_hub's cache; a local path of the same name wins).

The generator always runs in eval mode with the batch-norm statistics stored with it (nothing is
refreshed), so an image depends only on its label map and its noise seed.

Noise. Image ``k`` of a label map uses seed ``seed + k``, drawn as :mod:`usis.nn.noise` says (the one
definition: a training sample grid's column for seed ``s`` shows the images ``usis generate --seed s``
writes for the same weights). With ``local_style`` every class id gets its own vector: a style per
region, so two regions of different classes vary independently.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from usis.cards import model_card
from usis.checkpoint import find_checkpoint, load_checkpoint
from usis.config import Config, ConfigError
from usis.data.datasets import LABEL_EXTS, LOSSY_EXTS, label_array, label_set, open_image, remap_coco
from usis.errors import CheckpointError, DatasetError, GenerateError
from usis.hub import resolve_model
from usis.metrics.protocol import METRICS, new_best
from usis.nn.build import build_generator
from usis.nn.generator import BaseGenerator, one_hot_labels
from usis.nn.noise import seeded_noise
from usis.nn.pretrained import CARD_NAME, CONFIG_NAME, load_state, read_weights
from usis.utils.images import colorize as colorize_labels
from usis.utils.images import save_image
from usis.utils.io import disk_full_cause, disk_full_error

EXPORT_WEIGHTS = BaseGenerator.weights_name  # generator.safetensors
EXPORT_CONFIG = CONFIG_NAME  # config.json


# ------------------------------------------------------------------------------------------ loading


@dataclass
class LoadedGenerator:
    """An EMA generator in eval mode plus what it was trained with."""

    G: BaseGenerator
    cfg: Config
    step: int
    source: str  # the checkpoint file or export folder it came from (a Hub model: its folder in the cache)
    device: torch.device
    evaluation: dict[str, Any] | None = None  # the run's records of it (:func:`recorded_evaluation`)
    hub: str | None = None  # ``org/name@<commit>`` for a model from the Hugging Face Hub

    @property
    def num_classes(self) -> int:
        return self.G.num_classes

    @property
    def size(self) -> tuple[int, int]:
        return self.cfg.data.height, self.cfg.data.width


def _is_export_dir(path: Path) -> bool:
    return path.is_dir() and (path / EXPORT_WEIGHTS).is_file()


def _load_export(path: Path) -> tuple[BaseGenerator | None, dict[str, Any], int, str, dict[str, Any] | None]:
    """An export folder (or its ``generator.safetensors``): the generator, the run config, the step, the
    source, the run's evaluation records (written by :func:`save_export`; None in older exports)."""
    folder = path if path.is_dir() else path.parent
    meta = BaseGenerator.read_pretrained_config(folder)
    if "config" in meta:  # save_pretrained's layout: the generator's own config, the run's under "run"
        G = BaseGenerator.stored_class(meta).from_config_and_weights(meta["config"], folder / EXPORT_WEIGHTS)
        run = meta.get("run")
        if not isinstance(run, dict):
            raise CheckpointError(f"{folder / EXPORT_CONFIG}: no \"run\" entry (the training config); re-create the "
                                  "folder with `usis export`")
    else:  # exports written before save_pretrained: the run config at the top level
        run = {k: v for k, v in meta.items() if k not in ("format", "step", "source", "version")}
        G = None
    evaluation = meta.get("evaluation") if isinstance(meta.get("evaluation"), dict) else None
    return G, run, int(meta.get("step", 0)), str(path), evaluation


def _read_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int, str,
                                                   dict[str, Any] | None]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "G_ema" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a usis training checkpoint (no 'G_ema' / 'config' entries); pass "
                              "RUN/checkpoints/latest.pt (or best.pt), or a folder written by `usis export`")
    found = find_checkpoint(path)
    step = int(state.get("step", 0))
    cfg = state["config"]
    tracked = cfg.get("eval", {}).get("best_metric") if isinstance(cfg, dict) else None
    return state["G_ema"], cfg, step, str(found), recorded_evaluation(found, step, tracked)


def recorded_evaluation(checkpoint: Path, step: int, tracked: str | None) -> dict[str, Any] | None:
    """What a training run recorded about the generator of its checkpoint ``checkpoint`` at ``step``, from
    the run folder's ``metrics.jsonl``: the periodic evaluation of that step (its last record of it, without
    ``"step"``) and the best record of the ``tracked`` metric (``eval.best_metric``, what ``best.pt``
    follows) up to that step, ``{metric: value, "step": s}``; as ``{"step", "metrics", "best"}``, or None
    when the run recorded nothing. The model card shows them; later records of the run do not change them."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    metrics, best = None, None
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a full disk: the others still count
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
                continue
            if record["step"] == step:
                metrics = {k: v for k, v in record.items() if k != "step"}
            if tracked in METRICS and METRICS[tracked][1] is not None:
                best = new_best(best or {}, tracked, record, record["step"]) or best
    if metrics is None and best is None:
        return None
    return {"step": step, "metrics": metrics, "best": best}


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> LoadedGenerator:
    """Load the EMA generator from a training checkpoint, a run folder, an export folder, or a model repo
    ``org/name`` on the Hugging Face Hub (:func:`usis.hub.resolve_model`: a local path wins; ``revision``,
    ``cache_dir`` and ``token`` apply to the Hub).

    Returns it in eval mode on ``device`` with the run's :class:`Config`.
    """
    path, hub = resolve_model(path, revision, cache_dir, token)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a training checkpoint (RUN/checkpoints/latest.pt), a "
                              "folder written by `usis export`, or a model repo on the Hugging Face Hub (org/name)")
    if path.is_dir() and not _is_export_dir(path) and find_checkpoint(path) is None:
        raise CheckpointError(f"{path} is a folder without {EXPORT_WEIGHTS} (an export) or checkpoints/latest.pt "
                              "(a training run); pass the checkpoint file or the export folder")
    state = None
    if _is_export_dir(path) or path.suffix == ".safetensors":
        G, cfg_dict, step, source, evaluation = _load_export(path)
        if G is None:  # an export of the earlier layout
            state = read_weights(path / EXPORT_WEIGHTS if path.is_dir() else path)
    else:
        G = None
        state, cfg_dict, step, source, evaluation = _read_training_checkpoint(path)
    try:
        cfg = Config.from_dict(cfg_dict).sync()
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: the stored config is not readable by this version of usis ({e})") from e
    if G is None:
        G = build_generator(cfg)
        load_state(G, state, source)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    G.to(dev).eval().requires_grad_(False)
    return LoadedGenerator(G=G, cfg=cfg, step=step, source=source, device=dev, evaluation=evaluation, hub=hub)


# -------------------------------------------------------------------------------------------- export


def export_generator(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                     repo_id: str | None = None) -> tuple[Path, Path, Path]:
    """``usis export``: :func:`save_export` of the EMA generator of ``checkpoint`` (a training checkpoint,
    run folder or export) into ``out_dir``; ``repo_id``: the Hub repo it will be pushed to (its card's
    examples name it). Returns the paths of the weights, the config and the model card."""
    gen = load_generator(checkpoint, "cpu")
    out = save_export(gen.G, gen.cfg, gen.step, gen.hub or gen.source, gen.evaluation, out_dir, repo_id)
    return out / EXPORT_WEIGHTS, out / EXPORT_CONFIG, out / CARD_NAME


def save_export(G: BaseGenerator, cfg: Config, step: int, source: str, evaluation: dict[str, Any] | None,
                out_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """An export folder (``usis export`` and ``USISPipeline.save_pretrained``, one definition): the
    generator's :meth:`~usis.nn.pretrained.Pretrained.save_pretrained` files, ``generator.safetensors`` and
    ``config.json`` (the generator's own config, plus the training run's config under ``"run"``, its
    ``"step"``, ``"source"`` and ``"evaluation"``: the run's records, :func:`recorded_evaluation`), and the
    model card ``README.md`` (:func:`usis.cards.model_card`). The same generator and records give the same
    bytes. Returns the folder."""
    card = model_card(cfg, type(G).__name__, sum(p.numel() for p in G.parameters()), step, generator_digest(G),
                      evaluation, repo_id)
    metadata: dict[str, Any] = {"run": cfg.to_dict(), "step": step, "source": source}
    if evaluation is not None:
        metadata["evaluation"] = evaluation
    return G.save_pretrained(out_dir, metadata=metadata, card=card)


def generator_digest(G: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the generator's weights: what identifies it in a model card and in a
    synthesized dataset's ``synthesize.json`` (a resumed ``usis synthesize`` must generate with the same)."""
    h = hashlib.sha256()
    for k, v in sorted(G.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------- images


@torch.no_grad()
def generate_images(G: BaseGenerator, labels: torch.Tensor, seeds: Sequence[int], local_style: bool = False,
                    batch_size: int = 8) -> torch.Tensor:
    """Images (float ``N x 3 x H x W`` in [-1, 1], on the CPU) for int64 ``labels`` (``N x H x W``),
    image i with noise seed ``seeds[i]``. ``G`` should be in eval mode."""
    if len(seeds) != len(labels):
        raise ValueError(f"{len(seeds)} seeds for {len(labels)} label maps")
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size]
        z, pixel_noise = seeded_noise(seeds[i:i + batch_size], G.z_dim, G.pixel_noise, *lab.shape[-2:], labels=lab,
                                      num_classes=G.num_classes, local_style=local_style,
                                      class_style=G.class_style)
        out.append(run_generator(G, lab, z, pixel_noise))
    if not out:
        return torch.empty(0, 3, *labels.shape[-2:])
    return torch.cat(out)


@torch.no_grad()
def run_generator(G: BaseGenerator, labels: torch.Tensor, z: torch.Tensor,
                  pixel_noise: torch.Tensor | None) -> torch.Tensor:
    """One forward pass of ``G`` with the noise given: float ``N x 3 x H x W`` images in [-1, 1], on the CPU.

    The one place where label maps and noise become ``G``'s inputs: ``labels`` (int64 ``N x H x W`` class
    ids, any device) are one-hot encoded, and they, ``z`` (``N x z_dim``, or a style map
    ``N x z_dim x H x W``; unused when ``G.z_dim`` is 0) and ``pixel_noise`` (``N x G.pixel_noise x H x W``,
    None when ``G.pixel_noise`` is 0) move to the device and floating-point type of ``G``'s weights (a float16
    / bfloat16 generator). Seeds become noise in :func:`usis.nn.noise.seeded_noise`
    (:func:`generate_images`), or the caller builds it (the app's per-region styles)."""
    p = next(G.parameters())
    device, dtype = p.device, p.dtype
    onehot = one_hot_labels(labels.to(device), G.num_classes).to(dtype)
    z = z.to(device, dtype) if G.z_dim else None
    pixel_noise = None if pixel_noise is None else pixel_noise.to(device, dtype)
    return G(onehot, z, pixel_noise).float().cpu()


# -------------------------------------------------------------------------------------- label files


def list_label_files(path: str | os.PathLike) -> list[Path]:
    """One label file, or every label image under a folder (recursive, sorted)."""
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
    path = str(path)
    k = cfg.data.num_classes
    with open_image(path) as img:
        ids = image_label_ids(img, path, cfg.data.kind)
    shown = ids_outside(ids, k)
    if shown:
        raise DatasetError(
            f"{path}: label ids {shown} are outside [0, {k}): this generator was trained on "
            f"{cfg.data.kind} label maps with {k} classes (ids 0..{k - 1}); use label maps of that label set "
            f"(same ids as the training data) or remap these ids")
    return ids


def image_label_ids(img: Image.Image, name: str, kind: str) -> np.ndarray:
    """A decoded label image as int64 ``H x W`` class ids, read like the training data (COCO-Stuff's stored
    values shifted by one)."""
    raw = label_array(img, name, kind)
    return remap_coco(raw) if kind == "coco" else raw


def ids_outside(ids: np.ndarray, num_classes: int) -> str | None:
    """``"{a, b, ...}"`` (at most 8 shown) for the ids of ``ids`` outside ``[0, num_classes)``; None if none."""
    if not ids.size or (ids.min() >= 0 and ids.max() < num_classes):
        return None
    bad = np.unique(ids[(ids < 0) | (ids >= num_classes)])
    return "{" + ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "") + "}"


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` id map (pixel-centre sampling, like the data loaders)."""
    h, w = ids.shape
    if (h, w) == (height, width):
        return ids
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return np.ascontiguousarray(ids[rows[:, None], cols[None, :]])


def output_stems(labels: Path, files: Sequence[Path]) -> list[str]:
    """Where each label file's outputs go: its path relative to the ``labels`` folder, without the extension
    (POSIX separators; ``labels`` one file: its stem). Two files with one stem (``a.png`` and ``a.bmp``)
    would write the same outputs: a :class:`~usis.errors.GenerateError` names both."""
    root = labels if labels.is_dir() else None
    stems = [(f.relative_to(root) if root is not None else Path(f.name)).with_suffix("").as_posix() for f in files]
    first: dict[str, Path] = {}
    for f, stem in zip(files, stems, strict=True):
        if stem in first:
            raise GenerateError(f"--labels {labels}: two label files share the name {stem!r} ({first[stem].name} and "
                                f"{f.name}), so their outputs would overwrite each other; rename one")
        first[stem] = f
    return stems


def check_label_maps(files: Sequence[Path], gen: LoadedGenerator, progress: bool = False) -> list[str]:
    """Read and check every label file before anything is generated (:func:`read_label_map`: a bad one
    raises, naming the file and the fix). Returns the sizes (``"HxW"``) of the maps that are not at the
    model's size, in file order (:func:`load_label_map` resizes them; :func:`resize_note` says so)."""
    resized = []
    for f in tqdm(files, desc="checking label maps", unit="map", disable=None if progress else True, leave=False):
        ids = read_label_map(f, gen.cfg)
        if ids.shape != gen.size:
            resized.append(f"{ids.shape[0]}x{ids.shape[1]}")
    return resized


def load_label_map(path: Path, gen: LoadedGenerator) -> np.ndarray:
    """A label file as int64 ``H x W`` ids at the model's size (:func:`read_label_map`, then
    :func:`resize_nearest`)."""
    return resize_nearest(read_label_map(path, gen.cfg), *gen.size)


def resize_note(resized: Sequence[str], count: int, gen: LoadedGenerator) -> str | None:
    """The note for the ``resized`` maps (their sizes, from :func:`check_label_maps`) of ``count``; None if none."""
    if not resized:
        return None
    height, width = gen.size
    return (f"note: resizing {len(resized)} of {count} label maps ({', '.join(sorted(set(resized)))}) to the "
            f"model's {height}x{width} (nearest neighbour)")


def no_noise_note(gen: LoadedGenerator, n: int, local_style: bool) -> str | None:
    """The note for asking a generator without noise for several seeds (or local styles); None otherwise."""
    if gen.G.z_dim == 0 and (n > 1 or local_style):
        return ("note: this generator was trained without noise (model.noise_3d=false): every seed gives the same "
                "image")
    return None


# ----------------------------------------------------------------------------------------- generate


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
    stems = output_stems(src, files)
    resized = check_label_maps(files, gen)
    for note in filter(None, (resize_note(resized, len(files), gen), no_noise_note(gen, n, local_style))):
        log(note)
    height, width = gen.size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(f, stem, seed + k) for f, stem in zip(files, stems, strict=True) for k in range(n)]
    left = len(jobs) + (len(files) if colorize else 0)  # files still to write (the estimate of a full disk)
    done: list[Path] = []
    if colorize:
        _, palette = label_set(gen.cfg)
        for f, stem in zip(files, stems, strict=True):
            path = out / f"{stem}_label.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(lambda p, f=f: Image.fromarray(colorize_labels(load_label_map(f, gen), palette)).save(p), path,
                   done, left, 3 * height * width)
            left -= 1
    written: list[Path] = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        maps = {f: load_label_map(f, gen) for f in dict.fromkeys(f for f, _, _ in chunk)}  # each file once a batch
        lab = torch.from_numpy(np.stack([maps[f] for f, _, _ in chunk]))
        images = generate_images(gen.G, lab, [s for _, _, s in chunk], local_style, batch_size)
        for (_, stem, s), img in zip(chunk, images, strict=True):
            path = out / f"{stem}_seed{s}.png"
            _write(lambda p, img=img: save_image(img, p), path, done, left, 3 * height * width)
            left -= 1
            written.append(path)
    return written


def _write(save: Callable[[Path], object], path: Path, done: list[Path], left: int, raw_size: int) -> None:
    """``save(path)`` and add ``path`` to ``done``. On a full disk no partial file is left, and the
    :class:`~usis.errors.DiskFullError` says how much space the ``left`` files still to write need (their
    mean size so far, else ``raw_size`` bytes each) and how many were written."""
    existed = path.exists()
    try:
        save(path)
    except Exception as e:
        if not existed:
            path.unlink(missing_ok=True)
        if disk_full_cause(e) is None:
            raise
        sizes = [q.stat().st_size for q in done[-32:] if q.exists()]
        each = sum(sizes) / len(sizes) if sizes else raw_size
        raise disk_full_error(e, path, int(each * left), f" for the {left} file(s) still to write",
                              hint=f"{len(done)} file(s) were written before it; free some space there or choose "
                                   "another --out") from e
    done.append(path)
