"""Configuration: dataclasses and presets.

Every hyperparameter of the paper lives here, once. A run is described by one :class:`Config`
(data, model, train, eval). Presets return a fully resolved config; ``--set key=value`` overrides any
field with a dotted path (``train.lr_g=2e-4``, ``data.root=/data/cityscapes``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from usis.errors import ConfigError


@dataclass
class DataConfig:
    """Where the label maps and photos come from and how they are prepared.

    ``kind`` selects the loader: ``synthetic`` (embedded, procedural), ``cityscapes``, ``ade20k``,
    ``coco``, ``gta2cityscapes`` or ``folder``. Label maps are int64 class ids in
    ``[0, num_classes)``; ``dontcare`` (or ``None``) is the id that gets zero weight in the loss.
    """

    kind: str = "synthetic"
    root: str = ""  # dataset root for the standard layouts (Cityscapes root for gta2cityscapes photos)
    label_root: str = ""  # gta2cityscapes: GTA-V root (labels); empty -> same as root
    labels: str = ""  # folder: directory of label PNGs
    photos: str = ""  # folder: directory of photos
    val_labels: str = ""  # folder: optional validation label PNGs
    val_photos: str = ""  # folder: optional validation photos
    class_file: str = ""  # folder: optional JSON/CSV with class names and colours
    num_classes: int = 9
    dontcare: int | None = 0
    height: int = 64
    width: int = 128
    load_size: int = 0  # resize the short side to this before the random crop; 0 -> no crop
    flip: bool = True
    num_workers: int = 0
    pin_memory: bool = True
    skip_corrupt: bool = False  # skip (and report) unreadable files instead of failing
    check_samples: int = 200  # files inspected by the pre-training check (0 -> all)
    # synthetic preset
    synthetic_train: int = 2000  # label maps and (independent) photos in the training streams
    synthetic_val: int = 200
    synthetic_seed: int = 0
    # A few labelled photos (issue 32): K real photos with their own label maps beside the unpaired streams, a
    # seeded choice (labelled_seed) among the training split's pairs: "0" = unpaired USIS, "all" = the paired
    # setting. The standard layouts pair their train split's files; folder: labelled_photos / labelled_labels
    # (matched by file name); synthetic: a stream of its own (never the evaluator's or the test photos).
    labelled: str = "0"
    labelled_seed: int = 0
    labelled_photos: str = ""
    labelled_labels: str = ""


@dataclass
class ModelConfig:
    """Network widths and switches. ``num_classes`` is filled from the data, never hard-coded."""

    num_classes: int = 9
    # generator: "spade" (USIS: SPADE / OASIS with 3D noise) or "wavelet" (USIS-Wavelet, ICASSP 2022: the same
    # blocks in the Haar wavelet domain, widths 4x; the reference trains it with g_ch=16)
    g_type: str = "spade"
    g_ch: int = 64
    z_dim: int = 64
    g_norm: str = "batch"  # batch | syncbatch | instance
    spectral_norm: bool = True
    noise_3d: bool = True
    spade_hidden: int = 128
    pixel_noise: int = 0  # i.i.d. per-pixel noise channels in the conditioning; 0 = the paper (see Generator)
    # of the z_dim noise channels, how many are drawn per class region rather than per image (issue 31's
    # candidate; 0 = the paper; SPADE generator only; usis.nn.noise)
    class_style: int = 0
    # wavelet generator only: SPADE-normalise its learned shortcuts. The reference builds these norms but leaves
    # them out of its forward (untrained parameters); false = its forward, without them (usis.nn.wavelet_generator)
    g_shortcut_norm: bool = True
    # segmenter (OASIS U-Net)
    s_ch: int = 64
    # > 0: S is a local reader instead of the U-Net, that many 3x3 convolutions at full resolution (each pixel read
    # from the (2 * s_local + 1)-pixel square around it, 4 * s_ch channels; issue 31's candidate; 0 = the paper)
    s_local: int = 0
    # One more output channel than classes (channel 0, never a target) that takes part in the softmax of
    # the segmentation loss, as in the reference ("N+1" loss of OASIS; reference models/losses.py). False:
    # C channels, a plain C-way cross entropy (our earlier recipe).
    s_extra_channel: bool = True
    # Weight initialisation of G and S: "reference" = Xavier-normal with gain 0.02 and zero biases on every
    # Conv/Linear, spectrally normalised ones included (reference models/models.py, init_networks);
    # "default" = PyTorch's defaults (our earlier recipe). D and the decoder keep their own initialisation.
    init: str = "reference"
    # discriminator
    d_type: str = "wavelet"  # wavelet | whole | patch
    d_ch: int = 64  # 64 -> the SWAGAN channel table with channel_multiplier 2 (max 512)
    d_max_ch: int = 512
    # beyond the paper (issue 31's candidate): a second, local scale on the wavelet D, a logit per 8x8 patch
    # from its features at 1/8 of the image, its own term in the adversarial losses (usis.nn.discriminator)
    d_patch: bool = False
    # beyond the paper (issue 31's candidate): D reads each image beside S's reading of it (the one-hot argmax of
    # S's classes, no gradient), photos and G's images alike, so that it can judge each class region's look
    # against what the photos show where S reads that class (usis.nn.discriminator)
    d_reads: bool = False
    decoder: bool = True
    dec_ch: int = 256  # widest decoder layer


@dataclass
class TrainConfig:
    """Optimisation (Eq. 2-5 of the paper and the official defaults)."""

    batch_size: int = 8
    iters: int = 100_000
    lr_g: float = 1e-4
    lr_s: float = 4e-4
    lr_d: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.999
    lambda_seg: float = 1.0
    lambda_rec: float = 1.0  # decoder L1 on real photos (D step)
    # The learning scheme's ablations (Table 3 of the paper; off by default):
    # seg_loss "ce" = the class-balanced cross entropy (USIS); "l1" = CycleGAN's L1 cycle loss between S's class
    # probabilities and the one-hot map in its place (configuration A).
    seg_loss: str = "ce"
    # > 0: add CycleGAN's reverse cycle (configuration C): real photo x -> S -> class probabilities -> G -> x',
    # lambda_rev * L1(x', x) for G and S, plus a label discriminator (whole-image, on probability maps vs the
    # one-hot maps of the label stream) that S learns to fool. S then sees real photos. CycleGAN's weight is 10.
    lambda_rev: float = 0.0
    # Beyond the paper (issue 31; off by default): differentiable augmentation (usis.nn.augment, DiffAugment), a
    # comma list of color, translation, cutout. d_augment: D sees every photo and every generated image through
    # it (its decoder rebuilds the augmented photo; R1 is taken through it), and G learns through it.
    # s_augment (color only: the label maps stay aligned): S reads G's images through it, so that S (and the
    # shared seg term G learns from) cannot tell the classes apart by a colour alone.
    d_augment: str = ""
    s_augment: str = ""
    # with data.labelled: S also learns the labelled photos (lambda_labelled * the class-balanced cross entropy,
    # the photos through labelled_augment: color, translation; their maps move with them), and G lambda_labelled_rec
    # * the L1 distance of its image of a labelled map to that map's photo (1 by default: with ten pairs, 3 seeds,
    # mIoU / ceiling 0.701 +- 0.043 against 0.639 +- 0.019 without it, downstream 42.6 against 39.8; docs/labelled.md)
    lambda_labelled: float = 1.0
    lambda_labelled_rec: float = 1.0
    labelled_augment: str = "color,translation"
    # > 0 (issue 31; off by default): S also learns the photos of the unpaired stream from its own confident reading
    # of them (losses.pseudo_label_ce: self-training, pixels whose top class probability is >= s_pseudo_threshold)
    lambda_s_pseudo: float = 0.0
    s_pseudo_threshold: float = 0.9
    # with model.d_patch: the patch head's weight in D's and G's adversarial losses and in R1 (the image head's is 1)
    lambda_d_patch: float = 1.0
    r1_gamma: float = 10.0
    r1_every: int = 4  # lazy R1 (StyleGAN2); 0 disables
    # How R1 enters D's optimisation. "reference" (reference train.py): D's whole loss (adversarial +
    # lambda_rec * decoder L1) is multiplied by r1_every, and every r1_every steps a separate optimizer
    # step minimises r1_gamma * R1 (a lazy-regularisation phase, like StyleGAN2-ADA's Dreg).
    # "fused" (our earlier recipe): one D step per iteration, with (r1_gamma / 2) * R1 * r1_every added
    # to the unscaled loss on R1 steps; relative to the adversarial term about 8x the reference's weight.
    r1_mode: str = "reference"
    # True (reference train.py): the S and D steps each draw a new fake (new noise, no gradient) with G
    # after its update. False (default, a measured deviation): S and D reuse the fake of G's step, drawn
    # before G's update; S's gradient comes out of G's backward. That saves two G forwards and S's forward,
    # 27-31 % of an iteration's FLOPs, and on the synthetic benchmark it was not worse over three seeds
    # (docs/recipe.md, benchmarks/ablation.py --study recipe).
    fresh_fakes: bool = False
    ema_decay: float = 0.9999
    # Warm the EMA decay up as min(ema_decay, (1 + step) / (10 + step)) (as in StyleGAN2-ADA's ramp, in
    # spirit): without it the EMA of a short run is mostly its random initial weights. The reference has no
    # warm-up (utils.update_EMA); note that with it a decay of 0.9999 is only reached after ~90k steps.
    ema_warmup: bool = False
    ema_bn_batches: int = 4  # batches used to refresh the EMA generator's BN statistics
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Speed switches (usis.train.speed; each measured in benchmarks/RESULTS.md, "Speed switches"):
    # amp: bf16 autocast on CUDA (no effect on a CPU). channels_last: networks and batches in NHWC.
    # compile: torch.compile of the networks' forwards (the lazy R1 step runs eager; double backward is
    # not supported by compile). cudnn_benchmark: let cuDNN pick the fastest kernels for the fixed shapes.
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend: inductor (fused kernels) | aot_eager (no codegen)
    cudnn_benchmark: bool = True
    log_every: int = 10
    # stderr not a terminal (a log file, nohup, a job log): a plain progress line every this many seconds
    # instead of tqdm's carriage-return redraws (usis.train.progress); <= 0: a line every step
    log_interval_s: float = 30.0
    sample_every: int = 1000
    eval_every: int = 5000  # >0: every N steps plus start and end; 0: start and end only; <0: never
    ckpt_every: int = 1000
    # every keep_every steps (0 = never) the checkpoint is also kept as checkpoints/step_<step>.pt: the generator
    # along its training (studies of length; an earlier generator to go back to)
    keep_every: int = 0
    num_threads: int = 0  # torch intra-op threads on CPU (per process); 0 -> torch default (cores / nproc)
    # Data-parallel processes on this machine (usis.train.distributed): CPU -> gloo, CUDA -> one GPU each.
    # batch_size is the global batch, split evenly over them. 0 = auto: 1 on CUDA; on a CPU one per core
    # (a divisor of batch_size). Ignored under torchrun (its WORLD_SIZE rules).
    nproc: int = 1
    # Data parallel (train.nproc or torchrun): seconds a collective waits for the other processes before the
    # run ends (a process that hung or a machine that vanished; a killed process ends the run at once);
    # the waits while rank 0 evaluates or saves alone allow an hour.
    dist_timeout: float = 120.0
    max_seconds: float = 0.0  # stop training (then save and evaluate) after this wall time; 0 -> no limit
    # Linear learning-rate decay to 0 over the end of the run (pix2pix / SPADE's "niter_decay"): all three
    # learning rates are constant up to this fraction of the run and reach 0 at its end. 1.0 -> constant
    # (the paper). Progress is step / iters, or with max_seconds the larger of that and the fraction of
    # the time budget used by this invocation.
    lr_decay_from: float = 1.0


@dataclass
class EvalConfig:
    """What periodic and final evaluation computes."""

    metrics: str = "fid"  # comma list: fid, kid, miou, msssim (synthetic preset: miou, sfid)
    num_images: int = 500  # validation label maps used by periodic evaluation (0 -> all)
    batch_size: int = 16
    fid_weights: str = ""  # path to the TF-FID Inception weights (pt_inception-2015-12-05-*.pth)
    cache_dir: str = ""  # real-statistics cache; empty -> ~/.cache/usis
    best_metric: str = "fid"  # tracked for best.pt (lower is better for fid/sfid, higher for miou)


@dataclass
class Config:
    preset: str = "synthetic"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        def build(dc_type, values):
            names = {f.name for f in dataclasses.fields(dc_type)}
            unknown = set(values) - names
            if unknown:
                raise ConfigError(f"unknown config keys for {dc_type.__name__}: {sorted(unknown)}")
            return dc_type(**values)

        d = dict(d)
        return cls(
            preset=d.get("preset", "custom"),
            data=build(DataConfig, d.get("data", {})),
            model=build(ModelConfig, d.get("model", {})),
            train=build(TrainConfig, d.get("train", {})),
            eval=build(EvalConfig, d.get("eval", {})),
        )

    def sync(self) -> Config:
        """Propagate values that one section owns to the others (class count from the data)."""
        self.model.num_classes = self.data.num_classes
        return self


# What a run saved before a field existed trained with: a checkpoint's config that lacks a field gets this
# value, not today's default, so that resuming an older run keeps its recipe (and its segmenter's shape).
LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "model": {"s_extra_channel": False, "init": "default"},
    "train": {"r1_mode": "fused", "fresh_fakes": False, "ema_warmup": True},
}


def saved_config(d: dict[str, Any]) -> Config:
    """The :class:`Config` of a checkpoint (``state["config"]``), older ones included (see LEGACY_VALUES)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for section, values in LEGACY_VALUES.items():
        for key, value in values.items():
            d.setdefault(section, {}).setdefault(key, value)
    return Config.from_dict(d)


