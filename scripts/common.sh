# Shared by the protocol scripts (scripts/base2new.sh, cross_dataset.sh, domain_generalization.sh,
# few_shot.sh); sourced, not run. See docs/protocols.md.
#
#   bash scripts/<protocol>.sh TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]
#
# Environment: DATA (dataset root, required), OUTPUT (output root, default "output"), PYTHON (default
# "python"). A step whose folder holds metrics.json is skipped; a training step whose folder holds a
# checkpoint resumes from it (--resume). Which checkpoint an evaluation loads is read from the config the
# training run wrote (TEST.FINAL_MODEL best_val: model-best.pth.tar; otherwise --load-epoch OPTIM.MAX_EPOCH).

set -euo pipefail

VLP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUTPUT="${OUTPUT:-output}"

vlp_usage() {
    echo "usage: bash $0 TRAINER CONFIG_NAME DATASET SEED [SHOTS] [KEY VALUE ...]" >&2
    echo "  DATA=<dataset root> (required), OUTPUT=<output root> (default: output)" >&2
    echo "  CONFIG_NAME: a file name in configs/trainers/TRAINER/ without .yaml, or a path to a .yaml" >&2
    echo "  DATASET: a file name in configs/datasets/ without .yaml, or a path to a .yaml" >&2
    exit 2
}

vlp_die() {
    echo "error: $*" >&2
    exit 2
}

# Sets TRAINER CFG_NAME CFG_FILE DATASET DATASET_FILE SEED SHOTS and the array OPTS.
vlp_parse_args() {
    [ "$#" -ge 4 ] || vlp_usage
    TRAINER="$1"
    local cfg="$2"
    DATASET="$3"
    SEED="$4"
    shift 4
    SHOTS=16
    if [ "$#" -gt 0 ] && [[ "$1" =~ ^-?[0-9]+$ ]]; then
        SHOTS="$1"
        shift
    fi
    [[ "$SEED" =~ ^-?[0-9]+$ ]] || vlp_die "SEED must be an integer, got '$SEED'"
    OPTS=("$@")
    [ $(( ${#OPTS[@]} % 2 )) -eq 0 ] || vlp_die "the options after SEED [SHOTS] must be KEY VALUE pairs: ${OPTS[*]}"
    local i
    for (( i = 0; i < ${#OPTS[@]}; i += 2 )); do
        case "${OPTS[$i]}" in
            DATASET.NUM_SHOTS) vlp_die "give the number of shots as the 5th argument (SHOTS), not as DATASET.NUM_SHOTS: it names the output folder" ;;
            DATASET.SUBSAMPLE_CLASSES) vlp_die "DATASET.SUBSAMPLE_CLASSES is set by the protocol script" ;;
        esac
    done
    [ -n "$TRAINER" ] || vlp_die "TRAINER (1st argument) is empty"
    [ -n "$cfg" ] || vlp_die "CONFIG_NAME (2nd argument) is empty"
    [ -n "$DATASET" ] || vlp_die "DATASET (3rd argument) is empty"
    [[ "$SHOTS" =~ ^[0-9]+$ ]] && [ "$SHOTS" -ge 1 ] || vlp_die "SHOTS must be an integer >= 1, got '$SHOTS'"
    [ -n "${DATA:-}" ] || vlp_die "set DATA to the dataset root (the folder given to --root), e.g. DATA=/data bash $0 ..."
    [ -d "$DATA" ] || vlp_die "DATA=$DATA is not a folder (it must hold the dataset folders, e.g. \$DATA/oxford_pets)"
    [ -n "$OUTPUT" ] || vlp_die "OUTPUT is set but empty; unset it (default: output) or name a folder"
    mkdir -p "$OUTPUT" 2>/dev/null && [ -w "$OUTPUT" ] || vlp_die "OUTPUT=$OUTPUT cannot be created or written"
    command -v "$PYTHON" >/dev/null 2>&1 ||
        vlp_die "PYTHON=$PYTHON is not an executable (set PYTHON to the interpreter of your environment)"
    if [ -n "${SOURCE:-}" ]; then
        vlp_dataset_file "$SOURCE" >/dev/null
    fi
    local sub
    for sub in ${B2N_EVAL:-new all}; do
        case "$sub" in
            new | all | base) ;;
            *) vlp_die "B2N_EVAL takes new, all or base, got '$sub'" ;;
        esac
    done

    if [ -f "$cfg" ]; then
        CFG_FILE="$cfg"
        CFG_NAME="$(basename "$cfg" .yaml)"
    else
        CFG_NAME="$cfg"
        CFG_FILE="$VLP_REPO/configs/trainers/$TRAINER/$cfg.yaml"
        if [ ! -f "$CFG_FILE" ] && vlp_is_zero_shot; then
            CFG_FILE="$VLP_REPO/configs/trainers/CoOp/$cfg.yaml"  # as the official zeroshot.sh
        elif [ ! -f "$CFG_FILE" ] && [[ "$TRAINER" == *_BMIP ]]; then
            CFG_FILE="$VLP_REPO/configs/trainers/${TRAINER%_BMIP}/$cfg.yaml"  # CoPrompt_BMIP: CoPrompt's configs
        fi
        [ -f "$CFG_FILE" ] || vlp_die "no config file $CFG_FILE (CONFIG_NAME '$cfg' for trainer $TRAINER)"
    fi
    DATASET_FILE="$(vlp_dataset_file "$DATASET")"
    DATASET="$(basename "$DATASET" .yaml)"
}

vlp_dataset_file() {
    if [ -f "$1" ]; then
        echo "$1"
    elif [ -f "$VLP_REPO/configs/datasets/$1.yaml" ]; then
        echo "$VLP_REPO/configs/datasets/$1.yaml"
    else
        vlp_die "no dataset config configs/datasets/$1.yaml"
    fi
}

vlp_is_zero_shot() {
    case "$TRAINER" in
        ZeroshotCLIP*) return 0 ;;
        *) return 1 ;;
    esac
}

# The checkpoint flags for evaluating the run in $1: nothing (model-best.pth.tar) when it selected its model
# on the validation set, else --load-epoch MAX_EPOCH (as the official test scripts pass).
vlp_load_epoch_args() {
    "$PYTHON" - "$1/config.yaml" <<'EOF'
import sys
import yaml

with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)
if cfg["TEST"]["FINAL_MODEL"] != "best_val" or cfg["TEST"].get("NO_TEST", False):
    print("--load-epoch", cfg["OPTIM"]["MAX_EPOCH"])
EOF
}

