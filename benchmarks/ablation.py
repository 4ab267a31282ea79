"""Named training variants x seeds on the synthetic benchmark: train, evaluate, tabulate, plot.

Each run is ``usis train --preset synthetic`` with the study's shared overrides, the variant's own and
``--seed S``, for the same number of steps, evaluated by the synthetic evaluator (mIoU / its ceiling on
real photos, sFID) every ``--eval-every`` steps. Runs go side by side (``--parallel``, default 2: one
single-thread process per core of a 2-core machine) and are resumable: a finished run (its metrics hold
the last step) is skipped, an interrupted one continues from its ``latest.pt``. Then one table (mean +-
std over the seeds per variant, at every evaluated step) and one PNG (mIoU / ceiling and sFID against
the step, one line per variant, the band = +- one std, thin lines = single seeds) are written.

    python benchmarks/ablation.py --study recipe                 # runs/ablation/recipe/..., report in docs/results
    python benchmarks/ablation.py --study recipe --report-only   # tabulate what is there
    python benchmarks/ablation.py --study mine --variant a="train.lr_g=1e-3" --variant b= --seeds 0 1 2

Studies are defined in STUDIES below (later work adds its own); ``--variant NAME="k=v ..."`` adds ad-hoc ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The recipe of sessions 1-5 (before issue 11): PyTorch's default initialisation, a C-way segmentation
# loss, R1 folded into D's step, and S and D trained on G's pre-update fake.
PREVIOUS_RECIPE = ["model.init=default", "model.s_extra_channel=false", "train.r1_mode=fused",
                   "train.fresh_fakes=false"]
# The reference implementation's recipe, as it trains. The real-data presets default to it except for the
# fakes: they reuse G's (train.fresh_fakes=false), measured not worse here and 27-31 % fewer FLOPs.
REFERENCE_RECIPE = ["model.init=reference", "model.s_extra_channel=true", "train.r1_mode=reference",
                    "train.fresh_fakes=true"]


@dataclass
class Study:
    variants: dict[str, list[str]]
    base: list[str] = field(default_factory=list)  # overrides shared by every variant of the study
    iters: int = 1500
    eval_every: int = 500
    about: str = ""
    # named subsets of the variants, each reported as its own table and plot (``STUDY_GROUP.md/.png``)
    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


# The paper's ablations (issue 15) on the synthetic preset. Table 1: the discriminator (patch, whole image,
# wavelet; without the decoder), the decoder, and the wavelet generator (issue 13). Table 3 (all with the
# wavelet D, encoder only, as in the paper): L_seg replaced by CycleGAN's L1 cycle loss, the reverse cycle
# added (photo -> S -> G -> photo with a label discriminator; CycleGAN's weight 10), the reverse cycle
# without noise, and USIS without noise. "Without noise" removes the 3D noise and the synthetic preset's
# per-pixel noise (model.pixel_noise), so that the generator is deterministic as in the paper's.
NO_NOISE = ["model.noise_3d=false", "model.pixel_noise=0"]
NO_DECODER = ["model.decoder=false"]
PAPER_VARIANTS = {
    "patch_D": ["model.d_type=patch", *NO_DECODER],
    "whole_D": ["model.d_type=whole", *NO_DECODER],
    "wavelet_D": NO_DECODER,  # also Table 3's "USIS (no decoder)"
    "wavelet_D_decoder": [],  # USIS: the synthetic preset as it is
    # the wavelet generator at the SPADE generator's widths / 4 (g_ch 2 vs 8): 0.9M vs 1.1M parameters, the
    # ratio of the reference's run-script G (ch 16, 55.7M) to the paper's (ch 64, 71.1M)
    "wavelet_G": ["model.g_type=wavelet", "model.g_ch=2"],
    "l1_cycle": ["train.seg_loss=l1", *NO_DECODER],
    "reverse_cycle": ["train.lambda_rev=10", *NO_DECODER],
    "reverse_cycle_no_noise": ["train.lambda_rev=10", *NO_DECODER, *NO_NOISE],
    "no_noise": [*NO_DECODER, *NO_NOISE],
}


STUDIES: dict[str, Study] = {
    # Issue 11: the reference's recipe against ours, and the one piece we may keep (reused fakes).
    # The synthetic preset's other values are pinned as they were when the study ran.
    "recipe": Study(
        base=["model.pixel_noise=4", "train.r1_gamma=1.0", "train.ema_decay=0.99", "train.ema_warmup=true",
              "train.lr_decay_from=1.0", "train.batch_size=2", "train.lr_g=4e-4", "train.lr_s=4e-4",
              "train.lr_d=2e-3"],
        variants={
            "previous": PREVIOUS_RECIPE,
            "reference": REFERENCE_RECIPE,
            "reference_reused_fakes": REFERENCE_RECIPE[:-1] + ["train.fresh_fakes=false"],
            # the synthetic preset's R1 gamma (1) was tuned for the fused weighting; with the reference's
            # weighting the same relative R1 strength is gamma ~8, and the paper's gamma is 10
            "reference_gamma10": REFERENCE_RECIPE + ["train.r1_gamma=10"],
            "reference_gamma10_reused_fakes": REFERENCE_RECIPE[:-1] + ["train.fresh_fakes=false", "train.r1_gamma=10"],
            "reference_default_init": ["model.init=default"] + REFERENCE_RECIPE[1:],
            "reference_default_init_reused_fakes": ["model.init=default"] + REFERENCE_RECIPE[1:-1]
            + ["train.fresh_fakes=false"],
        },
        about="the reference implementation's training recipe vs the earlier one (issue 11)",
    ),
    "paper": Study(
        base=["eval.metrics=miou,sfid,msssim"],
        variants=PAPER_VARIANTS,
        iters=1500,
        eval_every=250,
        about="the paper's ablations on the synthetic benchmark (issues 13, 15)",
        groups={
            "table1": ("Table 1: discriminator, decoder, generator",
                       ["patch_D", "whole_D", "wavelet_D", "wavelet_D_decoder", "wavelet_G"]),
            "table3": ("Table 3: the learning scheme (wavelet D without decoder)",
                       ["wavelet_D", "l1_cycle", "reverse_cycle", "reverse_cycle_no_noise", "no_noise"]),
            "generator": ("SPADE vs wavelet generator (wavelet D + decoder)", ["wavelet_D_decoder", "wavelet_G"]),
        },
    ),
    # Issue 31: where the grain comes from and what width buys, at the demo's horizon (a first screen; the
    # synthetic preset as it is, with its realism and diversity measures).
    "quality": Study(
        variants={"preset": [], "no_pixel_noise": ["model.pixel_noise=0"],
                  "g_width_2x": ["model.g_ch=16", "model.spade_hidden=32"],
                  # D sees photos and G's images through DiffAugment (with and without its colour operation);
                  # S reads G's images through colour jitter (no class told by its colour alone)
                  "d_aug": ["train.d_augment=translation,cutout"],
                  "d_aug_color": ["train.d_augment=color,translation,cutout"],
                  "s_aug_color": ["train.s_augment=color"],
                  # half of the noise channels drawn per class region (each class its own look)
                  "class_style": ["model.class_style=4"],
                  # a second, local D scale: a logit per 8x8 patch beside the whole image's
                  "d_patch": ["model.d_patch=true"],
                  # ... at a quarter of the image head's weight (at 1, D wins early)
                  "d_patch_q": ["model.d_patch=true", "train.lambda_d_patch=0.25"],
                  # S also learns the unpaired photos from its own confident reading (self-training, threshold 0.9)
                  "s_pseudo": ["train.lambda_s_pseudo=1"]},
        iters=1500,
        eval_every=500,
        about="issue 31's first screen: the per-pixel noise (grain?), G at twice the width, augmented views",
    ),
    # Issue 31: candidates at the preset's own length (4,500 steps; the 1,500-step screen cannot see realism),
    # scored by the shipped evaluator (session 19: seeds 0-3)
    "quality_4500": Study(
        variants={"preset": [],
                  # S reads each pixel from its 9x9 square only (no outline or context)
                  "s_local": ["model.s_local=4"],
                  # D reads each image beside S's one-hot reading of it (photos and G's images alike), so it can
                  # judge each class region's look against what photos show where S reads that class (session 20)
                  "d_reads": ["model.d_reads=true"]},
        iters=4500,
        eval_every=1500,
        about="issue 31's candidates at the preset's length (4,500 steps)",
    ),
    # Issue 31, deliver 2: quality against training length and width. One run per seed to 12,000 steps (the
    # preset's learning rates are constant, so its step-k checkpoint is a k-step run's), evaluated and kept
    # (checkpoints/step_*.pt, for the downstream study) at 1,500, 3,000, 6,000, 9,000 and 12,000 steps.
    "length": Study(
        base=["train.keep_every=1500"],
        variants={"preset": [], "g_width_2x": ["model.g_ch=16", "model.spade_hidden=32"]},
        iters=12000,
        eval_every=1500,
        about="issue 31: the preset's recipe at 1.5k-12k steps, at today's width and twice it",
    ),
    # Issue 32: a few labelled photos. K real photos with their own maps (S learns them; the views on), from the
    # synthetic benchmark's labelled stream; K = all is the paired setting. k10_rec adds G's L1 to the pairs.
    "labelled": Study(
        # S's term alone (G's L1 is on by default since session 17: off here, as these rows were measured)
        variants={"k0": [], "k10": ["data.labelled=10", "train.lambda_labelled_rec=0"],
                  "k50": ["data.labelled=50", "train.lambda_labelled_rec=0"],
                  "kall": ["data.labelled=all", "train.lambda_labelled_rec=0"],
                  "k10_rec": ["data.labelled=10", "train.lambda_labelled_rec=1"],
                  "k50_rec": ["data.labelled=50", "train.lambda_labelled_rec=1"],
                  # the paired setting: every pair, S's term and G's L1 (the paired ceiling of this benchmark)
                  "kall_rec": ["data.labelled=all", "train.lambda_labelled_rec=1"]},
        iters=1500,
        eval_every=500,
        about="issue 32: K labelled photos (0, 10, 50, all) and G's L1 to them",
    ),
    # Issue 19: the CPU default the synthetic preset now trains with (channels-last; fp32, eager) against NCHW.
    # The memory format changes the order of float sums, not the maps: does it change what the model learns?
    "speed": Study(
        variants={"nchw": ["train.channels_last=false"], "channels_last": ["train.channels_last=true"]},
        iters=2000,
        eval_every=500,
        about="the synthetic preset's memory format, NCHW vs channels-last, fp32 eager (issue 19)",
    ),
}


def run_overrides(study: Study, variant: list[str], eval_every: int) -> list[str]:
    """Everything a run of ``variant`` sets: the protocol (one process, one thread, steps not seconds),
    then the study's shared values, then the variant's."""
    protocol = ["train.max_seconds=0", "train.nproc=1", "train.num_threads=1", f"train.eval_every={eval_every}",
                f"train.sample_every={eval_every}", f"train.ckpt_every={max(1, eval_every // 2)}"]
    return protocol + study.base + variant


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """``step -> metrics`` of a run (a step evaluated twice, e.g. after a resume: the later record)."""
    path = run_dir / "metrics.jsonl"
    out: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[int(rec["step"])] = rec
    return out


def run_state(run_dir: Path, iters: int) -> str:
    """``done`` (evaluated at its last step), ``resume`` (has a checkpoint) or ``new``."""
    if iters in read_metrics(run_dir):
        return "done"
    if (run_dir / "checkpoints" / "latest.pt").exists():
        return "resume"
    return "new"


def train_command(run_dir: Path, overrides: list[str], seed: int, iters: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "usis.cli", "train", "--out", str(run_dir), "--iters", str(iters), "--no-progress"]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--preset", "synthetic", "--seed", str(seed)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_all(jobs: list[tuple[Path, list[str]]], parallel: int) -> dict[Path, int]:
    """Run ``(run_dir, command)`` jobs, ``parallel`` at a time, each logging to ``run_dir/train.log``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    pending, active, rcs = list(jobs), [], {}
    while pending or active:
        while pending and len(active) < parallel:
            run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "a")  # noqa: SIM115 - closed when the process ends
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            print(f"[ablation] start {run_dir}", file=sys.stderr, flush=True)
            active.append((run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                           time.time()))
        time.sleep(2)
        for item in list(active):
            run_dir, proc, log, t0 = item
            if proc.poll() is not None:
                log.close()
                rcs[run_dir] = proc.returncode
                active.remove(item)
                print(f"[ablation] {'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'} {run_dir} "
                      f"in {(time.time() - t0) / 60:.1f} min", file=sys.stderr, flush=True)
    return rcs


