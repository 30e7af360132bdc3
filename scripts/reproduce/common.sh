# Shared by the reproduction scripts; sourced, not run.
set -euo pipefail
# $DATA and $OUTPUT relative to the caller's folder (as scripts/<protocol>.sh), before moving to the repository root
[ -n "${DATA:-}" ] && export DATA="$(realpath -m "$DATA")"
export OUTPUT="$(realpath -m "${OUTPUT:-output}")"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python}"
# The ImageNet training runs of BMIP Tables 2 and 3 (one set of runs serves both tables).
BMIP_IMAGENET_CONFIGS=(CoOp=vit_b16_ep50_ctxv1 CoCoOp=vit_b16_c4_ep10_batch1_ctxv1
    MaPLe=vit_b16_c2_ep5_batch4_2ctx_cross_datasets BMIP=BMIP_ctx2_dp9_lr2)
