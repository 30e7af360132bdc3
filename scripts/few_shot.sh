#!/bin/bash
# Few-shot learning: train on SHOTS images per class (all classes) and test on the full test set.
#
#   DATA=/path/to/data [OUTPUT=output] bash scripts/few_shot.sh TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]
#
# Folder (the official MaPLe/HiCroPL layout; CoOp's adds nctx<N>_csc<C>_ctp<P>/ before seed<seed>):
#   $OUTPUT/<dataset>/<trainer>/<cfg>_<shots>shots/seed<seed>
# The paper protocols use SHOTS 1, 2, 4, 8, 16. See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
vlp_parse_args "$@"

vlp_train "$OUTPUT/$DATASET/$TRAINER/${CFG_NAME}_${SHOTS}shots/seed$SEED" "$DATASET_FILE" DATASET.NUM_SHOTS "$SHOTS"
