#!/usr/bin/env bash
# Place checkouts of the peers' official code in benchmarks/peers/ (git-ignored), at the commits the benchmark was
# written against, for benchmarks/peers.py, which runs their own train.py and test.py from there. Nothing of them
# is copied into our tree.
#
#   CUT and FastCUT: taesungp/contrastive-unpaired-translation (BSD-style licence, see its LICENSE)
#   CycleGAN:        junyanz/pytorch-CycleGAN-and-pix2pix (BSD-style licence, see its LICENSE)
#
#   bash benchmarks/get_peers.sh                               # clone both from GitHub
#   bash benchmarks/get_peers.sh CUT_SRC [CYCLEGAN_SRC]        # or from local clones / bare mirrors
#
# Their code also needs the `dominate` package (pip install dominate), which usis does not.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p peers
fetch() {  # fetch NAME SOURCE REVISION
  local name=$1 src=$2 rev=$3
  if [ -d "peers/$name/.git" ]; then
    echo "benchmarks/peers/$name exists ($(git -C "peers/$name" rev-parse --short HEAD)); remove it to re-clone" >&2
    return 0
  fi
  git clone --quiet "$src" "peers/$name"
  git -C "peers/$name" -c advice.detachedHead=false checkout --quiet "$rev"
  echo "benchmarks/peers/$name at $(git -C "peers/$name" rev-parse --short HEAD)"
}
fetch cut "${1:-https://github.com/taesungp/contrastive-unpaired-translation.git}" \
  b3ac297708dfb6f7589d04662277e53c0d579c27  # "Updated the download URL", the newest commit when written
fetch cyclegan "${2:-https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix.git}" \
  b62183747c14b1242286037871e5621544e27fb1 \
  || echo "could not fetch CycleGAN's code; CUT's checkout has the same authors' CycleGAN model (peers.py --methods cyclegan_cut)" >&2
