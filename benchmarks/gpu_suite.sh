#!/usr/bin/env bash
# Every benchmark on an NVIDIA machine, in one command, into one results file.
#
#   bash benchmarks/gpu_suite.sh [WHEEL_DIR] [RESULTS] [PARTS]
#
# WHEEL_DIR (default .whl): wheels the machine lacks (nvidia-dali-cuda130, webdataset, braceexpand), placed
#   beside the checkout by the device tool's wheel-carrying procedure. A wheel too large for one transfer may
#   arrive split as NAME.whl.part-aa, NAME.whl.part-ab, ...: the parts are joined here first.
# RESULTS (default $OUT/gpu_suite.txt, else bench_out/gpu_suite.txt): every command and its output.
# PARTS (default model,loader,shards,train): which measurements to run. The whole suite takes about 15 minutes
#   on one H100; where one command may run 10 minutes at most (the device tool), run it in two calls while the
#   machine stays warm (the generated data is kept in $GPU_SUITE_DATA): PARTS=model, then loader,shards,train.
# Assumes torch with CUDA is already installed (python3 holds it). Runs: benchmarks/model.py,
# benchmarks/loader.py, benchmarks/shards.py, and train.py --benchmark for ResNet-50-CBAM with --backend dali
# and torch at global batch 128 and 256, on a generated ImageNet-sized JPEG set (no ImageNet needed).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
RESULTS=${2:-${OUT:-bench_out}/gpu_suite.txt}
PARTS=",${3:-model,loader,shards,train},"
PY=${PYTHON:-python3}
DATA=${GPU_SUITE_DATA:-/tmp/gpu_suite_data}
SITE=/tmp/gpu_suite_site
mkdir -p "$(dirname "$RESULTS")"
: > "$RESULTS"

note() { echo "== $*" | tee -a "$RESULTS"; }
run() {  # run a command, keep its whole output in RESULTS, show the last lines
  note "$*"
  local start=$SECONDS
  "$@" >>"$RESULTS" 2>&1
  local status=$?
  note "exit $status after $((SECONDS - start)) s"
  tail -n 12 "$RESULTS"
  return 0
}

if [ -d "$WHEELS" ]; then
  for first in "$WHEELS"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whole=${first%.part-aa}
    [ -f "$whole" ] || cat "${whole}".part-* > "$whole"
  done
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >>"$RESULTS" 2>&1 || note "warning: installing the carried wheels failed (see above)"
  fi
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
run $PY -m pipeline.info
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv

# ImageNet-like: ~100 classes, images around 400 px on their long side, 12,000 train + 1,000 val.
if [ ! -f "$DATA/shards/manifest.json" ]; then
  run $PY tools/make_demo_data.py "$DATA/images" --classes 100 --train-per-class "${GPU_SUITE_PER_CLASS:-120}" \
    --val-per-class 10 --size 400 --workers "$(nproc)"
  run $PY tools/make_shards.py "$DATA/images" "$DATA/shards" --workers "$(nproc)" --max-count 500
fi

wants() { [[ $PARTS == *",$1,"* ]]; }
wants model && run $PY benchmarks/model.py --variants none,SE,CBAM,CBAM-ref --modes eager,compiled --repeats 5
wants loader && run $PY benchmarks/loader.py --src "$DATA/images" --workers 8 --batch-size 256 --repeats 3 --epochs 1
wants shards && run $PY benchmarks/shards.py --src "$DATA/images" --workers 1,2,8 --repeats 3
if wants train; then
  for backend in dali torch; do
    for batch in 128 256; do
      run $PY train.py --depth 50 --att-type CBAM --backend "$backend" --batch-size "$batch" --workers 12 \
        --amp bf16 --benchmark --benchmark-warmup 20 --benchmark-steps 40 "$DATA/shards"
    done
  done
fi
note "train.py --benchmark JSON lines:"
grep '^{"benchmark": true' "$RESULTS" | tee -a "$RESULTS.json"
note "all results in $RESULTS"
