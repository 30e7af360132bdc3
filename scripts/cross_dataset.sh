#!/bin/bash
# Cross-dataset transfer: train on ImageNet (all classes, SHOTS shots; SOURCE=<dataset> for another source)
# unless that run exists, then evaluate the same weights on DATASET. With DATASET=imagenet it only trains:
# the training run's own test is the source accuracy.
#
#   DATA=/path/to/data [OUTPUT=output] bash scripts/cross_dataset.sh TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]
#
# Folders (the official layout, shared with scripts/domain_generalization.sh):
#   $OUTPUT/imagenet/<trainer>/<cfg>_<shots>shots/seed<seed>                  the ImageNet training run
#   $OUTPUT/evaluation/<trainer>/<cfg>_<shots>shots/<dataset>/seed<seed>      its evaluation on DATASET
# The paper targets: caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd
# eurosat ucf101. See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
vlp_parse_args "$@"
vlp_transfer