vlp_train_py() {
    echo "+ $PYTHON tools/train.py $*"
    "$PYTHON" "$VLP_REPO/tools/train.py" "$@"
}

vlp_has_checkpoint() {
    compgen -G "$1/*/checkpoint" >/dev/null
}

# vlp_train DIR DATASET_FILE [KEY VALUE ...]: train (zero-shot trainers: evaluate) into DIR.
vlp_train() {
    local dir="$1" dataset_file="$2"
    shift 2
    if [ -f "$dir/metrics.json" ]; then
        echo "skip: results exist in $dir"
        return 0
    fi
    mkdir -p "$dir"
    # Two scripts that need the same training run (cross-dataset targets sharing one source) wait for each
    # other instead of writing into the same folder.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$dir/.lock"
        flock 9
        if [ -f "$dir/metrics.json" ]; then
            echo "skip: results exist in $dir"
            exec 9>&-
            return 0
        fi
    fi
    local mode=()
    if vlp_is_zero_shot; then
        echo "evaluate (zero-shot, nothing to train) into $dir"
        mode=(--eval-only)
    else
        if vlp_has_checkpoint "$dir"; then
            echo "resume: $dir holds a checkpoint and no results"
        else
            echo "train into $dir"
        fi
        mode=(--resume "$dir")  # from the last checkpoint if there is one, else from scratch
    fi
    vlp_train_py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
        --dataset-config-file "$dataset_file" --config-file "$CFG_FILE" \
        --output-dir "$dir" "${mode[@]}" "$@" ${OPTS[@]+"${OPTS[@]}"}
    [ -f "$dir/metrics.json" ] || vlp_die "the run in $dir wrote no metrics.json (see $dir/log.txt)"
    if command -v flock >/dev/null 2>&1; then
        exec 9>&-
    fi
}

# vlp_eval DIR MODEL_DIR DATASET_FILE [KEY VALUE ...]: evaluate the run in MODEL_DIR into DIR.
vlp_eval() {
    local dir="$1" model_dir="$2" dataset_file="$3"
    shift 3
    if [ -f "$dir/metrics.json" ]; then
        echo "skip: results exist in $dir"
        return 0
    fi
    local model=()
    if ! vlp_is_zero_shot; then
        [ -f "$model_dir/config.yaml" ] || vlp_die "no trained run in $model_dir"
        local load
        load="$(vlp_load_epoch_args "$model_dir")"
        # shellcheck disable=SC2206
        model=(--model-dir "$model_dir" $load)
    fi
    echo "evaluate into $dir"
    vlp_train_py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
        --dataset-config-file "$dataset_file" --config-file "$CFG_FILE" \
        --output-dir "$dir" --eval-only ${model[@]+"${model[@]}"} "$@" ${OPTS[@]+"${OPTS[@]}"}
    [ -f "$dir/metrics.json" ] || vlp_die "the evaluation in $dir wrote no metrics.json (see $dir/log.txt)"
}

# Cross-dataset transfer and domain generalization: train on $SOURCE (default imagenet, all classes, SHOTS
# shots) into the official folders, then evaluate those weights on DATASET (nothing more when DATASET is the
# source: the training run's own test is the source accuracy).
#   training:   $OUTPUT/<source>/<trainer>/<cfg>_<shots>shots/seed<seed>
#   evaluation: $OUTPUT/evaluation/<trainer>/<cfg>_<shots>shots/<dataset>/seed<seed>
vlp_transfer() {
    local source="${SOURCE:-imagenet}"
    local source_file
    source_file="$(vlp_dataset_file "$source")"
    source="$(basename "$source" .yaml)"
    local train_dir="$OUTPUT/$source/$TRAINER/${CFG_NAME}_${SHOTS}shots/seed$SEED"
    vlp_train "$train_dir" "$source_file" DATASET.NUM_SHOTS "$SHOTS"
    if [ "$DATASET" != "$source" ]; then
        vlp_eval "$OUTPUT/evaluation/$TRAINER/${CFG_NAME}_${SHOTS}shots/$DATASET/seed$SEED" "$train_dir" "$DATASET_FILE"
    fi
}
