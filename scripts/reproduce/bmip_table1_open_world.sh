#!/bin/bash
# BMIP (IJCAI 2025) Table 1, open-world generalization: CoOp, CoCoOp, MaPLe and BMIP trained on the base classes
# of the 11 benchmarks (16 shots, seeds 1 2 3), each evaluated once over all classes; prints the open-world
# table (HM and accuracy per dataset and their average) and the base-to-new table from the same runs.
#
#   DATA=/path/to/data bash scripts/reproduce/bmip_table1_open_world.sh [tools/sweep.py options] [KEY VALUE ...]
#   e.g. ... --gpus 0,1,2,3     or     ... --slurm --partition gpu --wait
#
# Configs: BMIP's own scripts' (CoOp vit_b16_ep100 as BMIP's scripts/coop/main.sh; CoCoOp, MaPLe, BMIP their
# official base-to-new configs). Output: $OUTPUT (default output/)/base2new/. See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$PYTHON" tools/sweep.py --protocol base2new --trainers CoOp CoCoOp MaPLe BMIP --seeds 1 2 3 \
    --config CoOp=vit_b16_ep100 CoCoOp=vit_b16_c4_ep10_batch1_ctxv1 MaPLe=vit_b16_c2_ep5_batch4_2ctx \
    BMIP=BMIP_ctx2_dp9_lr2 \
    --table open_world base2new "$@"
