#!/usr/bin/env bash
# Synthetic-preset tuning on a GPU machine: eleven configurations side by side for a few minutes each
# (many more steps than a CPU demo gets), to see where each one goes. Usage:
#   USIS_CACHE=<folder with the cached synthetic evaluator> bash benchmarks/gpu_sweep.sh OUT SECONDS
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/sweep}; secs=${2:-270}
export PYTHONPATH=src
python3 benchmarks/sweep.py --out "$out" --iters 50000 --max-seconds "$secs" \
  --set train.eval_every=500 --set train.sample_every=1000 --set train.ckpt_every=100000 \
  --set train.num_threads=1 --set data.num_workers=1 \
  --run base= \
  --run base_s1="train.seed=1" \
  --run bigG="model.g_ch=16 model.spade_hidden=32" \
  --run bigD="model.d_ch=32 model.d_max_ch=128 model.dec_ch=64" \
  --run bigS="model.s_ch=32" \
  --run big="model.g_ch=16 model.spade_hidden=32 model.d_ch=32 model.d_max_ch=128 model.dec_ch=64 model.s_ch=32" \
  --run ls2="train.lambda_seg=2" \
  --run b8="train.batch_size=8" \
  --run patch="model.d_type=patch" \
  --run pn4="model.pixel_noise=4" \
  --run pn4big="model.pixel_noise=4 model.g_ch=16 model.spade_hidden=32 model.s_ch=32"
