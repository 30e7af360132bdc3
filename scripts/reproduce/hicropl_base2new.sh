#!/bin/bash
# HiCroPL base-to-new generalization: trained on the base classes of the 11 benchmarks (16 shots, seeds 1 2 3)
# with HiCroPL's official configs (ImageNet: vit_b16_c2_ep40_batch128_16ctx; the others:
# vit_b16_c2_ep50_batch32_16ctx, as its scripts/hicropl/base2new_train_hicropl.sh); prints the base/new/HM table
# (and the open-world one, from the same single pass over all classes).
#
#   DATA=/path/to/data bash scripts/reproduce/hicropl_base2new.sh [tools/sweep.py options] [KEY VALUE ...]
#
# The other methods of the comparison: scripts/reproduce/bmip_table1_open_world.sh (same folders; the table
# then lists every method found: python tools/parse_results.py output --protocol base2new). See docs/protocols.md.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$PYTHON" tools/sweep.py --protocol base2new --trainers HiCroPL --seeds 1 2 3 \
    --config HiCroPL=vit_b16_c2_ep50_batch32_16ctx HiCroPL@imagenet=vit_b16_c2_ep40_batch128_16ctx \
    --table base2new open_world "$@"
