#!/usr/bin/env bash
# The CBAM paper's ImageNet recipe (Woo et al., ECCV 2018; github.com/Jongchan/attention-module, train_imagenet.py):
# ResNet-50 + CBAM, 100 epochs, global batch 256, SGD momentum 0.9, lr 0.1 decayed x0.1 at epochs 30, 60 and 90,
# weight decay 1e-4 on every parameter, 224 px train and val crops, no label smoothing, no EMA, no mixing.
#
#   NPROC=8 bash recipes/seed.sh DATA [more train.py flags, which override these]
#
# Reference: the paper's Table 4, ResNet-50 + CBAM 22.66 % top-1 error (77.34 % top-1), 6.31 % top-5 error;
# its own ResNet-50 baseline 24.56 % / 7.50 %. See recipes/README.md for how our figure is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: NPROC=8 bash recipes/seed.sh DATA [train.py flags]" >&2; exit 2; fi
data=$1; shift
exec .venv/bin/torchrun --standalone --nproc-per-node "${NPROC:-8}" train.py \
    --depth 50 --att-type CBAM --epochs 100 --batch-size 256 --lr 0.1 --momentum 0.9 --weight-decay 1e-4 \
    --lr-schedule step --lr-steps 30,60,90 --image-size 224 --val-image-size 224 \
    --prefix RESNET50_IMAGENET_CBAM "$@" "$data"
