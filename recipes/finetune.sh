#!/usr/bin/env bash
# Fine-tuning a pretrained ResNet-50 (ours, the CBAM authors' released ResNet-50-CBAM, or torchvision's
# ResNet-50 state dict, whose missing CBAM modules start as the authors initialise them) on another data set:
# a short schedule at a tenth of the ImageNet rate, the pretrained layers at a tenth of that again
# (--pretrained-lr-scale 0.1) while the new classifier and any new CBAM modules learn at the full rate, so that
# the random new layers do not wreck the pretrained features early on; a one-epoch warm-up, cosine decay and
# label smoothing 0.1 as in recipes/fast.sh.
#
#   NPROC=8 bash recipes/finetune.sh PRETRAINED DATA [more train.py flags, which override these]
#
# PRETRAINED: a .pth.tar of train.py, an authors' checkpoint, or torchvision's resnet50 state dict (e.g.
# torch.save(torchvision.models.resnet50(weights="IMAGENET1K_V1").state_dict(), "resnet50.pth")).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then echo "usage: NPROC=8 bash recipes/finetune.sh PRETRAINED DATA [train.py flags]" >&2; exit 2; fi
pretrained=$1; data=$2; shift 2
exec .venv/bin/torchrun --standalone --nproc-per-node "${NPROC:-8}" train.py \
    --depth 50 --att-type CBAM --pretrained "$pretrained" --pretrained-lr-scale 0.1 --epochs 15 \
    --batch-size 256 --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --lr-schedule cosine --warmup-epochs 1 \
    --label-smoothing 0.1 --prefix RESNET50_CBAM_FINETUNE "$@" "$data"
