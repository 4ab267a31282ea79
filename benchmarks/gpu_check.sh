#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes on an H100 / H200 (compile warm-up included):
#   1. the CUDA smoke tests (tests/test_cuda.py and the network, loss and wavelet tests; ~20-30 s);
#   2. the speed matrix at Cityscapes (256x512, 35 classes): for the SPADE generator (the default, ch 64) and
#      the wavelet generator (model.g_type=wavelet, g_ch=16), at batch 8 and then at batch 1, in this order:
#        reference  the reference implementation (benchmarks/reference_step.py; needs benchmarks/reference/,
#                   see benchmarks/get_reference.sh; without it a one-line note)
#        eager      ours, fp32 NCHW eager (FLOPs counted here, once per generator and batch)
#        cl         + train.channels_last
#        bf16       + train.amp (bf16 autocast), with channels_last
#        compile    + train.compile, with channels_last and bf16
#      The rows after "eager" get its FLOP count through --gflop-per-iter, so every row has its MFU.
#   3. the synthetic preset, if time is left.
# Each configuration prints ONE JSON line to stdout (train_step.py's / reference_step.py's fields plus
# "config", "rc" and "wall_s"; a failed, timed-out or skipped one says so in "error" / "skipped"), also
# appended to $OUT/gpu_check.jsonl when $OUT is set; everything the commands print on stderr goes to
# $OUT/gpu_check.log (else /tmp/gpu_check.log).
#
# Every command runs under `timeout`; a total budget (GPU_CHECK_BUDGET seconds from the start, default
# 450) is kept by skipping the rows that no longer fit (each needs its MIN seconds left), so one hanging
# configuration cannot eat the call. Batch-8 rows come first: they are the ones the acceptance reads.
#
# On the device machine (PyTorch preinstalled; the reference checkout carried with the tree):
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/reference"], timeout_s=560)
# Knobs: GPU_CHECK_BUDGET, ITERS8 (timed iterations at batch 8, default 8), ITERS1 (batch 1, default 16),
# PY (default python3), DRY_RUN=1 (print the commands as JSON lines, run nothing; works on a CPU),
# ONLY=REGEX (run only the rows whose config name matches, e.g. ONLY='compile' or ONLY='b8 (eager|bf16)';
# the eager row of a generator and batch is then not run, so the rows count their own FLOPs).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
ITERS8=${ITERS8:-8}
ITERS1=${ITERS1:-16}
DRY=${DRY_RUN:-0}
ONLY=${ONLY:-}
JSONL=${OUT:+$OUT/gpu_check.jsonl}
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-/tmp/gpu_check.log}
: > "$LOG"
[ -n "$JSONL" ] && : > "$JSONL"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
SECONDS=0

emit() {  # one JSON line to stdout and to $OUT/gpu_check.jsonl
  printf '%s\n' "$1"
  [ -n "$JSONL" ] && printf '%s\n' "$1" >> "$JSONL"
  return 0
}

wanted() {  # is row NAME selected by $ONLY (an extended regular expression; empty: every row)?
  [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]
}

# merge NAME RC WALL STDOUT STDERR [extra JSON object]: the command's last JSON line plus the row's fields
merge() {
  "$PY" - "$@" <<'EOF'
import json, sys
name, rc, wall, out, err = sys.argv[1:6]
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
row = None
for line in reversed(open(out, errors="replace").read().splitlines()):
    if line.startswith("{"):
        try:
            row = json.loads(line)
            break
        except ValueError:
            pass
rc = int(rc)
head = {"config": name, "rc": rc, "wall_s": float(wall), **extra}
if row is None:
    tail = open(err, errors="replace").read()[-400:].strip().replace("\n", " | ")
    head["error"] = "timeout" if rc in (124, 137) else ("no JSON line" if rc == 0 else "failed")
    head["stderr_tail"] = tail
    row = {}
print(json.dumps({**head, **row}))
EOF
}

# row NAME TIMEOUT MIN COMMAND...: run COMMAND under min(TIMEOUT, budget left), if at least MIN seconds are left
row() {
  local name=$1 limit=$2 min=$3
  shift 3
  local left=$(( BUDGET - SECONDS ))
  wanted "$name" || return 0
  if [ "$DRY" = 1 ]; then
    emit "$("$PY" -c 'import json,sys; print(json.dumps({"config": sys.argv[1], "dry_run": True, "timeout_s": int(sys.argv[2]), "cmd": " ".join(sys.argv[3:])}))' "$name" "$limit" "$@")"
    return 0
  fi
  if [ "$left" -lt "$min" ]; then
    emit "{\"config\": \"$name\", \"skipped\": \"budget: ${left} s left of ${BUDGET}, needs ${min}\"}"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (timeout $limit s): $*" >> "$LOG"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$TMP/out" 2> "$TMP/err"
  local rc=$?
  cat "$TMP/err" >> "$LOG"
  LAST=$(merge "$name" "$rc" "$(( SECONDS - t0 ))" "$TMP/out" "$TMP/err")
  emit "$LAST"
}

