"""Run several training configurations side by side and tabulate their periodic evaluations.

For tuning a preset (the synthetic demo above all): each run is ``usis train`` with its own overrides,
in its own process, all in parallel; at the end one JSON summary and a table of mIoU / sFID per
evaluation step are written.

    python benchmarks/sweep.py --out runs/sweep --iters 4000 --max-seconds 300 \\
        --run base= --run bigG="model.g_ch=16 model.spade_hidden=32" --set train.eval_every=500

On a GPU machine many small runs share the device well (each is launch-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def parse_run(text: str) -> tuple[str, list[str]]:
    if "=" not in text:
        raise SystemExit(f"--run {text!r}: expected NAME=\"key=value key=value\" (NAME= for no overrides)")
    name, rest = text.split("=", 1)
    return name.strip(), rest.split()


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder; each run writes OUT/NAME")
    ap.add_argument("--preset", default="synthetic")
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--max-seconds", type=float, default=0.0, help="wall-time budget per run (0: none)")
    ap.add_argument("--run", action="append", default=[], metavar='NAME="k=v ..."', help="one configuration")
    ap.add_argument("--set", action="append", default=[], metavar="k=v", help="overrides for every run")
    ap.add_argument("--parallel", type=int, default=0, help="runs at a time (0: all)")
    args = ap.parse_args(argv)
    if not args.run:
        raise SystemExit("name at least one --run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [parse_run(r) for r in args.run]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    pending = list(runs)
    active: list[tuple[str, subprocess.Popen, float]] = []
    wall: dict[str, float] = {}
    rcs: dict[str, int] = {}
    limit = args.parallel or len(runs)
    while pending or active:
        while pending and len(active) < limit:
            name, sets = pending.pop(0)
            cmd = [sys.executable, "-m", "usis.cli", "train", "--preset", args.preset, "--out", str(out / name),
                   "--iters", str(args.iters), "--set", f"train.max_seconds={args.max_seconds}"]
            for s in args.set + sets:
                cmd += ["--set", s]
            log = open(out / f"{name}.log", "w")
            active.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                           time.time()))
            print("started", name, " ".join(args.set + sets), flush=True)
        time.sleep(2)
        for item in list(active):
            name, proc, t0 = item
            if proc.poll() is not None:
                active.remove(item)
                wall[name] = time.time() - t0
                rcs[name] = proc.returncode
                print(f"finished {name} rc={proc.returncode} in {wall[name]:.0f} s", flush=True)

    summary = {}
    for name, sets in runs:
        recs = read_metrics(out / name / "metrics.jsonl")
        summary[name] = {"overrides": sets, "rc": rcs.get(name), "wall_s": wall.get(name), "evals": recs}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, info in summary.items():
        cells = []
        for r in info["evals"]:
            ratio = r["miou"] / r["miou_ceiling"] if r.get("miou") is not None and r.get("miou_ceiling") else float("nan")
            cells.append(f"{r['step']}:{ratio:.2f}/{r.get('sfid', float('nan')):.2f}")
        print(f"{name:12s} rc={info['rc']} " + " ".join(cells))
    return 0 if all(rc == 0 for rc in rcs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
