"""Cards: the ``README.md`` the Hugging Face Hub reads, for an exported generator (the model card) and for a
dataset made by ``usis synthesize`` (the dataset card).

A card is YAML metadata between ``---`` lines (the Hub's model / dataset card metadata, written with
huggingface_hub's :class:`~huggingface_hub.ModelCardData` / :class:`~huggingface_hub.DatasetCardData`)
followed by Markdown prose. Everything in it comes from the run's or the dataset's own records (the run
config, the checkpoint's step and best record, ``metrics.jsonl``; ``synthesize.json``, ``classes.json``):
nothing is invented, and nothing depends on the clock, so writing a card again gives the same bytes.

Two fields are left to the person who shares the model or data, with a YAML comment that says so:
``license`` (a trained generator is derived from its training photos, whose terms usis cannot know; a
wrong license is worse than none, and the Hub shows a card without one as such) and ``datasets`` (the
Hub ids of the training data, when it is on the Hub: a preset's name is not one).
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub import DatasetCardData, EvalResult, ModelCardData

from usis.config import Config
from usis.data.datasets import label_set
from usis.metrics.periodic import EVAL_SEED
from usis.metrics.protocol import METRICS

LICENSE_NOTE = ("# license: not set. The weights derive from the training data: add the license its terms allow "
                "(https://huggingface.co/docs/hub/repositories-licenses), e.g. `license: cc-by-nc-4.0`.")
DATASETS_NOTE = "# datasets: add the Hub ids of the training data if it is on the Hub, e.g. `datasets: [org/name]`."
DATA_LICENSE_NOTE = ("# license: not set. The images come from a generator and the labels from your label maps: add "
                     "the license both allow (https://huggingface.co/docs/hub/repositories-licenses).")
GENERATORS = {"Generator": "the SPADE generator of USIS (OASIS-style, with 3D noise)",
              "WaveletGenerator": "the wavelet generator of USIS-Wavelet (SPADE blocks in the Haar wavelet domain)"}
# the settings a card lists under "How it was trained": what the paper's recipe and its deviations are
RECIPE = ("model.g_type", "model.g_ch", "model.z_dim", "model.noise_3d", "model.pixel_noise", "model.class_style", "model.g_norm",
          "model.init", "model.s_extra_channel", "model.d_type", "model.d_patch", "model.d_reads", "model.decoder", "train.batch_size", "train.iters",
          "train.lr_g", "train.lr_s", "train.lr_d", "train.beta1", "train.beta2", "train.lambda_seg",
          "train.lambda_rec", "train.seg_loss", "train.lambda_rev", "train.lambda_d_patch", "train.lambda_s_pseudo", "train.r1_gamma", "train.r1_every",
          "train.r1_mode", "train.fresh_fakes", "train.d_augment", "train.s_augment", "train.ema_decay", "train.ema_warmup", "train.lr_decay_from",
          "train.seed")
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


# ---------------------------------------------------------------------------------------------- model


def model_card(cfg: Config, generator_class: str, parameters: int, step: int, digest: str,
               evaluation: dict[str, Any] | None, repo_id: str | None = None) -> str:
    """The model card of an export: ``cfg`` the run's config, ``generator_class`` and ``parameters`` the
    generator's class name and size, ``step`` the checkpoint's, ``digest`` its weights' (as ``usis
    synthesize`` records it), ``evaluation`` the run's records (:func:`usis.generate.run_evaluation`:
    ``{"step", "metrics", "best"}``, or None), ``repo_id`` the Hub repo it goes to (its loading examples name
    it; else the folder)."""
    where = repo_id or "path/to/this/folder"
    names, palette = label_set(cfg)
    measured = _finite(dict(_main_metrics((evaluation or {}).get("metrics") or {})))
    data = ModelCardData(
        library_name="usis", pipeline_tag="image-to-image",
        tags=["usis", "semantic-image-synthesis", "image-to-image", "unpaired-image-to-image", "gan", cfg.data.kind],
        model_name=repo_id or f"usis-{cfg.preset}",
        eval_results=[EvalResult(task_type="image-to-image", task_name="Semantic image synthesis",
                                 dataset_type=cfg.data.kind, dataset_name=_data_name(cfg), dataset_split="validation",
                                 metric_type=key, metric_name=METRICS[key][0], metric_value=value)
                      for key, value in measured.items()] or None)
    h, w = cfg.data.height, cfg.data.width
    kind = GENERATORS.get(generator_class, generator_class)
    lines = [
        "---", data.to_yaml(), LICENSE_NOTE, DATASETS_NOTE, "---", "",
        f"# usis generator: {cfg.preset} preset, step {step:,}", "",
        f"Turns a semantic label map ({cfg.model.num_classes} classes, {h}x{w}) into photo-like images of the "
        f"training photos' domain ({_data_name(cfg)}), a different image per noise seed. It is {kind}, trained "
        "with `usis` by unsupervised (unpaired) semantic image synthesis, from label maps and photos that do not "
        "correspond (USIS, Eskandar et al., Computers & Graphics 2023). This folder holds the "
        "EMA generator only (`generator.safetensors`, "
        f"{parameters:,} parameters; sha256 of the weights `{digest}`, the `generator` a `usis synthesize` "
        "dataset made with it records) and its config (`config.json`: the generator's own config, and the "
        "training run's config under `\"run\"`).", "",
        "## Use it", "",
        "With `usis` installed:", "",
        "```bash",
        f"usis generate --checkpoint {where} --labels my_labels/ --out images/ --n 4   # 4 seeds per label map",
        f"usis app --checkpoint {where}                                           # paint label maps in a browser",
        f"usis synthesize --checkpoint {where} --labels my_labels/ --out my_dataset/ --n 2   # a labelled dataset",
        "```", "",
        "```python",
        "from PIL import Image",
        "from usis import USISPipeline",
        "",
        f'pipe = USISPipeline.from_pretrained("{where}")',
        'images = pipe(Image.open("label.png"), seeds=[0, 1, 2])   # class ids (index or grayscale PNG) -> 3 images',
        "```", "",
        f"Label maps hold class ids (not colours) of the label set below; other sizes are resized to {h}x{w} "
        "(nearest neighbour). Image k with seed s is the same whichever way it is made.", "",
        "## Label set", "",
        *_label_table(names, palette, cfg.data.dontcare), "",
        "## How it was trained", "",
        f"Preset `{cfg.preset}` on `{cfg.data.kind}` data at {h}x{w}, {step:,} steps (of `train.iters` = "
        f"{cfg.train.iters:,}), seed {cfg.train.seed}. The settings that make the recipe (the run's full config is "
        "`config.json`'s `\"run\"`):", "",
        "| setting | value |", "|---|---|",
        *[f"| `{key}` | {_value(_get(cfg, key))} |" for key in RECIPE], "",
        "## Evaluation", "",
        *_evaluation_section(cfg, step, evaluation, names), "",
        "## Limits", "",
        f"- It knows the {cfg.model.num_classes} classes above and nothing else: a label map with other ids is "
        "refused with a message naming them.",
        f"- Its images look like its training photos ({_data_name(cfg)}) and share their biases; it was not "
        "trained on paired data, so an image follows its map only as far as the segmentation network trained "
        "with it could enforce (small and thin classes least).",
        "- It holds no segmenter, discriminator or optimizer state: it cannot be trained further, and `usis "
        "synthesize` scores its pairs only with `--segmenter` (or writes them unscored).",
        f"- {_metrics_limits(cfg)}",
        "",
    ]
    return "\n".join(lines)


def _main_metrics(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The values of a metrics record that the registry knows (:data:`usis.metrics.protocol.METRICS`), in its
    order: the same card whatever order the record's keys were stored in."""
    return [(key, metrics[key]) for key in METRICS if key in metrics]