# gflop LINE: the gflop_per_iter of a row's JSON line (empty if none)
gflop() {
  printf '%s' "$1" | "$PY" -c 'import json,sys
try:
    v = json.loads(sys.stdin.read()).get("gflop_per_iter")
except ValueError:
    v = None
print("" if v is None else v)'
}

# ---------------------------------------------------------------------------------------------- environment
if [ "$DRY" != 1 ]; then
  env_line=$(timeout 60 "$PY" -c 'import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({"config": "environment", "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if cuda else None,
                  "cudnn": torch.backends.cudnn.version() if cuda else None}))' 2>> "$LOG")
  [ -n "$env_line" ] || env_line='{"config": "environment", "error": "torch did not import"}'
  emit "$env_line"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || true)
[ -n "$commit" ] && emit "{\"config\": \"commit\", \"commit\": \"$commit\"}"

# ---------------------------------------------------------------------------------------------- CUDA tests
if [ "$DRY" = 1 ] || ! wanted "cuda tests"; then
  row "cuda tests" 150 60 "$PY" -m pytest -q -x tests/test_cuda.py tests/test_networks.py tests/test_losses.py \
    tests/test_wavelets.py tests/test_wavelet_generator.py -k "not trained and not info" -p no:cacheprovider
else
  t0=$SECONDS
  timeout -k 10 150 "$PY" -m pytest -q -x tests/test_cuda.py tests/test_networks.py tests/test_losses.py \
    tests/test_wavelets.py tests/test_wavelet_generator.py -k "not trained and not info" -p no:cacheprovider \
    > "$TMP/pytest" 2>&1
  rc=$?
  cat "$TMP/pytest" >> "$LOG"
  tail -4 "$TMP/pytest" >&2
  summary=$(grep -E '(passed|failed|error)' "$TMP/pytest" | tail -1 | tr -d '"=' | sed 's/^ *//; s/ *$//')
  emit "{\"config\": \"cuda tests\", \"rc\": $rc, \"wall_s\": $(( SECONDS - t0 )), \"summary\": \"$summary\"}"
fi

# ---------------------------------------------------------------------------------------------- speed matrix
TS=(benchmarks/train_step.py --preset cityscapes --json)
CL=(--set train.channels_last=true)
BF=(--set train.channels_last=true --set train.amp=true)
CO=(--set train.channels_last=true --set train.amp=true --set train.compile=true)
have_ref=0
[ -f benchmarks/reference/models/models.py ] && have_ref=1

for b in 8 1; do
  if [ "$b" = 8 ]; then iters=$ITERS8; t_run=120; t_min=40; t_comp=240; t_comp_min=90
  else iters=$ITERS1; t_run=75; t_min=25; t_comp=180; t_comp_min=60; fi
  for g in spade wavelet; do
    if [ "$g" = spade ]; then G=(); REF=(--netG default --channels-G 64)
    else G=(--set model.g_type=wavelet --set model.g_ch=16); REF=(--netG wavelet --channels-G 16); fi
    tag="$g b$b"
    if [ "$have_ref" = 1 ]; then
      row "$tag reference" "$t_run" "$t_min" "$PY" benchmarks/reference_step.py --batch "$b" --iters "$iters" \
        "${REF[@]}"
    elif wanted "$tag reference"; then
      emit "{\"config\": \"$tag reference\", \"skipped\": \"no benchmarks/reference checkout (bash benchmarks/get_reference.sh; carry it)\"}"
    fi
    LAST=
    row "$tag eager" "$t_run" "$t_min" "$PY" "${TS[@]}" --batch "$b" --iters "$iters" "${G[@]}"
    gf=
    [ "$DRY" = 1 ] || [ -z "$LAST" ] || gf=$(gflop "$LAST")
    FL=()  # no count from the eager row (failed, skipped): the row counts for itself
    [ -n "$gf" ] && FL=(--gflop-per-iter "$gf")
    row "$tag cl" "$t_run" "$t_min" "$PY" "${TS[@]}" --batch "$b" --iters "$iters" "${G[@]}" "${CL[@]}" "${FL[@]}"
    row "$tag bf16" "$t_run" "$t_min" "$PY" "${TS[@]}" --batch "$b" --iters "$iters" "${G[@]}" "${BF[@]}" "${FL[@]}"
    row "$tag compile" "$t_comp" "$t_comp_min" "$PY" "${TS[@]}" --batch "$b" --iters "$iters" "${G[@]}" \
      "${CO[@]}" "${FL[@]}"
  done
done

row "synthetic eager" 60 30 "$PY" benchmarks/train_step.py --preset synthetic --iters 20 --json
echo "gpu_check.sh: done in ${SECONDS} s (budget ${BUDGET} s)${JSONL:+; lines in $JSONL}; stderr in $LOG" >&2
