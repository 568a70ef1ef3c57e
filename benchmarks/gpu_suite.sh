#!/usr/bin/env bash
# The GPU measurements, in stages that each fit a short device window (4 minutes on one H100) and print every
# figure the moment it exists.
#
#   bash benchmarks/gpu_suite.sh [WHEEL_DIR] [RESULTS] [STAGES]
#
# STAGES (comma list; default all, in this order):
#   data    only builds the photograph tree and its shards (below), so a later stage finds them ready     photographs
#   check   the GPU-only tests (tests/test_gpu.py: compiled Triton kernels against the authors' CBAM, CUDA batches,
#           fp16 and bf16 epochs)                                                      project only
#   model   benchmarks/model_speed.py --profile: ResNet-50 none and each CBAM implementation, compiled and
#           eager; top kernels, kernels per step, GPU busy %                                project only
#   graphs  the same for none and the compiled-path CBAM, each step replayed from a CUDA graph     project only
#   blocks  benchmarks/model_speed.py --blocks --profile: the block tails (BN included) of the first and last
#           ResNet-50 stage, in memory passes, eager and compiled                           project only
#   torch   train.py --benchmark, torch backend, ResNet-50-CBAM with the default flags twice (a cold and a warm
#           compile cache), then with GPU_SUITE_BASELINE_FLAGS                              project + photographs
#   dali    train.py --benchmark, dali backend, ResNet-50-CBAM and ResNet-50 with the default flags     + DALI
#   loader  benchmarks/loader.py (torch, dali-cpu, dali, stock torchvision)                            + DALI
#   shards  benchmarks/make_shards.py                                                     + photographs
# WHEEL_DIR (default .whl): wheels the machine lacks, for its Python (3.12 on the lent H100/H200): for the DALI
#   stages nvidia-dali-cuda130 and its dependencies nvidia-nvimgcodec-cu13, nvidia-libnvcomp-cu13, optree, gast,
#   astunparse, libcst, makefun, nvtx; webdataset and braceexpand for all. A wheel too large for one transfer may
#   arrive split as NAME.whl.part-aa, -ab, ...: the parts are joined here first. (Or unpack DALI as
#   ../shared/gpu/README.md says and put it on PYTHONPATH before calling.)
# RESULTS (default $OUT/gpu_suite.txt, else bench_out/gpu_suite.txt): every command and its output, appended.
# The data: GPU_SUITE_PHOTOS (default ../shared/data/imagenet-sample, else photos/ in the checkout: copy the
#   shared samples there, it is git-ignored, and carry it) linked many times over into an ImageNet-shaped tree
#   (tools/link_photo_tree.py: 100 classes x GPU_SUITE_PER_CLASS=320 train + 10 val, so a batch-256 epoch holds
#   125 batches and no epoch restart falls inside a benchmark), sharded once into GPU_SUITE_DATA
#   (default /tmp/gpu_suite_data) and kept there for the later stages and calls.
# GPU_SUITE_BASELINE_FLAGS (default "--cbam-impl triton": the fused op, eager): the torch stage's third run.
# GPU_SUITE_TIME_LIMIT (default 200): seconds after which benchmarks/model_speed.py starts no new case.
# GPU_SUITE_TRAIN_FLAGS (default: ResNet-50 at batch 256, 20 + 40 steps) replaces the model and size flags of the
#   train.py stages; the tests use it to run a stage on a CPU in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
RESULTS=${2:-${OUT:-bench_out}/gpu_suite.txt}
STAGES=${3:-data,check,model,graphs,blocks,torch,dali,loader,shards}
PY=${PYTHON:-python3}
DATA=${GPU_SUITE_DATA:-/tmp/gpu_suite_data}
SITE=/tmp/gpu_suite_site
KNOWN=",data,check,model,graphs,blocks,torch,dali,loader,shards,"
TRAIN_FLAGS=${GPU_SUITE_TRAIN_FLAGS:---depth 50 --batch-size 256 --workers 12 --benchmark-warmup 20 --benchmark-steps 40}
BASELINE_FLAGS=${GPU_SUITE_BASELINE_FLAGS:---cbam-impl triton}  # the torch stage's third run
LIMIT=${GPU_SUITE_TIME_LIMIT:-200}  # model_speed.py starts no new case after it: the stage stays within 4 minutes