# ------------------------------------------------------------------------------------------- report


# what a run's evaluations give, as the tables name them: the ratios, the realism measure (usis.metrics.c2st),
# the diversity, and the IoU of the classes the generator paints worst
METRICS = ("miou_ratio", "sfid", "sfid_ratio", "c2st", "c2st_loss", "msssim", "iou/car", "iou/person", "iou/sign",
           "iou/pole")
MEASURED = ("c2st", "c2st_loss", "msssim", "iou/car", "iou/person", "iou/sign", "iou/pole")  # copied as recorded


def run_series(rec: dict[int, dict]) -> dict[str, dict[int, float]]:
    """Per evaluated step: mIoU / ceiling, sFID and sFID / sFID at step 0, and :data:`MEASURED` when recorded."""
    out: dict[str, dict[int, float]] = {m: {} for m in METRICS}
    start = rec.get(0, {}).get("sfid")
    for step, r in sorted(rec.items()):
        if r.get("miou") is not None and r.get("miou_ceiling"):
            out["miou_ratio"][step] = r["miou"] / r["miou_ceiling"]
        if r.get("sfid") is not None:
            out["sfid"][step] = r["sfid"]
            if start:
                out["sfid_ratio"][step] = r["sfid"] / start
        for key in MEASURED:
            if r.get(key) is not None and not math.isnan(r[key]):
                out[key][step] = r[key]
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: dict[str, dict[int, dict[int, dict]]]) -> dict[str, dict[str, dict[int, tuple]]]:
    """``variant -> metric -> step -> (mean, std, n)`` at the steps that every seed of the variant evaluated
    (runs evaluated at other intervals or stopped early leave out the steps they lack: equal steps only)."""
    agg: dict[str, dict[str, dict[int, tuple]]] = {}
    for variant, seeds in runs.items():
        series = [run_series(rec) for rec in seeds.values()]
        agg[variant] = {}
        for metric in METRICS:
            steps = sorted({s for ser in series for s in ser[metric]})
            agg[variant][metric] = {}
            for step in steps:
                vals = [ser[metric][step] for ser in series if step in ser[metric]]
                if len(vals) == len(series):
                    agg[variant][metric][step] = (*mean_std(vals), len(vals))
    return agg


