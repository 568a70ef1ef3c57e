#!/usr/bin/env bash
# A fast ResNet-50-CBAM recipe after FFCV's ResNet-50 configurations (github.com/libffcv/ffcv-imagenet):
# 40 epochs, progressive resizing 160 -> 192 px late in training, test at 256 px, label smoothing 0.1, no weight
# decay on BatchNorm and biases, a large batch (1024) with the learning rate scaled linearly (0.1 per 256 images,
# Goyal et al. 2017) after a 2-epoch warm-up, cosine decay, and an EMA of the weights evaluated beside them.
#
#   NPROC=8 bash recipes/fast.sh DATA [more train.py flags, which override these]
#
# Reference: FFCV's ResNet-50 (no attention) reaches 77.2 % top-1 in 40 epochs on 8 x A100 (ffcv-imagenet
# README, rn50_40_epochs.yaml). See recipes/README.md for how our figure is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: NPROC=8 bash recipes/fast.sh DATA [train.py flags]" >&2; exit 2; fi
data=$1; shift
exec .venv/bin/torchrun --standalone --nproc-per-node "${NPROC:-8}" train.py \
    --depth 50 --att-type CBAM --epochs 40 --batch-size 1024 --lr 0.4 --momentum 0.9 --weight-decay 5e-5 \
    --no-bn-weight-decay --lr-schedule cosine --warmup-epochs 2 --label-smoothing 0.1 \
    --image-size 160:192@28:34 --val-image-size 256 --ema-decay 0.9998 \
    --prefix RESNET50_CBAM_FAST "$@" "$data"
