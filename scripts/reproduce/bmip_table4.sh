#!/bin/bash
# BMIP (IJCAI 2025) Table 4, BMIP as a foundation for other methods: MaPLe, PromptSRC and CoPrompt, each alone and
# with BMIP's prompt structure (+BMIP: BMIP, PromptSRC_BMIP, CoPrompt_BMIP), trained on the base classes of the 11
# benchmarks (16 shots, seeds 1 2 3) and evaluated once over all classes; prints the open-world table (HM and
# accuracy per dataset and their average) and the base-to-new table from the same runs.
#
#   DATA=/path/to/data bash scripts/reproduce/bmip_table4.sh [tools/sweep.py options] [KEY VALUE ...]
#   e.g. ... --dry-run (list the runs)     ... --gpus 0,1,2,3     ... --slurm --partition gpu --wait
#
# Configs: the official base-to-new ones (MaPLe vit_b16_c2_ep5_batch4_2ctx, BMIP BMIP_ctx2_dp9_lr2, PromptSRC
# vit_b16_c2_ep20_batch4_4+4ctx, PromptSRC_BMIP the BMIP repository's vit_bitp_ctx4_ep20TT_adam_PromptSRC,
# CoPrompt and CoPrompt_BMIP coprompt with CoPrompt's per-dataset table). CoPrompt_BMIP has no official code:
# docs/methods.md gives this project's reading. Output: $OUTPUT (default output/)/base2new/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$PYTHON" tools/sweep.py --protocol base2new --trainers MaPLe BMIP PromptSRC PromptSRC_BMIP CoPrompt CoPrompt_BMIP \
    --seeds 1 2 3 --config MaPLe=vit_b16_c2_ep5_batch4_2ctx BMIP=BMIP_ctx2_dp9_lr2 \
    PromptSRC=vit_b16_c2_ep20_batch4_4+4ctx PromptSRC_BMIP=vit_bitp_ctx4_ep20TT_adam_PromptSRC \
    CoPrompt=coprompt CoPrompt_BMIP=coprompt \
    --table open_world base2new "$@"
