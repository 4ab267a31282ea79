"""Does `make demo`'s verdict depend on the step at which the host's speed makes it stop?

`make demo` trains the synthetic preset until a deadline, so a slower host stops earlier and a faster
one later. The preset's learning-rate decay is fixed by the fraction of the run (time or steps), so a
demo that reaches step N on its host follows the trajectory of ``usis train --preset synthetic --iters N``
with the time budget off. This script trains the preset (as the demo does: same processes, same
threads) to several stopping steps, evaluates each end exactly as the demo does, and writes a table of
the two ratios against the demo's bars and a plot.

    python benchmarks/demo_stability.py --steps 1500 2250 3000            # runs/demo_stability/stop_N
    python benchmarks/demo_stability.py --steps 1500 2250 3000 --set train.lr_decay_from=0.6
    python benchmarks/demo_stability.py --seed-curves RUN_SEED0 RUN_SEED1 RUN_SEED2 --name seeds

``--seed-curves``: runs of the preset as the demo trains it, each evaluated every 250 steps (``usis train
--preset synthetic --seed S --iters 3000 --set train.max_seconds=0 --set train.eval_every=250``; an
evaluation does not change the trajectory, so each point is what a demo stopped there prints): a table of
both ratios per seed and stop, with mean +- std and the verdicts, and a plot.

Resumable: a run that already has its final evaluation is skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import ROOT, read_metrics, run_all  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from usis.demo import MIOU_BAR, SFID_BAR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[1500, 2250, 3000])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="k=v")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "demo_stability"))
    ap.add_argument("--name", default="", help="a label for this configuration (folder and report names)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses the preset's processes)")
    ap.add_argument("--report-dir", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--curve", action="append", default=[], metavar="LABEL=RUN_DIR",
                    help="also draw a run evaluated at many steps (e.g. the preset without decay, eval_every=250)")
    ap.add_argument("--seed-curves", nargs="+", default=[], metavar="RUN_DIR",
                    help="summarise densely evaluated runs of several seeds (no training)")
    ap.add_argument("--from-step", type=int, default=1500, help="--seed-curves: the first stop shown")
    args = ap.parse_args(argv)
    name = args.name or "default"
    if args.seed_curves:
        return seed_curves([Path(d) for d in args.seed_curves], name, Path(args.report_dir), args.from_step)
    out = Path(args.out) / name
    jobs = []
    for n in args.steps:
        run_dir = out / f"stop_{n}"
        if n in read_metrics(run_dir):
            print(f"[stability] {run_dir}: finished, skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, "-m", "usis.cli", "train", "--out", str(run_dir), "--iters", str(n), "--no-progress"]
        if (run_dir / "checkpoints" / "latest.pt").exists():
            cmd += ["--resume"]
        else:
            cmd += ["--preset", "synthetic", "--seed", str(args.seed), "--set", "train.max_seconds=0"]
            for o in args.overrides:
                cmd += ["--set", o]
        jobs.append((run_dir, cmd))
    run_all(jobs, args.parallel)

    rows = []
    for n in args.steps:
        rec = read_metrics(out / f"stop_{n}")
        if 0 in rec and n in rec:
            first, last = rec[0], rec[n]
            rows.append((n, last["miou"] / last["miou_ceiling"], last["sfid"] / first["sfid"]))
    lines = [f"`{name}`: `usis train --preset synthetic --iters N --seed {args.seed} --set train.max_seconds=0"
             + "".join(f" --set {o}" for o in args.overrides) + "`", "",
             "| stop step | mIoU / ceiling | sFID end / start | verdict |", "|---:|---:|---:|---|"]
    for n, m, s in rows:
        ok = m >= MIOU_BAR and s <= SFID_BAR
        lines.append(f"| {n} | {m:.3f} | {s:.3f} | {'both bars met' if ok else 'NOT met'} |")
    text = "\n".join(lines)
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"demo_stability_{name}.md").write_text(text + "\n")
    if rows:
        series = []
        for item in args.curve:
            label, _, run_dir = item.partition("=")
            rec = read_metrics(Path(run_dir))
            if 0 in rec:
                pts = [(k, v["miou"] / v["miou_ceiling"], v["sfid"] / rec[0]["sfid"]) for k, v in sorted(rec.items()) if k]
                series.append((label, pts, {"color": "grey", "marker": ".", "lw": 1}))
        series.append((f"{name}: the end of a run stopped there", rows, {"marker": "o"}))
        _plot(series, f"make demo's end vs its stopping step ({name})", report_dir / f"demo_stability_{name}.png")
    print(text)
    return 0


def _plot(series: list[tuple[str, list[tuple[int, float, float]], dict]], title: str, path: Path) -> None:
    """Both ratios against the stopping step, one line per (label, [(step, miou ratio, sfid ratio)], style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, idx, bar, sub in ((axes[0], 1, MIOU_BAR, "mIoU / ceiling (bar: >=)"),
                              (axes[1], 2, SFID_BAR, "sFID end / start (bar: <=)")):
        for label, pts, style in series:
            ax.plot([p[0] for p in pts], [p[idx] for p in pts], label=label, **{"lw": 1, **style})
        ax.axhline(bar, color="red", ls="--", lw=1)
        ax.set_xlabel("step at which the demo stops")
        ax.set_title(sub, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_curves(run_dirs: list[Path], name: str, report_dir: Path, from_step: int) -> int:
    """Both ratios at every evaluated stop from ``from_step`` on, per run (seed), mean +- std, verdicts."""
    import statistics

    per_run = {}
    for d in run_dirs:
        rec = read_metrics(d)
        if 0 not in rec:
            print(f"[stability] {d}: no step-0 evaluation, skipped", file=sys.stderr)
            continue
        per_run[d.name] = {k: (v["miou"] / v["miou_ceiling"], v["sfid"] / rec[0]["sfid"])
                           for k, v in sorted(rec.items()) if k >= from_step}
    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    steps = sorted(set.intersection(*(set(v) for v in per_run.values()))) if per_run else []
    header = "| stop step | " + " | ".join(f"{r} mIoU/ceil, sFID ratio" for r in per_run) + \
        " | mean mIoU / ceiling | mean sFID ratio | all seeds meet both bars |"
    lines = [header, "|---:|" + "---:|" * (len(per_run) + 2) + "---|"]
    for k in steps:
        vals = [per_run[r][k] for r in per_run]
        m = [v[0] for v in vals]
        f = [v[1] for v in vals]
        ok = all(a >= MIOU_BAR and b <= SFID_BAR for a, b in vals)
        cells = " | ".join(f"{a:.3f}, {b:.3f}" for a, b in vals)
        lines.append(f"| {k} | {cells} | {statistics.mean(m):.3f} +- {sd(m):.3f} | {statistics.mean(f):.3f} +- "
                     f"{sd(f):.3f} | {'yes' if ok else 'no'} |")
    text = "\n".join(lines)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"demo_stability_{name}.md").write_text(text + "\n")
    series = [(r, [(k, *pts[k]) for k in steps], {"marker": "."}) for r, pts in per_run.items()]
    _plot(series, f"make demo's end vs its stopping step, {len(per_run)} seeds ({name})",
          report_dir / f"demo_stability_{name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
