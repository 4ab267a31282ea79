"""The Python API: label maps in, photorealistic images out.

    from usis import USISPipeline

    pipe = USISPipeline.from_pretrained("exported/")    # an export folder, a checkpoint, a run folder, org/name
    images = pipe(label_map, seeds=[0, 1, 2])            # -> three PIL images

``label_map``: class ids as a PIL image (index ``P`` or grayscale ``L`` / ``I`` mode), a numpy array or a
torch tensor (``H x W`` integers), or a list of them. A map of another size is resized to the model's
(nearest neighbour). Ids must lie in ``[0, num_classes)`` of the label set the model was trained on
(``pipe.class_names``); COCO-Stuff maps are read as ``usis generate`` reads them.

Image ``k`` of a map has noise seed ``seeds[k]``: the same image as ``usis generate --seed S`` and as the
column of seed S in a training sample grid (:mod:`usis.nn.noise`). ``local_style=True`` gives every
class region its own style vector.

``pipe.synthesize(label_maps, seeds=[0, 1])`` makes labelled pairs instead (image, label ids at the image's
size, score, kept), with the code of ``usis synthesize`` (:mod:`usis.synthesis`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from usis.config import Config
from usis.data.datasets import label_set
from usis.errors import GenerateError
from usis.generate import (
    generate_images,
    ids_outside,
    image_label_ids,
    load_generator,
    resize_nearest,
    save_export,
)
from usis.hub import push_export
from usis.nn.generator import BaseGenerator
from usis.synthesis import (
    FILTER_MARGIN,
    Pair,
    PixelFilter,
    Scorer,
    check_filter,
    class_mean_losses,
    class_pixels,
    filter_batch,
    hardness,
    ignore_id,
    load_own_segmenter,
    no_segmenter_message,
    own_segmenter_scorer,
    pair_seed,
    real_statistics,
    resample_counts,
    select,
    synthesize_batch,
)
from usis.utils.device import resolve_device
from usis.utils.images import colorize, to_pil

LabelMap = Image.Image | np.ndarray | torch.Tensor


@dataclass
class USISPipeline:
    """A trained generator with its label set, ready to turn label maps into images.

    Build it with :meth:`from_pretrained`; move it with :meth:`to`; call it like a function.
    """

    generator: BaseGenerator
    config: Config
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    step: int = 0
    source: str = ""
    evaluation: dict[str, Any] | None = None  # the training run's records of it (shown in its model card)
    hub: str | None = None  # org/name@<commit> when it came from the Hugging Face Hub
    _own_segmenter: Any = field(default=None, repr=False)  # S from the checkpoint, loaded on first use

    # ---------------------------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "auto",
                        dtype: torch.dtype = torch.float32, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> USISPipeline:
        """Load from a folder written by ``usis export`` / :meth:`save_pretrained`, a training checkpoint
        (``RUN/checkpoints/latest.pt`` or ``best.pt``: its EMA generator), a run folder, or a model repo on the
        Hugging Face Hub (``"org/name"``: :mod:`usis.hub`; a local path of the same name wins).

        ``device``: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``. ``dtype``: the generator's
        floating-point type (``torch.float16`` / ``torch.bfloat16`` halve memory on a GPU). For a Hub repo:
        ``revision`` (a branch, tag or commit; default ``main``), ``cache_dir`` (default huggingface_hub's cache,
        ``$HF_HUB_CACHE``) and ``token`` (default: the login of ``hf auth login`` or ``$HF_TOKEN``);
        ``HF_HUB_OFFLINE=1`` reads the cache only.
        """
        gen = load_generator(path, "cpu", revision=revision, cache_dir=cache_dir, token=token)
        names, palette = label_set(gen.cfg)
        pipe = cls(generator=gen.G, config=gen.cfg, class_names=list(names), palette=[tuple(c) for c in palette],
                   step=gen.step, source=gen.source, evaluation=gen.evaluation, hub=gen.hub)
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | os.PathLike, repo_id: str | None = None) -> Path:
        """Write the pipeline as ``usis export`` does (:func:`usis.generate.save_export`:
        ``generator.safetensors``, ``config.json`` and the model card ``README.md``); ``repo_id``: the Hub
        repo it is meant for (the card's loading examples name it). Returns the folder."""
        return save_export(self.generator, self.config, self.step, self.hub or self.source, self.evaluation,
                           directory, repo_id)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | bool | None = None,
                    commit_message: str | None = None) -> str:
        """Upload the pipeline to the Hugging Face Hub as the model repo ``repo_id`` (``org/name``; created if
        needed, ``private`` then): what :meth:`save_pretrained` writes (the generator's weights, its config,
        its model card) and nothing else, in one commit (:func:`usis.hub.push_export`). Needs a login
        (``hf auth login`` or ``$HF_TOKEN``) that may write there. Returns the repo's URL."""
        with tempfile.TemporaryDirectory(prefix="usis-push-") as folder:
            self.save_pretrained(folder, repo_id=repo_id)
            return push_export(folder, repo_id, private=private, token=token, commit_message=commit_message)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> USISPipeline:
        """Move the generator to ``device`` and/or cast it to ``dtype``; returns the pipeline."""
        if device is not None:
            self.generator.to(resolve_device(device, setting="device"))
        if dtype is not None:
            if not dtype.is_floating_point:
                raise GenerateError(f"dtype={dtype}: use a floating-point type (torch.float32, float16, bfloat16)")
            self.generator.to(dtype)
        self.generator.eval().requires_grad_(False)
        return self

    # ----------------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    @property
    def num_classes(self) -> int:
        return self.generator.num_classes

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the images it makes (label maps are resized to this)."""
        return self.config.data.height, self.config.data.width

    # ----------------------------------------------------------------------------------- generation

    def label_ids(self, label_map: LabelMap, name: str = "label_map") -> torch.Tensor:
        """One label map as int64 ``H x W`` ids at the model's size, checked against the label set."""
        if isinstance(label_map, Image.Image):
            ids = image_label_ids(label_map, name, self.config.data.kind)
        elif isinstance(label_map, torch.Tensor):
            ids = label_map.detach().cpu().numpy()
        elif isinstance(label_map, np.ndarray):
            ids = label_map
        else:
            raise GenerateError(f"{name}: expected a PIL image, numpy array or torch tensor of class ids, got "
                                f"{type(label_map).__name__}")
        if ids.ndim == 3 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 2:
            raise GenerateError(f"{name}: a label map is H x W class ids; got shape {tuple(ids.shape)}")
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or not np.all(ids == np.round(ids)):
                raise GenerateError(f"{name}: class ids must be integers")
        elif ids.dtype.kind not in "iub":
            raise GenerateError(f"{name}: class ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        k = self.num_classes
        shown = ids_outside(ids, k)
        if shown:
            raise GenerateError(f"{name}: label ids {shown} are outside [0, {k}): this model knows {k} classes "
                                f"({', '.join(self.class_names[:6])}{', ...' if k > 6 else ''}; pipe.class_names)")
        return torch.from_numpy(resize_nearest(ids, *self.size))

    @torch.no_grad()
    def __call__(self, label_map: LabelMap | Sequence[LabelMap], seeds: int | Sequence[int] = (0,),
                 local_style: bool = False, batch_size: int = 8, output_type: str = "pil") -> Any:
        """Images for one label map (or a list of them): one per seed.

        Returns a list of PIL images (``output_type="pil"``), one per seed, for one map; a list of such
        lists for a list of maps. ``output_type="pt"``: float tensors ``N x 3 x H x W`` in [-1, 1] instead
        (one per map). ``batch_size``: images per forward pass.
        """
        if output_type not in ("pil", "pt"):
            raise GenerateError(f"output_type={output_type!r}: use 'pil' or 'pt'")
        seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
        if not seeds:
            raise GenerateError("seeds: give at least one seed")
        single = isinstance(label_map, (Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(label_map, (np.ndarray, torch.Tensor)) and label_map.ndim == 3 and label_map.shape[0] > 1)
        maps = [label_map] if single else list(label_map)
        ids = [self.label_ids(m, name=f"label_map[{i}]" if not single else "label_map") for i, m in enumerate(maps)]
        labels = torch.stack([m for m in ids for _ in seeds])
        all_seeds = seeds * len(ids)
        images = self._generate(labels, all_seeds, local_style, batch_size)
        per_map = list(images.split(len(seeds)))
        if output_type == "pt":
            out: list[Any] = per_map
        else:
            out = [[to_pil(img) for img in chunk] for chunk in per_map]
        return out[0] if single else out

    @torch.no_grad()
    def synthesize(self, label_maps: LabelMap | Sequence[LabelMap], seeds: int | Sequence[int] | None = None,
                   score: bool = True, segmenter: Scorer | None = None, keep: float | None = None,
                   min_score: float | None = None, local_style: bool = False, batch_size: int = 8, *,
                   n: int = 1, seed: int = 0, one_style: bool = False, pixel_filter: PixelFilter | None = None,
                   resample: str | None = None) -> list[Pair]:
        """Labelled pairs, as ``usis synthesize`` makes them: for each label map (one, or a list) ``n`` pairs,
        map after map.

        Seeds: pair k of map i has the seed :func:`usis.synthesis.pair_seed` derives from ``seed``, the map's
        name (``label_map[i]``, or ``label_map`` for one map) and k, so every map has a style of its own;
        ``one_style``: ``seed + k`` for every map; ``seeds``: these seeds for every map (``n`` is then their
        number).

        A pair holds ``image`` (uint8 ``H x W x 3``; ``pair.image_pil()``), ``label`` (int64 ids at the
        image's size; ``pair.label_pil(pipe.num_classes)`` is the PNG ``usis synthesize`` writes), ``seed``,
        ``index`` (which map), ``score`` (``{"miou", "pixel_accuracy"}`` in percent: the segmenter's reading
        of the image against the map, over the classes present) and ``kept``. ``score=True`` scores with
        ``segmenter`` (a :class:`~usis.synthesis.Scorer`, e.g. ``usis.synthesis.pretrained_scorer(...)``)
        or else the checkpoint's own S (a training checkpoint holds it; an export folder does not: pass a
        segmenter or ``score=False``). ``keep`` (the best fraction by mIoU) or ``min_score`` (mIoU >= it)
        set ``kept``; every pair is returned.

        ``pixel_filter`` (:meth:`pixel_filter`, FreeMask's): pixels of a class that a segmenter trained on real
        photos finds harder than the filter's margin times the class's mean on real photos get the ignore id
        in ``label`` (``pair.ignored``: the fraction per class). ``resample="hard"``: 1 to ``n`` pairs per map by
        the rank of its hardness (needs ``pixel_filter``, whose class means it uses; a margin of None filters
        nothing).
        """
        check_filter(keep, min_score)
        if not score and (keep is not None or min_score is not None):
            raise GenerateError("keep / min_score filter by the score: pass score=True")
        if resample not in (None, "hard"):
            raise GenerateError(f"resample={resample!r}: the one mode is 'hard'")
        if resample is not None and (pixel_filter is None or seeds is not None):
            raise GenerateError("resample='hard' ranks maps by their classes' mean losses: pass pixel_filter=pipe."
                                "pixel_filter(...) (margin=None to filter nothing), and n instead of seeds")
        scorer = self._scorer(segmenter) if score else None
        single = isinstance(label_maps, (Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(label_maps, (np.ndarray, torch.Tensor)) and label_maps.ndim == 3 and label_maps.shape[0] > 1)
        maps = [label_maps] if single else list(label_maps)
        names = ["label_map"] if single else [f"label_map[{i}]" for i in range(len(maps))]
        ids = [self.label_ids(m, name=name) for m, name in zip(maps, names, strict=True)]
        per_map = self._seeds(names, ids, seeds, n, seed, one_style, pixel_filter if resample else None)
        jobs = [(i, s) for i in range(len(ids)) for s in per_map[i]]
        pairs: list[Pair] = []
        filt = pixel_filter if pixel_filter is not None and pixel_filter.margin is not None else None
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk = jobs[start:start + max(1, batch_size)]
            labels = torch.stack([ids[i] for i, _ in chunk])
            images, scores = synthesize_batch(self.generator, labels, [s for _, s in chunk], scorer, local_style)
            written, ignored = labels.numpy(), [None] * len(chunk)
            if filt is not None:
                written, ignored = filter_batch(filt, images, labels, self.device)
            for (i, s), image, lab, src, sc, ig in zip(chunk, images, written, labels.numpy(), scores, ignored,
                                                      strict=True):
                pairs.append(Pair(image=image, label=lab, seed=s, score=sc, index=i, source=names[i],
                                  pixels=class_pixels(src), ignored=ig))
        if resample is not None:
            for p in pairs:
                p.hardness = hardness(p.pixels, pixel_filter.class_means)
                p.samples = len(per_map[p.index])
        for pair, kept in zip(pairs, select([p.score for p in pairs], keep, min_score), strict=True):
            pair.kept = kept
        return pairs

    @staticmethod
    def _seeds(names: list[str], ids: list[torch.Tensor], seeds, n: int, seed: int, one_style: bool,
               measure: PixelFilter | None) -> list[list[int]]:
        """Each map's seeds: given, or ``n`` (re-sampling: 1 to ``n`` by hardness) from :func:`pair_seed`."""
        if seeds is not None:
            given = [int(seeds)] if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
            if not given:
                raise GenerateError("seeds: give at least one seed")
            return [given] * len(names)
        if n < 1:
            raise GenerateError(f"n={n}: make at least one pair per label map")
        counts = [n] * len(names)
        if measure is not None:
            counts = resample_counts([hardness(class_pixels(i.numpy()), measure.class_means) for i in ids], n)
        return [[pair_seed(seed, name, k, one_style) for k in range(c)] for name, c in zip(names, counts, strict=True)]

    def pixel_filter(self, margin: float | None = FILTER_MARGIN, segmenter: str | None = None,
                     segmenter_path: str | None = None, segmenter_mapping: str | None = None,
                     real_photos: str | None = None, real_labels: str | None = None) -> PixelFilter:
        """FreeMask's pixel filter for :meth:`synthesize`: a segmenter trained on real photos (``segmenter``:
        ``synthetic`` by default on the synthetic preset; ``drn`` / ``segformer`` / ``torchscript`` with its
        path) and each class's mean loss over real labelled photos (``real_photos`` + ``real_labels`` folders;
        the synthetic preset's held-out renderings by default), computed now. ``margin=None``: the class means
        only (for ``resample="hard"``)."""
        if margin is not None and not margin > 0:
            raise GenerateError(f"margin={margin}: give the margin over the class's mean loss, > 0 (FreeMask: 1.25)")
        losses, real = real_statistics(self.config, self.device, segmenter, segmenter_path, segmenter_mapping,
                                       real_photos, real_labels)
        means = class_mean_losses(losses, real.batches(), self.num_classes)
        return PixelFilter(losses, means, margin, ignore_id(self.config))

    def _scorer(self, segmenter: Scorer | None) -> Scorer:
        if segmenter is not None:
            return segmenter
        if self._own_segmenter is None:
            self._own_segmenter = load_own_segmenter(self.source, self.config)
            if self._own_segmenter is None:
                raise GenerateError("score=True: " + no_segmenter_message(self.source, self.config, api=True))
        return own_segmenter_scorer(self._own_segmenter, self.config, self.device, source=f"step {self.step}")

    def _generate(self, labels: torch.Tensor, seeds: list[int], local_style: bool, batch_size: int) -> torch.Tensor:
        return generate_images(self.generator, labels, seeds, local_style=local_style, batch_size=batch_size)

    def colorize(self, label_map: LabelMap) -> Image.Image:
        """The label map in the label set's colours (ids outside it white), at the model's size."""
        return Image.fromarray(colorize(self.label_ids(label_map), self.palette))
