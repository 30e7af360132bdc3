"""The command line of the official Dassl-based train.py, plus --device.

Merge order as Dassl: defaults (with every trainer's keys) <- dataset yaml <- method yaml <- flags <- KEY VALUE.
One difference: `--seed 0` is a real seed (the official `if args.seed:` silently drops it).
"""
import argparse
import os
import sys

import torch

import vlprompt.trainers  # noqa: F401  (registers every trainer and its config keys)
from vlprompt.config import ConfigError, ConfigTypeError, get_cfg_default, merge_from_file, merge_from_list
from vlprompt.engine import checkpoint as ckpt
from vlprompt.engine import distributed as dist_utils
from vlprompt.engine.trainer import TRAINER_REGISTRY
from vlprompt.utils.logger import close_logger, collect_versions, setup_logger, write_json_atomic
from vlprompt.utils.registry import RegistryError
from vlprompt.utils.seed import set_random_seed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train / evaluate a prompt-learning method on a frozen CLIP")
    p.add_argument("--root", type=str, default="", help="path to dataset")
    p.add_argument("--output-dir", type=str, default="", help="output directory")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    p.add_argument("--seed", type=int, default=None, help="fixed seed (0 included); negative: none")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("--device", type=str, default="", help="auto | cpu | cuda | cuda:N (sets DEVICE)")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options (KEY VALUE pairs)")
    return p


def setup_cfg(args):
    cfg = get_cfg_default()
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    flags = {
        "DATASET.ROOT": args.root, "OUTPUT_DIR": args.output_dir, "RESUME": args.resume,
        "DATASET.SOURCE_DOMAINS": args.source_domains, "DATASET.TARGET_DOMAINS": args.target_domains,
        "INPUT.TRANSFORMS": args.transforms, "TRAINER.NAME": args.trainer,
        "MODEL.BACKBONE.NAME": args.backbone, "MODEL.HEAD.NAME": args.head, "DEVICE": args.device,
    }
    for key, value in flags.items():
        if value:
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
    if args.seed is not None:
        cfg.SEED = args.seed
    if cfg.TRAINER.NAME in TRAINER_REGISTRY:  # per-dataset defaults (CoPrompt's table), which KEY VALUE overrides
        TRAINER_REGISTRY.get(cfg.TRAINER.NAME).dataset_defaults(cfg, args.model_dir if args.eval_only else "")
    merge_from_list(cfg, args.opts)
    cfg.freeze()
    return cfg


def trainer_class(cfg):
    if not cfg.TRAINER.NAME:
        raise RegistryError(f"No trainer given: pass --trainer (one of {', '.join(TRAINER_REGISTRY.names())})")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)


def existing_results(output_dir: str) -> list:
    """Result files of an earlier run in output_dir: metrics and checkpoints."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    found = [os.path.join(output_dir, f) for f in os.listdir(output_dir) if f.startswith("metrics")]
    for sub in os.listdir(output_dir):
        folder = os.path.join(output_dir, sub)
        if os.path.isdir(folder):
            found += [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("model")]
    return sorted(found)


def run(args) -> int:
    cfg = setup_cfg(args)
    trainer_cls = trainer_class(cfg)  # an unknown trainer fails before any work
    resuming = cfg.RESUME and os.path.abspath(cfg.RESUME) == os.path.abspath(cfg.OUTPUT_DIR)
    earlier = existing_results(cfg.OUTPUT_DIR)
    if earlier and not resuming:
        raise FileExistsError(
            f"{cfg.OUTPUT_DIR} already holds results of another run ({earlier[0]}); nothing was changed. "
            f"Pass --resume {cfg.OUTPUT_DIR} to continue that run, or choose another --output-dir.")
    if cfg.RESUME and not args.eval_only:
        ckpt.check_resumable(cfg.RESUME, cfg.OPTIM.MAX_EPOCH)
    # torchrun: join the process group; only the first process logs and writes files
    distributed = dist_utils.init_from_env(cfg.DEVICE, cfg.USE_CUDA)
    main_process = dist_utils.is_main_process()
    dist_utils.barrier()  # every process checked OUTPUT_DIR before any writes to it
    quiet = None
    if main_process:
        setup_logger(cfg.OUTPUT_DIR)
    else:
        quiet, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        if distributed:
            print(f"Distributed run: {dist_utils.get_world_size()} processes "
                  f"({torch.distributed.get_backend()} backend)")
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        versions = collect_versions()
        print("***************\n** Arguments **\n***************")
        for key in sorted(vars(args)):
            print(f"{key}: {getattr(args, key)}")
        print("************\n** Config **\n************")
        print(cfg.dump())
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        if cfg.OUTPUT_DIR and main_process:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
                f.write(cfg.dump())
            write_json_atomic(os.path.join(cfg.OUTPUT_DIR, "versions.json"), versions)
        trainer = trainer_cls(cfg)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return 0
        if not args.no_train:
            trainer.train()
        return 0
    finally:
        close_logger()
        if quiet is not None:
            sys.stdout.close()
            sys.stdout = quiet
        if distributed:
            dist_utils.cleanup()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, ConfigTypeError, RegistryError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
