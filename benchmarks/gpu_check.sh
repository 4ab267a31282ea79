#!/usr/bin/env bash
# One short GPU check (< 4 min): CUDA smoke tests + the training-step benchmark at the paper config, for
# the SPADE generator and the wavelet generator (the reference's run-script width, ch 16).
# On the device machine PyTorch is preinstalled:  bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -x tests/test_cuda.py tests/test_networks.py tests/test_losses.py tests/test_wavelets.py \
  tests/test_wavelet_generator.py -k "not trained and not info" -p no:cacheprovider 2>&1 | tail -4
for b in 8 1; do
  python3 benchmarks/train_step.py --preset cityscapes --batch $b --iters 8 --json
  python3 benchmarks/train_step.py --preset cityscapes --batch $b --iters 8 --set model.g_type=wavelet \
    --set model.g_ch=16 --json
done
python3 benchmarks/train_step.py --preset synthetic --iters 20 --json