for stage in ${STAGES//,/ }; do
  if [[ $KNOWN != *",$stage,"* ]]; then
    echo "gpu_suite.sh: error: unknown stage '$stage' (stages: ${KNOWN:1:-1})" >&2
    exit 2
  fi
done
wants() { [[ ",$STAGES," == *",$1,"* ]]; }

mkdir -p "$(dirname "$RESULTS")"
note() { echo "== $*" | tee -a "$RESULTS"; }
run() {  # run a command; its output streams to the terminal and RESULTS as it is printed
  note "$*"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$RESULTS"
  note "exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

if [ -d "$WHEELS" ]; then
  for first in "$WHEELS"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whole=${first%.part-aa}
    [ -f "$whole" ] || cat "${whole}".part-* > "$whole"
  done
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >>"$RESULTS" 2>&1 || note "warning: installing the carried wheels failed (see $RESULTS)"
  fi
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

need_dali() {
  if ! $PY -c "import webdataset; from nvidia.dali import fn; import nvidia.nvimgcodec" >>"$RESULTS" 2>&1; then
    note "error: stage $1 needs DALI and webdataset, which do not import (see $RESULTS): carry the wheels listed at the top"
    return 1
  fi
}

need_data() {  # the photograph tree and its shards, made once and kept in $DATA
  if [ -f "$DATA/shards/manifest.json" ]; then
    note "data: $DATA/shards (kept from an earlier stage)"
    return 0
  fi
  local photos=${GPU_SUITE_PHOTOS:-}
  if [ -z "$photos" ]; then
    for candidate in ../shared/data/imagenet-sample photos; do
      [ -d "$candidate" ] && { photos=$candidate; break; }
    done
  fi
  if [ -z "$photos" ] || [ ! -d "$photos" ]; then
    note "error: no photographs: set GPU_SUITE_PHOTOS, or copy ../shared/data/imagenet-sample to photos/ and carry it"
    return 1
  fi
  # The ROI JPEG decoder of the torch backend (pipeline.info says whether it is in use).
  bash tools/build_native.sh "$(dirname "$RESULTS")/roi-jpeg-build.log" 2>&1 | tee -a "$RESULTS"
  run $PY -m pipeline.info
  run $PY tools/link_photo_tree.py "$photos" "$DATA/images" --classes "${GPU_SUITE_CLASSES:-100}" \
    --train-per-class "${GPU_SUITE_PER_CLASS:-320}" --val-per-class "${GPU_SUITE_VAL_PER_CLASS:-10}" &&
  run $PY tools/make_shards.py "$DATA/images" "$DATA/shards" --workers "$(nproc)" --max-count 500 &&
  [ -f "$DATA/shards/manifest.json" ]
}

# shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
train_benchmark() {  # train.py --benchmark with the default flags (compile, amp, CBAM implementation: auto) + "$3"
  run $PY train.py --att-type "$1" --backend "$2" $TRAIN_FLAGS ${3:-} --benchmark "$DATA/shards"
}

wants data && need_data
# --show-capture=no: a failing compiled test captures thousands of DEBUG lines of torch's tracing that would hide
# its assertion message.
wants check && run $PY -m pytest -q -p no:cacheprovider --tb=short --show-capture=no -rf tests/test_gpu.py
wants model && run $PY benchmarks/model_speed.py --variants none,CBAM-torch,CBAM-triton --modes compiled,eager \
  --profile --time-limit "$LIMIT"
wants graphs && run $PY benchmarks/model_speed.py --variants none,CBAM-torch --modes compiled+graph,eager+graph \
  --profile --time-limit "$LIMIT"
wants blocks && run $PY benchmarks/model_speed.py --blocks --stage-shapes 256x56,2048x7 \
  --variants none,CBAM-torch,CBAM-triton --modes eager,compiled --profile --time-limit "$LIMIT"
if wants torch && need_data; then
  note "CBAM, torch backend: the default flags from the compile cache as it is, again (warm), then $BASELINE_FLAGS"
  train_benchmark CBAM torch
  train_benchmark CBAM torch
  train_benchmark CBAM torch "$BASELINE_FLAGS"
fi
if wants dali && need_dali dali && need_data; then
  train_benchmark CBAM dali
  train_benchmark none dali
fi
if wants loader && need_dali loader && need_data; then
  run $PY benchmarks/loader.py --src "$DATA/images" --workers 8 --batch-size 256 --repeats 3 --epochs 1
fi
wants shards && need_data && run $PY benchmarks/make_shards.py --src "$DATA/images" --workers 1,2,8 --repeats 3
note "train.py --benchmark JSON lines so far:"
grep '^{"benchmark": true' "$RESULTS" | tee "$RESULTS.json"
note "all results in $RESULTS"
