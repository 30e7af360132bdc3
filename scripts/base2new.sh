#!/bin/bash
# Base-to-new generalization: train on the base half of the classes, then evaluate the same weights
#   (a) the official way: the new half alone (test_new), the base accuracy being the training run's own test;
#   (b) in one pass over all classes (test_all), whose metrics.json holds base_to_new {base, new, hm} and
#       BMIP's open_world {base, new, hm, accuracy}.
#
#   DATA=/path/to/data [OUTPUT=output] bash scripts/base2new.sh TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]
#
# Folders (the official layout):
#   $OUTPUT/base2new/train_base/<dataset>/shots_<shots>/<trainer>/<cfg>/seed<seed>
#   $OUTPUT/base2new/test_new/...   $OUTPUT/base2new/test_all/...
# B2N_EVAL (default "new all") picks the evaluations. See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
vlp_parse_args "$@"

COMMON_DIR="$DATASET/shots_$SHOTS/$TRAINER/$CFG_NAME/seed$SEED"
TRAIN_DIR="$OUTPUT/base2new/train_base/$COMMON_DIR"
vlp_train "$TRAIN_DIR" "$DATASET_FILE" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base
for SUB in ${B2N_EVAL:-new all}; do
    case "$SUB" in
        new | all | base) ;;
        *) vlp_die "B2N_EVAL takes new, all or base, got '$SUB'" ;;
    esac
    vlp_eval "$OUTPUT/base2new/test_$SUB/$COMMON_DIR" "$TRAIN_DIR" "$DATASET_FILE" \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB"
done
