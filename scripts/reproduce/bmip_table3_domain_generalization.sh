#!/bin/bash
# BMIP (IJCAI 2025) Table 3, domain generalization: the ImageNet weights of Table 2 (trained here if missing)
# evaluated on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R over their 200 classes), seeds
# 1 2 3, for CoOp, CoCoOp, MaPLe and BMIP; prints the table.
#
#   DATA=/path/to/data bash scripts/reproduce/bmip_table3_domain_generalization.sh [tools/sweep.py options] [KEY VALUE ...]
#
# Configs: as bmip_table2_cross_dataset.sh (same training runs). See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$PYTHON" tools/sweep.py --protocol domain_generalization --trainers CoOp CoCoOp MaPLe BMIP --seeds 1 2 3 \
    --config "${BMIP_IMAGENET_CONFIGS[@]}" \
    --table domain_generalization "$@"
