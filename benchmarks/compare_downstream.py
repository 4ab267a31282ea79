"""One table and one plot of the downstream study's USIS-only row across several generators' sets.

``benchmarks/downstream.py --rows oracle,usis_seeds`` scores one set of generators (a seed each) per call and
writes ``NAME.json``; this puts such reports side by side: a row per report (its label), the segmenter's mIoU on
real test photos (mean +- std over the generators' seeds), its ratio to the oracle row of the same report, and
IoU per class; and a plot of both. Used by issue 32 (K labelled photos) and issue 31 (training length).

    python benchmarks/compare_downstream.py K=0=runs/downstream/reports/labelled_k0.json \\
        K=10=runs/downstream/reports/labelled_k10.json --out docs/results/labelled_downstream
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROW = "usis_seeds"


def load(spec: str) -> tuple[str, dict]:
    """``LABEL=PATH`` (the last ``=`` splits) -> the label and the report's rows."""
    label, sep, path = spec.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"{spec!r}: give LABEL=REPORT.json")
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a report of benchmarks/downstream.py ({e})") from None
    if ROW not in rows or "oracle" not in rows:
        raise SystemExit(f"{path}: has no {ROW} and oracle rows; run downstream.py with --rows oracle,{ROW}")
    return label, rows


def table(reports: list[tuple[str, dict]]) -> str:
    classes = list(reports[0][1][ROW]["iou"])
    head = ["generators", "seeds", "mIoU (%)", "/ oracle", *classes]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, rows in reports:
        u, o = rows[ROW], rows["oracle"]
        cells = [label, str(u["n"]), f"{u['miou'][0]:.1f} +- {u['miou'][1]:.1f}", f"{u['miou'][0] / o['miou'][0]:.3f}",
                 *(f"{u['iou'][c][0]:.0f} +- {u['iou'][c][1]:.0f}" for c in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    oracle = reports[0][1]["oracle"]
    lines.append(f"| oracle (real photos, true labels) | {oracle['n']} | {oracle['miou'][0]:.1f} +- "
                 f"{oracle['miou'][1]:.1f} | 1.000 | " + " | ".join(f"{oracle['iou'][c][0]:.0f}" for c in classes) + " |")
    return "\n".join(lines)


def plot(reports: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib  # lazy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    classes = list(reports[0][1][ROW]["iou"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 2.4]})
    x = range(len(reports))
    a.errorbar(x, [r[ROW]["miou"][0] for _, r in reports], yerr=[r[ROW]["miou"][1] for _, r in reports],
               marker="o", capsize=4)
    labels = [label for label, _ in reports]
    long = max(len(label) for label in labels) > 6  # slanted, so that long names do not run into each other
    a.set_xticks(list(x), labels, rotation=30 if long else 0, ha="right" if long else "center")
    a.set_ylabel("mIoU on real photos (%)")
    a.set_title("segmenter trained on USIS images")
    a.grid(alpha=0.3)
    width = 0.8 / len(reports)
    for i, (label, rows) in enumerate(reports):
        b.bar([c + i * width for c in range(len(classes))], [rows[ROW]["iou"][k][0] for k in classes], width,
              yerr=[rows[ROW]["iou"][k][1] for k in classes], label=label, capsize=2)
    b.set_xticks([c + 0.4 - width / 2 for c in range(len(classes))], classes)
    b.set_ylabel("IoU (%)")
    b.set_title("per class")
    b.legend(fontsize=8)
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", metavar="LABEL=REPORT.json")
    ap.add_argument("--out", required=True, help="writes OUT.md (the table) and OUT.png (the plot)")
    args = ap.parse_args(argv)
    reports = [load(s) for s in args.reports]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = table(reports)
    out.with_suffix(".md").write_text(
        "Command: `python benchmarks/compare_downstream.py " + " ".join(args.reports) + f" --out {args.out}`\n\n"
        + text + f"\n\nPlot: `{out.with_suffix('.png').name}`\n")
    plot(reports, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