# --------------------------------------------------------------------------------------------- presets


def _cityscapes_like(preset: str, kind: str) -> Config:
    cfg = Config(preset=preset)
    cfg.data = DataConfig(kind=kind, num_classes=35, dontcare=0, height=256, width=512, load_size=0,
                          num_workers=4)
    # official Cityscapes defaults: lr_G 4e-4, lr_S 4e-4, lr_D 5 x 4e-4, EMA 0.999
    cfg.train = TrainConfig(batch_size=8, iters=175_000, lr_g=4e-4, lr_s=4e-4, lr_d=2e-3, ema_decay=0.999,
                            sample_every=2000, eval_every=10_000, ckpt_every=2000)
    cfg.eval = EvalConfig(metrics="fid", num_images=500)
    return cfg


def _preset_cityscapes() -> Config:
    return _cityscapes_like("cityscapes", "cityscapes")


def _preset_gta2cityscapes() -> Config:
    return _cityscapes_like("gta2cityscapes", "gta2cityscapes")


def _preset_ade20k() -> Config:
    cfg = Config(preset="ade20k")
    cfg.data = DataConfig(kind="ade20k", num_classes=151, dontcare=0, height=256, width=256, load_size=286,
                          num_workers=8)
    cfg.train = TrainConfig(batch_size=32, iters=300_000, lr_g=1e-4, lr_s=4e-4, lr_d=2e-3,
                            ema_decay=0.9999, sample_every=2000, eval_every=10_000, ckpt_every=2000)
    cfg.eval = EvalConfig(metrics="fid", num_images=2000)
    return cfg


