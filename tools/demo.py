"""The README's main job: base-to-new generalization on the toy world, on a CPU, in a few minutes.

1. Pretrains the toy CLIP (vlprompt-toy, tools/pretrain_toyclip.py) unless it is cached.
2. For each method: trains on the 18 base classes of ToyShapes (16 shots each) with the method's official
   config (ZeroshotCLIP only evaluates), evaluates the base classes, then the 18 new classes with the
   official two-step flow (--eval-only --model-dir ... DATASET.SUBSAMPLE_CLASSES new).
3. Prints the table: accuracy on base and new classes and their harmonic mean (HM).

Methods not implemented yet in this checkout are skipped with a note. Results already in --output are
reused (delete the folder to run again). A toy world, not the papers' numbers: see docs/toyworld.md.
"""
import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlprompt.cli import main as train  # noqa: E402
from vlprompt.clip.load import toy_checkpoint_path  # noqa: E402
from vlprompt.engine.trainer import TRAINER_REGISTRY  # noqa: E402
from vlprompt.toyworld import toy_opts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_CFG = "configs/datasets/toy_shapes.yaml"
# trainer -> (official config, options on top of it). Official hyperparameters, except what the toy CLIP
# needs (vlprompt.toyworld.toy_opts: input size, transforms, deep-prompt depths) and a CPU-sized test batch.
METHODS = {
    "ZeroshotCLIP": ("configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", []),
    "CoOp": ("configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", []),
    "MaPLe": ("configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", []),
    "BMIP": ("configs/trainers/BMIP/BMIP_ctx2_dp9_lr2.yaml", []),
    "HiCroPL": ("configs/trainers/HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml", []),
}
COMMON_OPTS = ["DATASET.NUM_SHOTS", "16", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "200"]


def harmonic_mean(a, b):
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def read_yaml_key(path, section, key):
    """A top-level `section: {key: value}` of a config file, as text (no merge needed)."""
    from vlprompt.config import get_cfg_default, merge_from_file

    cfg = get_cfg_default()
    merge_from_file(cfg, path)
    return cfg[section][key]


def run(flags, opts, out, verbose=False):
    """One tools/train.py run into `out` (or its earlier result); returns the test accuracy. Its printout
    goes to out/log.txt only (and the screen with verbose); the progress bars show."""
    metrics = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics):
        print("reusing the earlier result", end=" ", flush=True)
    else:
        if os.path.isdir(out):  # an interrupted demo run: start it again
            shutil.rmtree(out)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(sys.stdout if verbose else devnull):
            status = train(flags + ["--output-dir", out] + opts)
        if status != 0:
            raise SystemExit(f"the run failed; see {out}/log.txt")
    with open(metrics) as f:
        return json.load(f)["accuracy"]


def base_to_new(trainer, seed, args):
    config, extra = METHODS[trainer]
    config = os.path.join(REPO, config)
    common = ["--root", args.root, "--seed", str(seed), "--trainer", trainer,
              "--dataset-config-file", os.path.join(REPO, DATASET_CFG), "--config-file", config]
    opts = toy_opts(trainer, config) + COMMON_OPTS + extra
    base_dir = os.path.join(args.output, "train_base", trainer, f"seed{seed}")
    new_dir = os.path.join(args.output, "test_new", trainer, f"seed{seed}")
    trains = trainer != "ZeroshotCLIP"
    start = time.time()
    what = "training on and evaluating" if trains else "evaluating"
    print(f"{trainer}, seed {seed}: {what} the base classes ...", end=" ", flush=True)
    base = run(common + ([] if trains else ["--eval-only"]), opts + ["DATASET.SUBSAMPLE_CLASSES", "base"], base_dir,
               args.verbose)
    print(f"{base:.1f}% ({time.time() - start:.0f} s)")
    load = []
    if trains:
        load = ["--model-dir", base_dir]
        if read_yaml_key(config, "TEST", "FINAL_MODEL") != "best_val":  # the official scripts' --load-epoch
            load += ["--load-epoch", str(read_yaml_key(config, "OPTIM", "MAX_EPOCH"))]
    start = time.time()
    print(f"{trainer}, seed {seed}: evaluating the new classes ...", end=" ", flush=True)
    new = run(common + ["--eval-only"] + load, opts + ["DATASET.SUBSAMPLE_CLASSES", "new"], new_dir, args.verbose)
    print(f"{new:.1f}% ({time.time() - start:.0f} s)")
    return base, new


def forget_results_of_another_clip(checkpoint, output):
    """Results in `output` are reused only if they were made with this very toy CLIP file."""
    stat = os.stat(checkpoint)
    stamp = {"checkpoint": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp_file = os.path.join(output, "toyclip.json")
    if os.path.isfile(stamp_file):
        with open(stamp_file) as f:
            if json.load(f) == stamp:
                return
    for folder in ("train_base", "test_new"):
        if os.path.isdir(os.path.join(output, folder)):
            print(f"Removing {os.path.join(output, folder)}: made with another toy CLIP")
            shutil.rmtree(os.path.join(output, folder))
    os.makedirs(output, exist_ok=True)
    with open(stamp_file, "w") as f:
        json.dump(stamp, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(REPO, "output/toyworld/data"), help="where the datasets are written")
    p.add_argument("--output", default=os.path.join(REPO, "output/toyworld/demo"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the table shows the mean over seeds")
    p.add_argument("--trainers", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--verbose", action="store_true", help="show the runs' printout (always in their log.txt)")
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    # One intra-op thread: these models and batches are tiny, and on a busy 2-core machine OpenMP threads of
    # small ops wait on each other (measured 20-60x slower training than with one thread).
    torch.set_num_threads(1)
    start = time.time()

    checkpoint = toy_checkpoint_path()
    if checkpoint.is_file():
        print(f"Toy CLIP: {checkpoint} (cached; delete it to pretrain again)")
    else:
        from vlprompt.toyworld.pretrain import PretrainConfig, pretrain

        print(f"Toy CLIP: pretraining it on the toy world (once; cached in {checkpoint})")
        record = pretrain(PretrainConfig(), checkpoint)
        print(f"Toy CLIP: pretrained in {record['seconds']:.0f} s, final loss {record['losses'][-1]:.3f}")

    forget_results_of_another_clip(checkpoint, args.output)
    import vlprompt.trainers  # noqa: F401  registers every implemented trainer

    rows, skipped = [], []
    registered = set(TRAINER_REGISTRY.names())
    for trainer in args.trainers:
        if trainer not in registered:
            print(f"{trainer}: not implemented in this checkout yet, skipped")
            skipped.append(trainer)
            continue
        seeds = args.seeds[:1] if trainer == "ZeroshotCLIP" else args.seeds  # nothing random in zero-shot
        results = [base_to_new(trainer, seed, args) for seed in seeds]
        base = sum(r[0] for r in results) / len(results)
        new = sum(r[1] for r in results) / len(results)
        rows.append((trainer, base, new, harmonic_mean(base, new)))

    seeds = ", ".join(map(str, args.seeds))
    print(f"\nBase-to-new generalization on ToyShapes: toy CLIP, 16 shots, 18 base and 18 new classes (chance 5.6%), "
          f"accuracy (%) averaged over seeds {seeds}; {time.time() - start:.0f} s")
    print("| method | base | new | HM |")
    print("| --- | --- | --- | --- |")
    for trainer, base, new, hm in rows:
        print(f"| {trainer} | {base:.1f} | {new:.1f} | {hm:.1f} |")
    if skipped:
        print(f"(not run, not implemented yet: {', '.join(skipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
