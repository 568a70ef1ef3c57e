#!/usr/bin/env bash
# The embedded default: generate a small learnable image set, shard it, train ResNet-18-CBAM on it under
# torchrun (one process per GPU, or 2 gloo processes on a CPU machine), then print the --benchmark table.
# Uses the GPU and DALI automatically where present (--backend auto). About 3 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=demo_data
NPROC=$($PY -c 'import torch; print(max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 2)')

if [ ! -f "$DATA/shards/manifest.json" ]; then
  echo "== generating a learnable image set in $DATA/images"
  $PY tools/make_demo_data.py "$DATA/images" --classes 10 --train-per-class 100 --val-per-class 20 --size 64
  echo "== sharding it with tools/make_shards.py"
  $PY tools/make_shards.py "$DATA/images" "$DATA/shards" --max-count 250 --workers 2
fi

echo "== training ResNet-18-CBAM on $NPROC process(es)"
$PY -m torch.distributed.run --standalone --nproc-per-node "$NPROC" train.py --overwrite \
  --depth 18 --att-type CBAM --epochs 5 --batch-size 64 --lr 0.2 --lr-schedule cosine --warmup-epochs 1 \
  --image-size 64 --workers 2 --print-freq 5 --output-dir "$DATA/checkpoints" --prefix DEMO "$DATA/shards"

$PY - "$DATA/checkpoints/DEMO_metrics.jsonl" <<'PYEOF'
import json, sys
val = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "val"' in l]
print("== val top-1 by epoch (chance = 10%): " + " -> ".join(f"{r['top1']:.1f}%" for r in val))
PYEOF
$PY tools/plot_metrics.py "$DATA/checkpoints/DEMO_metrics.jsonl" -o "$DATA/checkpoints/DEMO_metrics.png"

echo "== where CBAM attends: tools/attention_maps.py on the best checkpoint, one val image of four classes"
$PY tools/attention_maps.py --checkpoint "$DATA/checkpoints/DEMO_model_best.pth.tar" \
  "$DATA"/images/val/n0900000[0369]/*_00000.JPEG --out "$DATA/checkpoints/DEMO_attention.png"

echo "== benchmark (same model and data)"
$PY -m torch.distributed.run --standalone --nproc-per-node "$NPROC" train.py \
  --depth 18 --att-type CBAM --batch-size 32 --image-size 64 --workers 2 --benchmark \
  --benchmark-warmup 3 --benchmark-steps 10 "$DATA/shards"  # 31 batches/epoch: no epoch restart is timed
