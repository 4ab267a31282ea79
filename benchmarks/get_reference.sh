#!/usr/bin/env bash
# Place a checkout of the reference implementation (GeorgeEskandar/USIS-Unsupervised-Semantic-Image-Synthesis,
# AGPL-3.0) in benchmarks/reference/ (git-ignored), at the commit the benchmarks were written against, for
# benchmarks/reference_step.py and benchmarks/reference_wavelet_g.py. Nothing of it is copied into our tree:
# the scripts import it from there at run time.
#
#   bash benchmarks/get_reference.sh                      # clone from GitHub
#   bash benchmarks/get_reference.sh /path/to/mirror.git  # or from a local clone / bare mirror
#
# A machine without network (the GPU device) gets the folder with the working tree: it is ignored by git,
# so name it in the device tool's `carry` (["benchmarks/reference"]).
set -euo pipefail
cd "$(dirname "$0")"
SRC=${1:-https://github.com/GeorgeEskandar/USIS-Unsupervised-Semantic-Image-Synthesis.git}
REV=c01426726db2a1a9fdfdf06e971f5f0821ab234b  # "Update README.md", the newest commit when written
if [ -d reference/.git ]; then
  echo "benchmarks/reference exists ($(git -C reference rev-parse --short HEAD)); remove it to re-clone" >&2
  exit 0
fi
git clone --quiet "$SRC" reference
git -C reference -c advice.detachedHead=false checkout --quiet "$REV"
echo "benchmarks/reference at $(git -C reference rev-parse --short HEAD)"
