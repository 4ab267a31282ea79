"""Does `make demo`'s verdict depend on the step at which the host's speed makes it stop?

`make demo` trains the synthetic preset until a deadline, so a slower host stops earlier and a faster
one later. The preset's learning-rate decay is fixed by the fraction of the run (time or steps), so a
demo that reaches step N on its host follows the trajectory of ``usis train --preset synthetic --iters N``
with the time budget off. This script trains the preset (as the demo does: same processes, same
threads) to several stopping steps, evaluates each end exactly as the demo does, and writes a table of
the two ratios against the demo's bars and a plot.

    python benchmarks/demo_stability.py --steps 1500 2250 3000            # runs/demo_stability/stop_N
    python benchmarks/demo_stability.py --steps 1500 2250 3000 --set train.lr_decay_from=0.6

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
    args = ap.parse_args(argv)
    name = args.name or "default"
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        steps = [r[0] for r in rows]
        curves = []
        for item in args.curve:
            label, _, run_dir = item.partition("=")
            rec = read_metrics(Path(run_dir))
            if 0 in rec:
                pts = [(k, v["miou"] / v["miou_ceiling"], v["sfid"] / rec[0]["sfid"]) for k, v in sorted(rec.items()) if k]
                curves.append((label, pts))
        for ax, idx, bar, title in ((axes[0], 1, MIOU_BAR, "mIoU / ceiling (bar: >=)"),
                                    (axes[1], 2, SFID_BAR, "sFID end / start (bar: <=)")):
            for label, pts in curves:
                ax.plot([p[0] for p in pts], [p[idx] for p in pts], ".-", color="grey", lw=1, label=label)
            ax.plot(steps, [r[idx] for r in rows], "o-", label=f"{name}: the end of a run stopped there")
            ax.axhline(bar, color="red", ls="--", lw=1)
            ax.set_xlabel("step at which the demo stops")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"make demo's end vs its stopping step ({name})", fontsize=10)
        fig.tight_layout()
        fig.savefig(report_dir / f"demo_stability_{name}.png", dpi=110)
        plt.close(fig)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
