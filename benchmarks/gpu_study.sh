#!/usr/bin/env bash
# A study's runs on a GPU machine, side by side until a deadline; metrics, logs and sample grids (no
# checkpoints) packed into OUT/study.tar.gz. Usage (the synthetic evaluator cached in USIS_CACHE):
#   USIS_CACHE=runs/gpu_cache bash benchmarks/gpu_study.sh OUT SECONDS PARALLEL [ablation.py arguments]
# e.g. ... OUT 500 9 --study paper --seeds 0. Runs still going at the deadline get SIGTERM (they save and
# stop); their evaluations so far are kept.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1; secs=$2; parallel=$3; shift 3
export PYTHONPATH=src PYTHONUNBUFFERED=1
runs=/tmp/gpu_study
mkdir -p "$out" "$runs"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
python3 benchmarks/ablation.py "$@" --parallel "$parallel" --out "$runs" --report-dir /tmp/gpu_report \
  > "$out/ablation.log" 2>&1 &
pid=$!
( sleep "$secs"; echo "deadline: stopping the runs still going" >> "$out/ablation.log";
  pkill -TERM -P "$pid" ) &  # ablation.py's own runs only
killer=$!
start=$(date +%s)
wait $pid
echo "ablation.py ended after $(( $(date +%s) - start )) s"
kill $killer 2>/dev/null
tar czf "$out/study.tar.gz" -C "$runs" --exclude='*.pt' --exclude='*.tmp' --exclude='events.out*' .
ls -la "$out"
tail -5 "$out/ablation.log"
