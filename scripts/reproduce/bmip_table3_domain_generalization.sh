#!/bin/bash
# BMIP (IJCAI 2025) Table 3, domain generalization: the ImageNet weights of Table 2 (trained here if missing)
# evaluated on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R over their 200 classes), seeds
# 1 2 3, for CoOp, CoCoOp, MaPLe and BMIP; prints the table.
#
#   DATA=/path/to/data bash scripts/reproduce/bmip_table3_domain_generalization.sh [tools/sweep.py options] [KEY VALUE ...]
#
# Configs: as bmip_table2_cross_dataset.sh (same training runs). See docs/protocols.md.
set -euo pipefail
# $DATA and $OUTPUT relative to the caller's folder (as scripts/<protocol>.sh), before moving to the repository root
[ -n "${DATA:-}" ] && export DATA="$(realpath -m "$DATA")"
export OUTPUT="$(realpath -m "${OUTPUT:-output}")"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
"${PYTHON:-python}" tools/sweep.py --protocol domain_generalization --trainers CoOp CoCoOp MaPLe BMIP --seeds 1 2 3 \
    --config CoOp=vit_b16_ep50_ctxv1 CoCoOp=vit_b16_c4_ep10_batch1_ctxv1 \
    MaPLe=vit_b16_c2_ep5_batch4_2ctx_cross_datasets BMIP=BMIP_ctx2_dp9_lr2 \
    --table domain_generalization "$@"
