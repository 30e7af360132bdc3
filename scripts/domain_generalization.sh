#!/bin/bash
# Domain generalization: the ImageNet weights of scripts/cross_dataset.sh (trained here if they are missing)
# evaluated on an ImageNet variant: imagenetv2, imagenet_sketch, imagenet_a or imagenet_r (A and R over
# their own 200 classes). With DATASET=imagenet it only trains (the source accuracy).
#
#   DATA=/path/to/data [OUTPUT=output] bash scripts/domain_generalization.sh TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]
#
# Folders: as scripts/cross_dataset.sh (same training run, evaluations under $OUTPUT/evaluation/).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
vlp_parse_args "$@"
case "$DATASET" in
    imagenet | imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r) ;;
    *) echo "note: $DATASET is not an ImageNet variant; evaluating the source weights on it anyway" ;;
esac
vlp_transfer
