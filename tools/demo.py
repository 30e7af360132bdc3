"""The README's main job: base-to-new and open-world generalization on the toy world, on a CPU, in minutes.

1. Pretrains the toy CLIP (vlprompt-toy, tools/pretrain_toyclip.py) unless it is cached.
2. For each method and seed: trains on the 18 base classes of ToyShapes (16 shots each) with the method's
   official config (ZeroshotCLIP trains nothing), then evaluates the trained weights once over the whole
   test set with all 36 classes as candidates. That single evaluation gives the base-to-new numbers (base
   samples among base classes, new samples among new classes) and BMIP's open-world numbers (all classes
   as candidates), as scripts/base2new.sh with B2N_EVAL=all does.
3. Prints both tables with tools/parse_results.py (also written to OUTPUT/results_<protocol>.md and .csv).

The folders are the protocol scripts' (docs/protocols.md): OUTPUT/base2new/{train_base,test_all}/toy_shapes/
shots_16/<trainer>/<config>/seed<s>. Results already there are reused (delete the folder to run again).
A toy world, not the papers' numbers: see docs/toyworld.md.
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

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, REPO)
sys.path.insert(0, TOOLS)

import parse_results  # noqa: E402
from sweep import BASE as OFFICIAL_CONFIGS  # noqa: E402  the base-to-new config of each trainer
from sweep import config_file  # noqa: E402
from vlprompt.cli import main as train  # noqa: E402
from vlprompt.clip.load import toy_checkpoint_path  # noqa: E402
from vlprompt.config import get_cfg_default, merge_from_file  # noqa: E402
from vlprompt.engine.trainer import TRAINER_REGISTRY  # noqa: E402
from vlprompt.toyworld import toy_opts  # noqa: E402

DATASET = "toy_shapes"
SHOTS = 16
METHODS = ["ZeroshotCLIP", "CoOp", "MaPLe", "BMIP", "HiCroPL"]
# BMIP's Table 4: MaPLe, PromptSRC and CoPrompt, each alone and with BMIP's prompt structure
TABLE4 = ["MaPLe", "BMIP", "PromptSRC", "PromptSRC_BMIP", "CoPrompt", "CoPrompt_BMIP"]
ALL_METHODS = METHODS + [t for t in TABLE4 if t not in METHODS]
# Official hyperparameters plus what the toy CLIP needs (vlprompt.toyworld.toy_opts: input size, transforms,
# deep-prompt depths) and a CPU-sized test batch.
COMMON_OPTS = ["DATASET.NUM_SHOTS", str(SHOTS), "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "200"]


def run_dir(output, kind, trainer, seed):
    return os.path.join(output, "base2new", kind, DATASET, f"shots_{SHOTS}", trainer, OFFICIAL_CONFIGS[trainer],
                        f"seed{seed}")


def checkpoint_flags(config):
    """The checkpoint the official test scripts load: model-best with validation-based selection, else the
    last epoch (--load-epoch MAX_EPOCH)."""
    cfg = get_cfg_default()
    merge_from_file(cfg, config)
    return [] if cfg.TEST.FINAL_MODEL == "best_val" else ["--load-epoch", str(cfg.OPTIM.MAX_EPOCH)]


def run(flags, opts, out, verbose=False):
    """One tools/train.py run into `out`, unless its metrics.json exists; returns the metrics. Its printout
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
        return json.load(f)


def base_to_new(trainer, seed, args):
    """Train on the base classes (not ZeroshotCLIP), then one evaluation over all classes."""
    config = config_file(trainer)
    common = ["--root", args.root, "--seed", str(seed), "--trainer", trainer,
              "--dataset-config-file", os.path.join(REPO, "configs", "datasets", DATASET + ".yaml"),
              "--config-file", config]
    opts = toy_opts(trainer, config) + COMMON_OPTS
    load = []
    if trainer != "ZeroshotCLIP":
        start = time.time()
        print(f"{trainer}, seed {seed}: training on the base classes ...", end=" ", flush=True)
        base_dir = run_dir(args.output, "train_base", trainer, seed)
        run(common, opts + ["DATASET.SUBSAMPLE_CLASSES", "base"], base_dir, args.verbose)
        print(f"({time.time() - start:.0f} s)")
        load = ["--model-dir", base_dir] + checkpoint_flags(config)
    start = time.time()
    print(f"{trainer}, seed {seed}: evaluating all classes ...", end=" ", flush=True)
    metrics = run(common + ["--eval-only"] + load, opts + ["DATASET.SUBSAMPLE_CLASSES", "all"],
                  run_dir(args.output, "test_all", trainer, seed), args.verbose)
    b2n, ow = metrics["base_to_new"], metrics["open_world"]
    print(f"base {b2n['base']:.1f}, new {b2n['new']:.1f}; open world {ow['accuracy']:.1f} "
          f"({time.time() - start:.0f} s)")


def forget_results_of_another_clip(checkpoint, output):
    """Results in `output` are reused only if they were made with this very toy CLIP file."""
    stat = os.stat(checkpoint)
    stamp = {"checkpoint": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp_file = os.path.join(output, "toyclip.json")
    if os.path.isfile(stamp_file):
        with open(stamp_file) as f:
            if json.load(f) == stamp:
                return
    for folder in ("base2new", "results_base2new.md", "results_base2new.csv", "results_open_world.md",
                   "results_open_world.csv", "results_table4.md", "results_table4.csv"):
        path = os.path.join(output, folder)
        if os.path.exists(path):
            print(f"Removing {path}: made with another toy CLIP")
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(output, exist_ok=True)
    with open(stamp_file, "w") as f:
        json.dump(stamp, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(REPO, "output/toyworld/data"), help="where the datasets are written")
    p.add_argument("--output", default=os.path.join(REPO, "output/toyworld/demo"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the tables show mean +- std over seeds")
    p.add_argument("--trainers", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
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

    missing = [t for t in args.trainers if t not in TRAINER_REGISTRY.names()]
    if missing:
        raise SystemExit(f"error: trainers not registered: {', '.join(missing)}")
    for trainer in args.trainers:
        for seed in args.seeds:
            base_to_new(trainer, seed, args)

    print(f"\nToyShapes: toy CLIP, 16 shots, 18 base and 18 new classes (chance: 5.6% within a half, 2.8% over "
          f"all 36); {time.time() - start:.0f} s in all\n")
    table = ["--seeds", *map(str, args.seeds), "--decimals", "1", "--methods-as-rows"]
    main_methods = [t for t in args.trainers if t in METHODS]
    status = 0
    if main_methods:
        status = parse_results.main([args.output, "--protocol", "base2new", "open_world", "--methods", *main_methods,
                                     *table])
    table4 = [t for t in TABLE4 if t in args.trainers]
    if status == 0 and any(t not in METHODS for t in table4):
        print("\nBMIP's Table 4 in the toy world: each method alone and over BMIP's prompt structure (open world)\n")
        out = os.path.join(args.output, "results_table4")
        status = parse_results.main([args.output, "--protocol", "open_world", "--methods", *table4, *table,
                                     "--markdown", out + ".md", "--csv", out + ".csv"])
    return status


if __name__ == "__main__":
    sys.exit(main())
