#!/usr/bin/env bash
# Every benchmark on an NVIDIA machine, in one command, into one results file.
#
#   bash benchmarks/gpu_suite.sh [WHEEL_DIR] [RESULTS] [PARTS]
#
# WHEEL_DIR (default .whl): wheels the machine lacks, for its Python (3.12 on the lent H100/H200): nvidia-dali-cuda130
#   and its dependencies nvidia-nvimgcodec-cu13, nvidia-libnvcomp-cu13, optree, gast, astunparse, libcst,
#   makefun, nvtx; webdataset and braceexpand. They are placed beside the checkout by the device tool's
#   wheel-carrying procedure (pip download --no-deps --python-version 3.12 ...). A wheel too large for one
#   transfer may arrive split as NAME.whl.part-aa, NAME.whl.part-ab, ... (in earlier calls, moved out of the
#   carried folder into WHEEL_DIR, since each call's carry replaces it): the parts are joined here first.
# RESULTS (default $OUT/gpu_suite.txt, else bench_out/gpu_suite.txt): every command and its output.
# PARTS (default train,model,blocks,loader,shards): which measurements to run. Where one command may run 10
#   minutes at most (the device tool), run one part per call while the machine stays warm (the generated data
#   is kept in $GPU_SUITE_DATA between calls): PARTS=train, then model, then blocks, then loader,shards.
# Assumes torch with CUDA is already installed (python3 holds it). Runs: benchmarks/model.py (also --blocks),
# benchmarks/loader.py, benchmarks/shards.py, and train.py --benchmark for ResNet-50-CBAM with --backend dali
# and torch at global batch 128 and 256, on a generated ImageNet-sized JPEG set (no ImageNet needed).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
RESULTS=${2:-${OUT:-bench_out}/gpu_suite.txt}
PARTS=",${3:-train,model,blocks,loader,shards},"
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
# The torch backend's ROI JPEG decoder (pipeline.info reports whether it is in use).
bash tools/build_native.sh "$(dirname "$RESULTS")/roi-jpeg-build.log" 2>&1 | tee -a "$RESULTS"
run $PY -m pipeline.info
if ! $PY -c "import webdataset; from nvidia.dali import fn; import nvidia.nvimgcodec" >>"$RESULTS" 2>&1; then
  note "error: DALI, its dependencies or webdataset are not importable (see above): carry the wheels listed at the top"
  exit 1
fi
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv

# ImageNet-like: 100 classes, images around 400 px, 32,000 train + 1,000 val: at batch 256 one epoch holds 125
# batches, more than a benchmark's loader-alone plus end-to-end steps, so no epoch restart is timed.
if [ ! -f "$DATA/shards/manifest.json" ]; then
  run $PY tools/make_demo_data.py "$DATA/images" --classes 100 --train-per-class "${GPU_SUITE_PER_CLASS:-320}" \
    --val-per-class 10 --size 400 --workers "$(nproc)"
  run $PY tools/make_shards.py "$DATA/images" "$DATA/shards" --workers "$(nproc)" --max-count 500
fi

wants() { [[ $PARTS == *",$1,"* ]]; }  # is part $1 asked for
if wants train; then
  for backend in dali torch; do
    for batch in 128 256; do
      run $PY train.py --depth 50 --att-type CBAM --backend "$backend" --batch-size "$batch" --workers 12 \
        --amp bf16 --benchmark --benchmark-warmup 20 --benchmark-steps 40 "$DATA/shards"
    done
  done
fi
# The train.py figures come first (the headline); the component benchmarks after.
# CBAM = auto: the Triton kernels where they run, else plain PyTorch. The time limits keep each part within one
# 10-minute device call.
wants model && run $PY benchmarks/model.py --variants none,SE,CBAM,CBAM-torch,CBAM-ref --repeats 5 --time-limit 420
wants blocks && run $PY benchmarks/model.py --blocks --variants none,CBAM,CBAM-torch,CBAM-ref --modes eager \
  --profile --time-limit 420
wants loader && run $PY benchmarks/loader.py --src "$DATA/images" --workers 8 --batch-size 256 --repeats 3 --epochs 1
wants shards && run $PY benchmarks/shards.py --src "$DATA/images" --workers 1,2,8 --repeats 3
note "train.py --benchmark JSON lines:"
grep '^{"benchmark": true' "$RESULTS" | tee -a "$RESULTS.json"
note "all results in $RESULTS"