def _preset_coco() -> Config:
    cfg = _preset_ade20k()
    cfg.preset = "coco"
    cfg.data.kind = "coco"
    cfg.data.num_classes = 183
    cfg.eval.num_images = 5000
    return cfg


def _preset_folder() -> Config:
    cfg = Config(preset="folder")
    cfg.data = DataConfig(kind="folder", num_classes=0, dontcare=None, height=256, width=256, load_size=286,
                          num_workers=4)
    cfg.train = TrainConfig(batch_size=8, iters=100_000, lr_g=1e-4, lr_s=4e-4, lr_d=2e-3, ema_decay=0.999,
                            sample_every=1000, eval_every=10_000, ckpt_every=1000)
    cfg.eval = EvalConfig(metrics="fid", num_images=500)
    return cfg


def _preset_synthetic() -> Config:
    """Small enough to visibly learn on a 2-core CPU within minutes (the README's demo).

    The widths are the paper's architecture scaled down (SPADE generator ch=8, SPADE hidden 16, 8-d
    noise; segmenter ch=8; SWAGAN discriminator at 1/4 width); R1 gamma 1 suits 64x128 images at
    batch 2-4 (StyleGAN2's heuristic gives ~0.4; the paper's 10 is for 256x512). Learning rates and
    lambda_seg are the paper's Cityscapes values: in tuning runs of 700-1200 steps, lr_G 1e-3,
    lambda_seg 2-4, batch 8, wider G or D and longer EMA windows were all within the run-to-run spread
    (about +-5 mIoU points; benchmarks/RESULTS.md). One deliberate extension beyond the paper: four
    channels of per-pixel noise in the generator's conditioning (``model.pixel_noise=4``; set 0 for the
    paper's generator). The synthetic photos carry per-pixel grain and fine texture that the paper's
    per-image noise vector cannot produce; without a spatial noise source the generator paints a
    lattice over every region. Over four seeds at ~1000 steps the extension lowered the end/start sFID
    ratio from 0.55 to 0.40 on average, with mIoU unchanged (benchmarks/RESULTS.md). What the bars
    need is steps: at batch 4 a 2500-step run met both (mIoU 0.50 of the ceiling, sFID 0.10 of its
    start) where ~1000 steps gave ~0.45 / ~0.4, so the demo runs batch 2, which takes about half the
    time per step on two cores and so gets about twice the steps within its budget. On a CPU the run is
    data parallel with one process per core (``nproc=0``: two processes of one image each on two cores,
    one intra-op thread each; benchmarks/RESULTS.md), which does more work per second than one process
    with two threads. ``max_seconds`` (540 s) bounds a plain ``usis train --preset synthetic``; ``make
    demo`` replaces it by a deadline 120 s before its 15 minutes are up. Evaluation runs at the start and
    at the end only (``eval_every=0``): a periodic one would cost ~20 s (~50 steps) of the budget.
    """
    cfg = Config(preset="synthetic")
    cfg.data = DataConfig(kind="synthetic", num_classes=10, dontcare=0, height=64, width=128, load_size=0,
                          flip=True, num_workers=0)
    # the earlier recipe (PyTorch's init, C-way loss, fused R1, reused fakes): the reference's recipe at this
    # preset's R1 gamma left G painting grey for 1000+ steps (docs/recipe.md, benchmarks/ablation.py --study recipe)
    cfg.model = ModelConfig(g_ch=8, z_dim=8, spade_hidden=16, s_ch=8, d_ch=16, d_max_ch=64, dec_ch=32,
                            pixel_noise=4, init="default", s_extra_channel=False)
    # ema_decay 0.999 with the warm-up (an EMA horizon of ~11 % of the steps so far): over three seeds it ends
    # higher in mIoU at every stop from 1750 to 3000 than 0.99 (benchmarks/RESULTS.md, session 7)
    # NHWC on the CPU: oneDNN's convolutions run 1.3-1.8x faster in it at these sizes; with the spectral norm
    # and the blur reading channels-last tensors in place, the preset's step is ~10 % faster than in NCHW
    # (benchmarks/RESULTS.md, "CPU step, session 14"). The step cap follows that speed: the demo on a 2-core
    # CPU reaches ~4,500 steps within its 15 minutes (3,000 before)
    cfg.train = TrainConfig(batch_size=2, iters=4500, lr_g=4e-4, lr_s=4e-4, lr_d=2e-3, r1_gamma=1.0,
                            r1_mode="fused", fresh_fakes=False, ema_decay=0.999, ema_warmup=True, ema_bn_batches=8, log_every=10,
                            sample_every=500, eval_every=0, channels_last=True,
                            ckpt_every=500, max_seconds=540, num_threads=0, nproc=0)
    # c2st and msssim (realism, diversity): at the end of a run, ~30 s on two cores (not at step 0)
    cfg.eval = EvalConfig(metrics="miou,sfid,c2st,msssim", num_images=200, best_metric="sfid")
    return cfg