def _per_class(metrics: dict[str, Any], names: list[str]) -> list[tuple[str, Any]]:
    """A record's per-class IoU (``iou/<class>``), in the label set's order (unknown names last, sorted)."""
    values = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("iou/")}
    order = {name: i for i, name in enumerate(names)}
    return sorted(values.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _evaluation_section(cfg: Config, step: int, evaluation: dict[str, Any] | None, names: list[str]) -> list[str]:
    records = evaluation or {}
    metrics, best = records.get("metrics") or {}, records.get("best") or {}
    out: list[str] = []
    if metrics:
        out += [f"Recorded by the training run at step {step:,} (its `metrics.jsonl`); {_protocol(cfg)}", "",
                "| metric | value | better |", "|---|---:|---|"]
        for key, value in _main_metrics(metrics):
            label, higher = METRICS[key]
            arrow = "" if higher is None else "higher" if higher else "lower"
            out.append(f"| {label} (`{key}`) | {_value(value)} | {arrow} |")
        per_class = _per_class(metrics, names)
        if per_class:
            out += ["", "IoU per class (%): " + ", ".join(f"{name} {_value(v)}" for name, v in per_class) + "."]
    else:
        out.append(f"No evaluation was recorded at step {step:,} (the run's `metrics.jsonl` has none for it, or this "
                   "export does not come from a run folder). `usis evaluate --checkpoint RUN/checkpoints/best.pt` "
                   "measures FID / KID / mIoU / MS-SSIM and writes a report.")
    if best:
        key = next((k for k in best if k != "step"), None)
        if key is not None:
            same = " (this export)" if best.get("step") == step else ""
            out += ["", f"The run's best `{key}` up to this step (what `best.pt` follows): {_value(best[key])} at "
                        f"step {best.get('step', 0):,}{same}."]
    return out


def _protocol(cfg: Config) -> str:
    n = f"the first {cfg.eval.num_images}" if cfg.eval.num_images > 0 else "all"
    seeds = f"image i with noise seed {EVAL_SEED} + i"
    if cfg.data.kind == "synthetic":
        return (f"the EMA generator turned {n} validation label maps of the synthetic benchmark into images ({seeds}). "
                "mIoU: the synthetic preset's own evaluator (a small segmentation network trained once on paired "
                "renderings, not in this run) segments them against the input maps; its ceiling is its mIoU on real "
                "renderings; sFID: the Frechet distance of its features between the generated images and as many "
                "real renderings. MS-SSIM (if present): 20 images for each of the first 10 maps, mean pairwise; C2ST "
                "(if present): a classifier two-sample test against the renderings.")
    return (f"the EMA generator turned {n} validation label maps into images ({seeds}). FID / KID: TF-Inception "
            "(pytorch-fid's weights) pool features of the images against as many validation photos; C2ST (if "
            "present): a classifier two-sample test of the images against the photos.")


def _metrics_limits(cfg: Config) -> str:
    if cfg.data.kind == "synthetic":
        return ("The metrics are the synthetic benchmark's: mIoU says whether a small evaluator can read each class "
                "of the map in the image (class separability), not whether the image looks real; they are not "
                "comparable with the paper's numbers on real data.")
    return (f"The metrics are the training run's periodic ones, on {cfg.eval.num_images or 'all'} images: FID on few "
            "images is biased upwards and is comparable with the paper's Table 5 only under its protocol (the whole "
            "validation split); FID says nothing about whether an image follows its map (mIoU with a pretrained "
            "segmenter does: `usis evaluate --segmenter ...`).")


def _data_name(cfg: Config) -> str:
    return {"synthetic": "usis synthetic street scenes", "cityscapes": "Cityscapes", "ade20k": "ADE20K",
            "coco": "COCO-Stuff", "gta2cityscapes": "GTA-V label maps with Cityscapes photos",
            "folder": "the user's own label maps and photos"}.get(cfg.data.kind, cfg.data.kind)


# --------------------------------------------------------------------------------------------- dataset


def dataset_card(settings: dict[str, Any], classes: dict[str, Any], maps: int, generator: dict[str, Any],
                 filter_losses: dict[str, Any] | None = None) -> str:
    """The dataset card of a ``usis synthesize`` folder: ``settings`` is its ``synthesize.json`` (complete),
    ``classes`` its ``classes.json``, ``maps`` the number of label maps, ``generator`` what the card says of
    the generator (``{"source", "hub", "card"}``: where it was loaded from, its Hub reference and the path or
    URL of its model card, each possibly None), ``filter_losses`` the record of ``class_losses.json`` (the
    pixel filter's and re-sampling's class means) when they were used."""
    pairs, kept = int(settings["pairs"]), int(settings["kept"])
    k, ignore = int(classes["num_classes"]), classes["ignore_id"]
    data = DatasetCardData(
        pretty_name=f"usis synthesized dataset ({classes.get('label_set', 'labels')} label maps)",
        task_categories=["image-segmentation"], task_ids=["semantic-segmentation"],
        size_categories=[_size_category(kept)],
        tags=["usis", "synthetic", "generated-images", "semantic-segmentation", "image-segmentation"])
    height, width = settings["size"]
    gen_lines = [f"- weights: sha256 `{settings['generator']}` (the digest its model card names), step "
                 f"{int(settings['step']):,}"]
    if generator.get("hub"):
        gen_lines.append(f"- from the Hub: `{generator['hub']}`")
    gen_lines.append(f"- loaded from: `{generator.get('source') or settings['checkpoint']}`")
    gen_lines.append(f"- its model card: {generator['card']}" if generator.get("card") else
                     "- its model card: none (a training checkpoint; `usis export` writes one)")
    seeds = ("pair k of every map has seed `seed + k` (`--one-style`: one style per k)" if settings["seeds"] == "one-style"
             else "pair k of a map has a seed of its own, derived from `--seed`, the map's path and k (recorded in "
                  "the manifest and the file name)")
    lines = [
        "---", data.to_yaml(), DATA_LICENSE_NOTE, "---", "",
        f"# usis synthesized dataset: {kept:,} image / label pairs", "",
        f"Made by `usis synthesize` from {maps:,} label maps: {pairs:,} pairs generated, **{kept:,} kept** and "
        f"{pairs - kept:,} rejected; {_filter_text(settings)}. Each image is a generated photo "
        f"({height}x{width}); its label file holds the class ids of the label map it was generated from, at the "
        "image's size (nearest neighbour), so the labels are exact for the maps and as good as the generator for "
        "the images.", "",
        "## The generator", "",
        *gen_lines, "",
        "## How it was made", "",
        f"- label maps: `{settings['labels']}` (every label PNG under it), {settings['n']} pair(s) per map"
        + (" at most (re-sampling, below)" if settings.get("resample") else ""),
        f"- noise: {seeds}; `--seed` {settings['seed']}; "
        + ("a style per class region (`--local-style`)" if settings.get("local_style") else "one style per image"),
        f"- score: {_score_text(settings)}",
        f"- {_filter_text(settings)}",
        *_filter_lines(settings, filter_losses, ignore), "",
        "Every setting, the generator's digest and the counts are in `synthesize.json`; `manifest.jsonl` has a "
        "line per pair, kept or not (image, label, source map, seed, pixels per class id, score, kept).", "",
        "## Classes", "",
        f"{k} classes (`classes.json`); don't-care id: {classes.get('dontcare')}; **ignore id: {ignore}** (pixels "
        "a segmenter should not learn from: the don't-care id, and with the pixel filter the filtered pixels).", "",
        *_label_table([c["name"] for c in classes["classes"]], [tuple(c["color"]) for c in classes["classes"]],
                      classes.get("dontcare")), "",
        "## Layout", "",
        "```",
        "images/<relative stem>_s<seed>.png   the generated photo (RGB)",
        f"labels/<relative stem>_s<seed>.png   its class ids ({'8-bit' if k <= 256 else '16-bit'} grayscale PNG), "
        "the same name as its image",
        "classes.json                         ids, names, colours, don't-care and ignore ids",
        "manifest.jsonl                       one line per pair, kept or rejected (rejected ones have no files)",
        "synthesize.json                      what made it: generator, noise, scorer, filters, counts",
        "```", "",
        "## Load it", "",
        "mmsegmentation (1.x; in 0.x `img_dir=\"images\", ann_dir=\"labels\"`):", "",
        "```python",
        "import json",
        'classes = json.load(open("path/to/this/folder/classes.json"))["classes"]',
        "dataset = dict(",
        '    type="BaseSegDataset", data_root="path/to/this/folder",',
        '    data_prefix=dict(img_path="images", seg_map_path="labels"),',
        f'    img_suffix=".png", seg_map_suffix=".png", reduce_zero_label=False, ignore_index={ignore},',
        '    metainfo=dict(classes=tuple(c["name"] for c in classes), palette=[c["color"] for c in classes]),',
        ")",
        f"# and the decode head: ignore_index={ignore}",
        "```", "",
        "Hugging Face `datasets` (an imagefolder of images, with the masks beside them by name):", "",
        "```python",
        "from pathlib import Path",
        "from datasets import Dataset, Image",
        'root = Path("path/to/this/folder")',
        'images = sorted(str(p) for p in (root / "images").rglob("*.png"))',
        'labels = [p.replace("/images/", "/labels/", 1) for p in images]   # the same relative name',
        'ds = Dataset.from_dict({"image": images, "label": labels}).cast_column("image", Image()).cast_column("label", Image())',
        "```", "",
        "usis's own `folder` preset reads it too (`usis data check --preset folder --set data.labels=labels "
        f"--set data.photos=images --set data.num_classes={k} --set data.class_file=classes.json`).", "",
        "## Limits", "",
        "- The images are generated: they look like the generator's training photos as far as it learnt them, and "
        "a class the generator paints badly (small and thin ones first) is still labelled where the map says.",
        "- The score (if any) is a segmenter's reading of each image against its map: it ranks the pairs, it does "
        "not certify them; a segmenter trained on this data should be judged on real photos with true labels.",
        "",
    ]
    return "\n".join(lines)


def _score_text(settings: dict[str, Any]) -> str:
    if settings.get("scorer_name") is None:
        return "none (the pairs are not scored)"
    return (f"{settings['scorer_name']}: its reading of each image against the map, mIoU and pixel accuracy in "
            "percent over the classes present")


def _filter_text(settings: dict[str, Any]) -> str:
    if settings.get("keep") is not None:
        return f"score filter: the best {100 * settings['keep']:g} % by mIoU kept (`--keep {settings['keep']:g}`)"
    if settings.get("min_score") is not None:
        return f"score filter: pairs of mIoU >= {settings['min_score']:g} % kept (`--min-score {settings['min_score']:g}`)"
    return "no score filter: every pair kept"


def _filter_lines(settings: dict[str, Any], losses: dict[str, Any] | None, ignore: int) -> list[str]:
    out = []
    measured = ""
    if losses is not None:
        measured = (f" (class means of `{losses.get('segmenter_name')}` over {losses.get('real_pairs')} real labelled "
                    "photos, `class_losses.json`)")
    if settings.get("pixel_filter"):
        margin = settings["pixel_filter"]["margin"]
        out.append(f"- pixel filter (FreeMask): a pixel whose loss under a segmenter trained on real photos exceeds "
                   f"{margin:g} x its class's mean loss is labelled {ignore} (ignored){measured}")
    if settings.get("resample"):
        out.append(f"- re-sampling `{settings['resample']['mode']}`: 1 to {settings['n']} pairs per map by the rank "
                   f"of its hardness (the pixel-weighted mean of its classes' mean losses){measured}")
    return out


def _size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>10M" if n >= 10_000_000 else "other")


# ---------------------------------------------------------------------------------------------- shared


def _label_table(names: list[str], palette: list[tuple[int, int, int]], dontcare: int | None) -> list[str]:
    rows = ["| id | class | colour |", "|---:|---|---|"]
    for i, (name, color) in enumerate(zip(names, palette, strict=False)):
        note = " (don't care)" if i == dontcare else ""
        rows.append(f"| {i} | {name}{note} | `#{''.join(f'{int(c):02x}' for c in color)}` |")
    return rows


def _get(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record that the Hub's model-index can hold (no NaN / inf)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