def last_common_step(agg) -> int:
    """The last step at which every variant has its mIoU ratio (0 if none)."""
    common = set.intersection(*(set(agg[v]["miou_ratio"]) for v in agg)) if agg else set()
    return max(common) if common else 0


LABELS = {"miou_ratio": "mIoU / ceiling (higher is better)", "sfid": "sFID (lower is better)",
          "sfid_ratio": "sFID / sFID at step 0", "msssim": "MS-SSIM between seeds (lower = more diverse)",
          "c2st": "C2ST accuracy (0.5 = like photos)", "c2st_loss": "C2ST held-out loss (higher = harder to tell)",
          **{f"iou/{c}": f"IoU {c} (%)" for c in ("car", "person", "sign", "pole")}}


def table(agg, step: int | None = None) -> str:
    """Markdown: one row per variant at ``step`` (default: the last step all variants reached)."""
    metrics = [m for m in METRICS if any(agg[v][m] for v in agg)]
    if step is None:
        step = last_common_step(agg)
    head = "| variant | seeds | " + " | ".join(f"{LABELS[m]}" for m in metrics) + " |"
    lines = [f"At step {step} (mean +- std over seeds):", "", head, "|---|---:|" + "---:|" * len(metrics)]
    for v in agg:
        n = agg[v]["miou_ratio"].get(step, (0, 0, 0))[2]
        cells = []
        for m in metrics:
            mean, std, _ = agg[v][m].get(step, (math.nan, math.nan, 0))
            cells.append("-" if math.isnan(mean) else f"{mean:.3f} +- {std:.3f}")
        lines.append(f"| {v} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_step_table(agg, metric: str) -> str:
    steps = sorted({s for v in agg for s in agg[v][metric]})
    lines = [f"{LABELS[metric]}, mean +- std per evaluated step:", "",
             "| variant | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for v in agg:
        cells = [(lambda t: f"{t[0]:.3f} +- {t[1]:.3f}")(agg[v][metric][s]) if s in agg[v][metric] else ""
                 for s in steps]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(agg, runs, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["miou_ratio", "sfid"] + [m for m in ("c2st_loss", "msssim") if any(agg[v][m] for v in agg)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, v in enumerate(agg):
            color = f"C{i}"
            steps = sorted(agg[v][metric])
            if not steps:
                continue
            mean = [agg[v][metric][s][0] for s in steps]
            std = [agg[v][metric][s][1] for s in steps]
            ax.plot(steps, mean, color=color, lw=2, marker="o", ms=3, label=f"{v} (n={len(runs[v])})")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=color, alpha=0.15)
            for rec in runs[v].values():
                ser = run_series(rec)[metric]
                ax.plot(sorted(ser), [ser[s] for s in sorted(ser)], color=color, lw=0.6, alpha=0.5)
        ax.set_xlabel("step")
        ax.set_title(LABELS[metric], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collect(out: Path, variants: list[str], seeds: list[int]) -> dict[str, dict[int, dict[int, dict]]]:
    return {v: {s: rec for s in seeds if (rec := read_metrics(out / v / f"seed{s}"))} for v in variants}


def report(study_name: str, study: Study, out: Path, variants: list[str], seeds: list[int], report_dir: Path) -> str:
    texts = [_report(study_name, study.about, study, out, variants, seeds, report_dir)]
    for group, (title, members) in study.groups.items():
        texts.append(_report(f"{study_name}_{group}", title, study, out, [v for v in members if v in variants],
                             seeds, report_dir))
    return "\n\n".join(texts)


def committed_runs(report_dir: Path, study_name: str) -> dict[str, dict[int, dict[int, dict]]]:
    """The runs an earlier report kept (``<study>_runs.json`` in ``report_dir``), as :func:`collect` returns
    them; nothing if there is none."""
    path = report_dir / f"{study_name}_runs.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return {v: {int(s): {int(rec["step"]): rec for rec in recs} for s, recs in r.items()} for v, r in saved.items()}


def _report(study_name: str, about: str, study: Study, out: Path, variants: list[str], seeds: list[int],
            report_dir: Path) -> str:
    runs = collect(out, variants, seeds)
    kept = committed_runs(report_dir, study_name)
    # a (variant, seed) whose run folder is gone (folders are scratch) keeps the evaluations a report kept of it
    for v, r in kept.items():
        if v in runs:
            for s, rec in r.items():
                if s in seeds and not runs[v].get(s):
                    runs[v][s] = rec
    runs = {v: r for v, r in runs.items() if r}
    if not runs:
        return "(no finished evaluations yet)"
    agg = aggregate(runs)
    png = plot(agg, runs, report_dir / f"{study_name}.png", f"{study_name}: {about}".strip(": "))
    text = "\n\n".join([
        f"# Study `{study_name}`: {about}",
        f"Command: `python benchmarks/ablation.py --study {study_name} --seeds {' '.join(map(str, seeds))}` "
        f"({study.iters} steps per run, evaluated every {study.eval_every}; synthetic preset, one process and "
        f"one thread per run). Shared overrides: `{' '.join(study.base) or '-'}`.",
        "Variants: " + "; ".join(f"`{v}`: `{' '.join(study.variants.get(v, [])) or '-'}`" for v in runs),
        table(agg, step=study.iters),
        *([table(agg)] if last_common_step(agg) not in (study.iters, 0) else []),
        per_step_table(agg, "miou_ratio"), per_step_table(agg, "sfid"),
        *[per_step_table(agg, m) for m in ("c2st_loss", "msssim") if any(agg[v][m] for v in agg)],
        f"Plot: `{png.name}`",
    ])
    (report_dir / f"{study_name}.md").write_text(text + "\n")
    (report_dir / f"{study_name}.json").write_text(json.dumps(
        {v: {m: {str(s): list(t) for s, t in d.items()} for m, d in agg[v].items()} for v in agg}, indent=1))
    # every run's evaluations as they were: the run folders are scratch, this is what a later seed is added to
    # (and those an earlier report kept that this one does not use: other variants or seeds)
    every = {v: dict(r) for v, r in kept.items()}
    for v, r in runs.items():
        every.setdefault(v, {}).update(r)
    (report_dir / f"{study_name}_runs.json").write_text(json.dumps(
        {v: {str(s): [rec[k] for k in sorted(rec)] for s, rec in sorted(r.items())} for v, r in every.items()}))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, help=f"one of {', '.join(STUDIES)}, or a new name with --variant")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME="k=v ..."',
                    help="an ad-hoc variant (added to the study's); NAME= for no overrides")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these variants")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iters", type=int, default=None, help="steps per run (default: the study's)")
    ap.add_argument("--eval-every", type=int, default=None, help="evaluation interval (default: the study's)")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time (default 2: one per core)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="runs go to OUT/STUDY/VARIANT/seedS")
    ap.add_argument("--report-dir", default=str(ROOT / "docs" / "results"), help="table and plot go here")
    ap.add_argument("--report-only", action="store_true", help="train nothing; tabulate and plot what exists")
    ap.add_argument("--fresh", action="store_true", help="delete the study's runs first")
    args = ap.parse_args(argv)

    study = STUDIES.get(args.study, Study(variants={}))
    for item in args.variant:
        name, _, rest = item.partition("=")
        study.variants[name.strip()] = rest.split()
    if not study.variants:
        raise SystemExit(f"study {args.study!r} is not defined; add variants with --variant NAME=\"k=v ...\"")
    study.iters = args.iters or study.iters
    study.eval_every = args.eval_every or study.eval_every
    variants = [v for v in study.variants if args.only is None or v in args.only]
    out = Path(args.out) / args.study
    if args.fresh and out.exists():
        shutil.rmtree(out)

    if not args.report_only:
        jobs = []
        for seed in args.seeds:  # seed-major: the first seeds of every variant finish first
            for v in variants:
                run_dir = out / v / f"seed{seed}"
                state = run_state(run_dir, study.iters)
                if state == "done":
                    print(f"[ablation] {run_dir}: finished, skipped", file=sys.stderr)
                    continue
                if state == "new" and run_dir.exists():
                    shutil.rmtree(run_dir)  # a start that never reached a checkpoint
                overrides = run_overrides(study, study.variants[v], study.eval_every)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "run.json").write_text(json.dumps({"study": args.study, "variant": v, "seed": seed,
                                                              "iters": study.iters, "overrides": overrides}, indent=1))
                jobs.append((run_dir, train_command(run_dir, overrides, seed, study.iters, state == "resume")))
        rcs = run_all(jobs, args.parallel)
        failed = [str(d) for d, rc in rcs.items() if rc != 0]
        if failed:
            print(f"[ablation] failed runs (see their train.log): {', '.join(failed)}", file=sys.stderr)
    print(report(args.study, study, out, variants, args.seeds, Path(args.report_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