PRESETS = {
    "synthetic": _preset_synthetic,
    "cityscapes": _preset_cityscapes,
    "ade20k": _preset_ade20k,
    "coco": _preset_coco,
    "gta2cityscapes": _preset_gta2cityscapes,
    "folder": _preset_folder,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]().sync()


# ------------------------------------------------------------------------------------------- overrides


def _parse_value(text: str, current: Any, key: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if isinstance(current, int) or (current is None and text.lstrip("-").isdigit()):
        try:
            return int(float(text)) if "e" in text.lower() else int(text)
        except ValueError as e:
            raise ConfigError(f"--set {key}={text}: expected an integer") from e
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError as e:
            raise ConfigError(f"--set {key}={text}: expected a number") from e
    return text


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Apply ``section.field=value`` strings in order; unknown keys are errors, not silent no-ops."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr_g=2e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"--set {key}: expected section.field with section one of data, model, train, eval")
        section, name = parts
        obj = getattr(cfg, section, None)
        if obj is None or not dataclasses.is_dataclass(obj):
            raise ConfigError(f"--set {key}: unknown section {section!r} (data, model, train, eval)")
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            raise ConfigError(f"--set {key}: unknown field {name!r}; {section} has: {', '.join(sorted(fields))}")
        if key == "model.num_classes":  # one truth: the networks take the data's class count
            raise ConfigError(f"--set {key}: the class count belongs to the data; set data.num_classes={text.strip()} "
                              "instead (model.num_classes follows it)")
        current = getattr(obj, name)
        if str(fields[name].type) == "float" and isinstance(current, int) and not isinstance(current, bool):
            current = float(current)  # a float field whose preset value happens to be written as an int
        setattr(obj, name, _parse_value(text.strip(), current, key))
    return cfg.sync()


def parse_count(text: str) -> int | None:
    """``data.labelled``: ``"0"`` -> 0 (unpaired), ``"K"`` -> K, ``"all"`` -> None (every pair)."""
    value = str(text).strip().lower()
    if value == "all":
        return None
    if value.isdigit():
        return int(value)
    raise ConfigError(f"data.labelled={text!r}: the number of labelled photos to use (0 = none, the unpaired "
                      "setting) or all (every labelled pair of the training split: the paired setting)")


def validate(cfg: Config) -> None:
    """Cheap structural checks that do not touch the data."""
    d, m = cfg.data, cfg.model
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes={d.num_classes}: set the number of classes, "
                          "e.g. --set data.num_classes=20")
    if d.dontcare is not None and not 0 <= d.dontcare < d.num_classes:
        raise ConfigError(f"data.dontcare={d.dontcare} is outside [0, {d.num_classes}); "
                          "use --set data.dontcare=none for no don't-care class")
    if not 0.0 <= cfg.train.lr_decay_from <= 1.0:
        raise ConfigError(f"train.lr_decay_from={cfg.train.lr_decay_from}: expected a fraction of the run in "
                          "[0, 1] (1 = constant learning rates)")
    if d.height % 32 or d.width % 32:
        raise ConfigError(f"image size {d.height}x{d.width}: height and width must be multiples of 32")
    if m.g_norm not in ("batch", "syncbatch", "instance"):
        raise ConfigError(f"model.g_norm={m.g_norm!r}: choose batch, syncbatch or instance")
    t = cfg.train
    if t.nproc < 0 or t.nproc and t.batch_size % t.nproc:
        raise ConfigError(f"train.nproc={t.nproc}, train.batch_size={t.batch_size}: the (global) batch is split "
                          "evenly over the processes; choose an nproc that divides the batch size (0 = auto)")
    if m.init not in ("reference", "default"):
        raise ConfigError(f"model.init={m.init!r}: choose reference (Xavier-normal, gain 0.02) or default (PyTorch's)")
    if t.r1_mode not in ("reference", "fused"):
        raise ConfigError(f"train.r1_mode={t.r1_mode!r}: choose reference (separate lazy R1 step) or fused")
    if t.seg_loss not in ("ce", "l1"):
        raise ConfigError(f"train.seg_loss={t.seg_loss!r}: choose ce (USIS) or l1 (the L1 cycle loss)")
    from usis.nn.augment import parse_policy  # lazy: the config module stays free of torch

    parse_count(d.labelled)
    for key in ("d_augment", "s_augment", "labelled_augment"):
        try:
            ops = parse_policy(getattr(t, key))
        except ValueError as e:
            raise ConfigError(f"train.{key}={getattr(t, key)!r}: {e}") from None
        if key == "s_augment" and set(ops) - {"color"}:
            raise ConfigError(f"train.s_augment={t.s_augment!r}: only color (a shift or a hole would move the image "
                              "away from its label map)")
        if key == "labelled_augment" and "cutout" in ops:
            raise ConfigError(f"train.labelled_augment={t.labelled_augment!r}: color and translation only (a hole "
                              "in a photo has no class)")
    if t.lambda_d_patch < 0 or (t.lambda_d_patch != 1 and not m.d_patch):
        raise ConfigError(f"train.lambda_d_patch={t.lambda_d_patch}: the patch head's weight, >= 0, and only with "
                          "model.d_patch=true")
    if t.lambda_s_pseudo < 0 or not 0 < t.s_pseudo_threshold <= 1:
        raise ConfigError(f"train.lambda_s_pseudo={t.lambda_s_pseudo}, train.s_pseudo_threshold="
                          f"{t.s_pseudo_threshold}: the weight must be >= 0 (0 = off), the threshold in (0, 1]")
    if t.lambda_rev < 0:
        raise ConfigError(f"train.lambda_rev={t.lambda_rev}: must be >= 0 (0 = no reverse cycle)")
    if m.s_local < 0:
        raise ConfigError(f"model.s_local={m.s_local}: the local reader's layers, >= 0 (0 = the paper's U-Net)")
    if m.g_type not in ("spade", "wavelet"):
        raise ConfigError(f"model.g_type={m.g_type!r}: choose spade or wavelet")
    if m.class_style and (m.g_type != "spade" or not 0 < m.class_style <= (m.z_dim if m.noise_3d else 0)):
        raise ConfigError(f"model.class_style={m.class_style}: the SPADE generator's noise channels drawn per class, "
                          f"from 0 to model.z_dim ({m.z_dim}, with model.noise_3d)")
    if t.compile_backend not in ("inductor", "aot_eager", "eager", "cudagraphs"):
        raise ConfigError(f"train.compile_backend={t.compile_backend!r}: choose inductor, aot_eager, eager or cudagraphs")
    if m.d_patch and m.d_type != "wavelet":
        raise ConfigError(f"model.d_patch=true with model.d_type={m.d_type}: the patch head is built on the wavelet "
                          "discriminator only")
    if m.d_reads and m.d_type != "wavelet":
        raise ConfigError(f"model.d_reads=true with model.d_type={m.d_type}: S's reading enters the wavelet "
                          "discriminator only")
    if m.d_type not in ("wavelet", "whole", "patch"):
        raise ConfigError(f"model.d_type={m.d_type!r}: choose wavelet, whole or patch")
