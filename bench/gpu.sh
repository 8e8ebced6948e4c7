#!/usr/bin/env bash
# The GPU suite (issue 11, item 6): on a CUDA machine, the `gpu` pytest tests and the GPU
# benches in under 8 minutes, then ONE table of figures beside the issue's targets
# (bench/gpu_table.py). Random weights everywhere (speed does not depend on them), no network.
#
#   bash bench/gpu.sh            # CUDA: ViTPose-H bf16 batch 32/64/128 flip on/off, refine end
#                                # to end with the model, Config E G and train step per stage,
#                                # the anonymiser (Config E 288x160 bf16, 1/8/32 persons)
#   bash bench/gpu.sh --smoke    # the same parts on the CPU at tiny sizes, one iteration each:
#                                # proves every part runs end to end (no verdicts)
#
# Python: $PYTHON, else .venv/bin/python (scripts/setup.sh), else python3. Results land in
# $GPU_SUITE_OUT, else $OUT (the device tool's folder), else a fresh temporary folder:
# results.jsonl, pytest.xml, refine_util.csv, logs.txt (every part's output), table.md.
# Each part has its own `timeout`, cut to what is left of the 470 s budget, so the whole run
# ends inside 8 minutes; a part that times out shows as FAIL and the rest still run.
# Exit status: 0 when every part finished (a target missed is a FAIL row, not an exit code),
# 1 when a part failed or timed out, 2 when a module is missing or, without --smoke, there is
# no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--smoke]" >&2; exit 2 ;;
esac
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# What the suite imports. The device machine's image lacks some (its KINDS.md list; no network
# there): wheels carried in .whl/ go into a scratch site first. Fetch them on a machine with
# PyPI, for the device's Python (3.12 there), e.g.:
#   pip download -d .whl --only-binary :all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     webdataset pycocotools trimesh open_clip_torch av
# and leave them in .whl/ (untracked files travel to the device machine; 64 MiB in all).
NEED="torch torchvision transformers safetensors timm open_clip pyarrow pandas scipy PIL rich
  webdataset pycocotools trimesh av matplotlib pytest"
missing() {
  # shellcheck disable=SC2086
  "$PY" -c 'import importlib.util as u, sys
print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' $NEED
}
MISSING=$(missing)
if [ -n "$MISSING" ] && compgen -G ".whl/*.whl" >/dev/null; then
  echo "bench/gpu.sh: installing the carried wheels in .whl/ for: $MISSING"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-suite-site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/gpu-suite-site"
  MISSING=$(missing)
fi
if [ -n "$MISSING" ]; then
  echo "bench/gpu.sh: $PY cannot import: $MISSING. Fix: bash scripts/setup.sh, or carry their" \
    "wheels in .whl/ (the header of bench/gpu.sh says how)" >&2
  exit 2
fi
if [ "$SMOKE" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "bench/gpu.sh: no CUDA device visible to $PY; run 'bash bench/gpu.sh --smoke' on a CPU" >&2
  exit 2
fi

DIR=${GPU_SUITE_OUT:-${OUT:-$(mktemp -d /tmp/gpu-suite.XXXXXX)}}
mkdir -p "$DIR"
RES=$DIR/results.jsonl
WORK=$(mktemp -d /tmp/gpu-suite-work.XXXXXX)
LOGS=$WORK/logs  # gathered into DIR/logs.txt at the end: the device tool returns <= 8 files
mkdir -p "$LOGS"
trap 'rm -rf "$WORK"' EXIT
: >"$RES"
BUDGET=${GPU_SUITE_BUDGET_S:-470}
START=$(date +%s)
FAILED=0

# run_part NAME SECONDS CMD...: CMD under `timeout`, cut to the budget left; its output goes
# to LOGS/NAME.log (and the last lines to the terminal); a status line goes to results.jsonl.
run_part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, the 8-minute budget is spent"
    printf '{"part": "_status", "name": "%s", "rc": -1, "seconds": 0}\n' "$name" >>"$RES"
    FAILED=1
    return
  fi
  echo "== $name (timeout ${limit} s)"
  local t0 rc
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 4 "$LOGS/$name.log"
  local secs
  secs=$("$PY" -c "import sys; print(round($(date +%s.%N) - $t0, 1))")
  printf '{"part": "_status", "name": "%s", "rc": %d, "seconds": %s}\n' "$name" "$rc" "$secs" >>"$RES"
  [ "$rc" -ne 0 ] && FAILED=1
}

if [ "$SMOKE" = 1 ]; then
  DEV=cpu VARIANT=tiny WORKERS=1 SHARDS=2 PER_SHARD=8 BATCHES="2 4"
  SMOKE_FLAG=--smoke
  export TRIAGAN_GPU_TESTS_ON_CPU=1  # tests/test_gpu.py at tiny sizes, on the CPU
  PYTEST=("$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py)
else
  # refine: one shard per worker in the first run, two in the second (SHARDS = 2 x WORKERS)
  DEV=cuda VARIANT=huge WORKERS=${GPU_SUITE_WORKERS:-8} PER_SHARD=256
  SHARDS=$((2 * WORKERS))
  BATCHES="32 64 128"
  SMOKE_FLAG=
  PYTEST=("$PY" -m pytest -q -p no:cacheprovider -m gpu tests)
fi
MODEL=$WORK/vitpose-$VARIANT

# 0. refine's input, made in the background while the GPU parts below run (synth is one CPU
#    process, ~100 samples/s)
run_part refine-data 200 bash -c "'$PY' -m fdhclean.cli synth --out '$WORK/fdh' --shards 1 \
  --val-shards $SHARDS --samples-per-shard $PER_SHARD && '$PY' -m fdhclean.cli parts build \
  --segmentation '$WORK/fdh/segmentation.json' --cse-mesh '$WORK/fdh/mesh.pkl' \
  --out '$WORK/fdh/parts.npz'" &
DATA_PID=$!

# 1. every `gpu`-marked test (on the CPU with --smoke: tests/test_gpu.py at tiny sizes)
run_part pytest 150 "${PYTEST[@]}" --junitxml="$DIR/pytest.xml"

# 2. ViTPose (H on the GPU: hidden 1280, 32 layers, 16 heads, 637M parameters), random init,
#    saved once and shared with refine; then the model alone, `estimate` in-process and
#    `estimate_samples` with crop/decode workers, batch 32/64/128, flip test off and on, bf16.
run_part vitpose-model 60 "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench')
import estimator; estimator.make_model('$VARIANT', Path('$MODEL'))"
# shellcheck disable=SC2086
run_part vitpose 110 "$PY" bench/estimator.py --variant "$VARIANT" --device "$DEV" --dtype bf16 \
  --batches $BATCHES --images 2048 --workers "$WORKERS" --iters 10 \
  --no-library --no-stages --model-rate --model-dir "$MODEL" --json "$RES" $SMOKE_FLAG

# 3. refine end to end with the model (the CLI, as a user runs it) on the synthetic shards made
#    in the background since the start. Each of the WORKERS processes builds its own replica
#    of the model on the GPU and cleans whole shards. Twice: on the first WORKERS shards (one
#    round: one shard per worker), then on all 2 x WORKERS (two rounds); the difference of the
#    two is the steady rate without start-up (imports, CUDA contexts, loading 2.5 GB of weights
#    per replica). GPU utilisation and memory are sampled every 200 ms during the second run.
wait "$DATA_PID"
mkdir -p "$WORK/fdh1/val"
for ((i = 0; i < WORKERS; i++)); do
  shard=$(printf 'out-%06d.tar' "$i")
  ln "$WORK/fdh/val/$shard" "$WORK/fdh1/val/" 2>/dev/null ||
    cp "$WORK/fdh/val/$shard" "$WORK/fdh1/val/" 2>/dev/null
done
refine() {  # refine DATA_ROOT OUT
  "$PY" -m fdhclean.cli refine --split val --data-root "$1" --out "$2" \
    --part-table "$WORK/fdh/parts.npz" --estimator vitpose-hf --checkpoint "$MODEL" \
    --device "$DEV" --batch-size 64 --workers "$WORKERS"
}
export -f refine
export PY WORK MODEL DEV WORKERS
T0=$(date +%s.%N)
run_part refine-1-round 50 bash -c 'refine "$WORK/fdh1" "$WORK/refined1"'
T1=$(date +%s.%N)
UTIL_PID=
if command -v nvidia-smi >/dev/null && [ "$SMOKE" = 0 ]; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    >"$DIR/refine_util.csv" 2>/dev/null &
  UTIL_PID=$!
fi
run_part refine 60 bash -c 'refine "$WORK/fdh" "$WORK/refined"'
T2=$(date +%s.%N)
[ -n "$UTIL_PID" ] && kill "$UTIL_PID" 2>/dev/null
if grep -q '"name": "refine", "rc": 0' "$RES" && grep -q '"name": "refine-1-round", "rc": 0' "$RES"; then
  "$PY" -c "import json; print(json.dumps({'part': 'refine', 'samples': $SHARDS * $PER_SHARD,
    'seconds': round($T2 - $T1, 2), 'samples_1': $WORKERS * $PER_SHARD,
    'seconds_1': round($T1 - $T0, 2),
    'workers': $WORKERS, 'device': '$DEV', 'smoke': $SMOKE == 1}))" >>"$RES"
fi

# 4. Config E generator per stage, batch 1 and 128, bf16 (eager; GPU_SUITE_COMPILE=1 adds
#    torch.compile, whose compile time does not fit the budget at every stage).
MODES=(eager)
[ "${GPU_SUITE_COMPILE:-0}" = 1 ] && MODES=(eager compile)
run_part generator 45 "$PY" bench/generator.py --configs E --device "$DEV" --dtype bf16 \
  --resolutions 18x10 36x20 72x40 144x80 288x160 --modes "${MODES[@]}" --iters 10 --warmup 2 \
  --json "$RES" $SMOKE_FLAG

# 5. Config E train step (D + G phase, bf16 autocast, random feature networks) per stage
run_part train-step 100 "$PY" bench/train_step.py --config E --device "$DEV" --batch 32 \
  --modes eager --steps 3 --warmup 1 --json "$RES" $SMOKE_FLAG

# 6. the anonymiser: Config E at 288x160 in bf16, 1/8/32 persons per 1280x720 frame, with the
#    batched-vs-sequential check (anonymize-spec: within 1 grey level)
run_part anonymize 60 "$PY" bench/anonymize.py --device "$DEV" --config E --stage 288x160 \
  --precision bf16 --persons 1 8 32 --frames 3 --check-batching --json "$RES" $SMOKE_FLAG

grep -q '"rc": -\?[1-9]' "$RES" && FAILED=1  # also the background part's status
echo
for f in "$LOGS"/*.log; do printf '\n===== %s\n' "$(basename "$f")"; cat "$f"; done >"$DIR/logs.txt"
"$PY" bench/gpu_table.py "$DIR" | tee "$DIR/table.md"
echo "results in $DIR ($(($(date +%s) - START)) s in all)"
exit "$FAILED"
