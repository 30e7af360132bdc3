"""The command line of the official Dassl-based train.py, plus --device.

Merge order as Dassl: defaults (with every trainer's keys) <- dataset yaml <- method yaml <- flags <- KEY VALUE.
One difference: `--seed 0` is a real seed (the official `if args.seed:` silently drops it).
"""
import argparse
import datetime
import errno
import os
import shlex
import shutil
import sys
import traceback

import torch
import yaml

import vlprompt.trainers  # noqa: F401  (registers every trainer and its config keys)
from vlprompt.config import ConfigError, ConfigTypeError, get_cfg_default, merge_from_file, merge_from_list
from vlprompt.engine import checkpoint as ckpt
from vlprompt.engine import distributed as dist_utils
from vlprompt.engine.trainer import TRAINER_REGISTRY
from vlprompt.utils import stop as stop_request
from vlprompt.utils.logger import (
    append_to_log, close_logger, collect_versions, forget_log, setup_logger, write_json_atomic,
)
from vlprompt.utils.registry import RegistryError
from vlprompt.utils.run_lock import RunLock
from vlprompt.utils.seed import set_random_seed

# Config keys a resumed run may change: where things are and how they are computed, not what is computed
# (a resumed run gives the same result with any NUM_WORKERS; see DatasetWrapper).
RESUME_MAY_CHANGE = (
    "RESUME", "OUTPUT_DIR", "DEVICE", "USE_CUDA", "VERBOSE", "DATASET.ROOT", "DATALOADER.NUM_WORKERS",
    "DATALOADER.TEST_CACHE_DIR", "DATALOADER.CACHE_TRAIN_IMAGES", "DATALOADER.CACHE_MAX_MB", "TRAIN.PRINT_FREQ",
)


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
    p.add_argument("--allow-changed-config", action="store_true",
                   help="with --resume: continue even though the config differs from the run's own config.yaml")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (also: environment variable VLPROMPT_DEBUG=1)")
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


def _flatten(node, prefix=""):
    out = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(cfg, config_file):
    """[(key, value in config_file, value now)] for the keys a resumed run may not change."""
    with open(config_file) as f:
        before = _flatten(yaml.safe_load(f))
    now = _flatten(yaml.safe_load(cfg.dump()))
    return [(k, before[k], now[k]) for k in sorted(now)
            if k in before and before[k] != now[k] and k not in RESUME_MAY_CHANGE]


def check_resume_config(cfg, allow_changes):
    """A resumed run continues the run in RESUME with that run's config: stop on a difference, listing the keys,
    unless --allow-changed-config."""
    own = os.path.join(cfg.RESUME, "config.yaml")
    if not os.path.isfile(own):
        return
    changes = config_changes(cfg, own)
    if not changes:
        return
    listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
    if allow_changes:
        print(f"Resuming with a changed config (--allow-changed-config): {listing}")
        return
    raise ConfigError(
        f"The config differs from the one of the run being resumed ({own}): {listing}. A resumed run continues "
        f"that run; nothing was changed. Pass the same options as that run, or --allow-changed-config to continue "
        f"with these values, or train in a new --output-dir.")


def context_length_problems(cfg):
    """The active trainer's N_CTX* keys below 1 where that prompt is used: TRAINER.<NAME>.N_CTX<suffix> needs a
    context vector unless its PROMPT_DEPTH<suffix> exists and is 0 (that tower is not prompted)."""
    name = cfg.TRAINER.NAME
    key = getattr(TRAINER_REGISTRY.get(name), "config_key", "") if name in TRAINER_REGISTRY else name.upper()
    node = cfg.TRAINER.get(key) if key else None  # the trainer's own node (CoPrompt's is mixed case)
    if not hasattr(node, "items"):
        return []
    problems = []
    for ctx_key, value in node.items():
        if not ctx_key.startswith("N_CTX") or not isinstance(value, int) or value >= 1:
            continue
        depth_key = "PROMPT_DEPTH" + ctx_key[len("N_CTX"):]
        depth = node.get(depth_key)
        if isinstance(depth, int) and depth < 1:
            continue
        why = f" (TRAINER.{key}.{depth_key} is {depth})" if depth is not None else ""
        problems.append(f"TRAINER.{key}.{ctx_key} is {value}: {name} needs at least 1 context vector there{why}")
    return problems


def validate_config(cfg, args):
    """Checks before any work starts; each message names the key."""
    training = not args.eval_only and not args.no_train
    if training and cfg.OPTIM.MAX_EPOCH < 1:
        raise ConfigTypeError(f"OPTIM.MAX_EPOCH is {cfg.OPTIM.MAX_EPOCH}: a training run needs at least 1 epoch "
                              f"(to evaluate without training, pass --eval-only)")
    problems = context_length_problems(cfg)
    if problems:
        raise ConfigTypeError("; ".join(problems))


def count_learned_parameters(trainer) -> int:
    models = getattr(trainer, "_models", {})
    return sum(p.numel() for m in models.values() for p in m.parameters() if p.requires_grad)


def resume_command(argv, output_dir):
    """The command that resumes this run: the same arguments plus --resume OUTPUT_DIR."""
    argv = list(argv)
    if "--resume" not in argv:
        argv = ["--resume", output_dir] + argv  # before the KEY VALUE options, which take the rest of the line
    return "python tools/train.py " + shlex.join(argv)


def run(args) -> int:
    cfg = setup_cfg(args)
    trainer_cls = trainer_class(cfg)  # an unknown trainer fails before any work
    validate_config(cfg, args)
    resuming = cfg.RESUME and os.path.abspath(cfg.RESUME) == os.path.abspath(cfg.OUTPUT_DIR)
    # torchrun: the first process (RANK 0) holds the folder for all of them
    lock = RunLock(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR and int(os.environ.get("RANK", "0") or 0) == 0 else None
    if lock is not None:
        lock.acquire()  # before looking at the folder: of two runs started together, one stops here
    try:
        return _run_locked(args, cfg, trainer_cls, resuming)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args, cfg, trainer_cls, resuming) -> int:
    earlier = existing_results(cfg.OUTPUT_DIR)
    if earlier and not resuming:
        raise FileExistsError(
            f"{cfg.OUTPUT_DIR} already holds results of another run ({earlier[0]}); nothing was changed. "
            f"Pass --resume {cfg.OUTPUT_DIR} to continue that run, or choose another --output-dir.")
    if cfg.RESUME and not args.eval_only:
        ckpt.check_resumable(cfg.RESUME, cfg.OPTIM.MAX_EPOCH)
        check_resume_config(cfg, args.allow_changed_config)
    # torchrun: join the process group; only the first process logs and writes files
    distributed = dist_utils.init_from_env(cfg.DEVICE, cfg.USE_CUDA)
    main_process = dist_utils.is_main_process()
    dist_utils.barrier()  # every process checked OUTPUT_DIR before any writes to it
    quiet = None
    if main_process:
        setup_logger(cfg.OUTPUT_DIR)
    else:
        quiet, sys.stdout = sys.stdout, open(os.devnull, "w")
    stop_request.install()
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
            if key != "argv":
                print(f"{key}: {getattr(args, key)}")
        print("************\n** Config **\n************")
        print(cfg.dump())
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        if cfg.OUTPUT_DIR and main_process:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            config_file = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
            if os.path.exists(config_file):  # a resumed run: the run's own config stays as it was
                config_file = os.path.join(cfg.OUTPUT_DIR, datetime.datetime.now().strftime(
                    "config-%Y-%m-%d-%H-%M-%S.yaml"))
            with open(config_file + ".tmp", "w") as f:
                f.write(cfg.dump())
            os.replace(config_file + ".tmp", config_file)
            write_json_atomic(os.path.join(cfg.OUTPUT_DIR, "versions.json"), versions)
        trainer = trainer_cls(cfg)
        learned = count_learned_parameters(trainer)
        print(f"Learned parameters: {learned:,}" + (" (nothing is trained: a zero-shot model)" if not learned else ""))
        if args.eval_only:
            if learned and not args.model_dir:
                print(f"Warning: --eval-only without --model-dir: {cfg.TRAINER.NAME}'s {learned:,} learned "
                      f"parameters are untrained (their initial values); pass --model-dir to evaluate a trained run")
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return 0
        if not args.no_train:
            trainer.train()
        return 0
    finally:
        stop_request.uninstall()
        close_logger()
        if quiet is not None:
            sys.stdout.close()
            sys.stdout = quiet
        if distributed:
            dist_utils.cleanup()


def _disk_full_message(e, args):
    folder = os.path.dirname(os.path.abspath(e.filename)) if getattr(e, "filename", None) else \
        os.path.abspath(args.output_dir or ".")
    probe = folder
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        free = f"{shutil.disk_usage(probe).free / 2 ** 20:,.1f} MB free"
    except OSError:
        free = "free space unknown"
    what = "disk quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
    return (f"{what} while writing in {folder} ({free}); the files written before are kept. Free some space, "
            f"then resume with: {resume_command(args.argv, args.output_dir)}" if args.output_dir else
            f"{what} while writing in {folder} ({free})")


def error_message(e, args):
    """(message, exit status) for an error that ends the run."""
    if isinstance(e, stop_request.TrainingInterrupted):
        return f"{e}. Resume with: {resume_command(args.argv, args.output_dir)}", 143
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full_message(e, args), 1
    if isinstance(e, FloatingPointError):
        return str(e), 3
    if isinstance(e, (ConfigError, ConfigTypeError, RegistryError, FileNotFoundError, FileExistsError)):
        return str(e), 2
    text = str(e) if not isinstance(e, KeyError) or not e.args else str(e.args[0])
    # messages written for users name the problem; others get their type, for a bug report
    plain = isinstance(e, (OSError, ValueError, RuntimeError)) and type(e).__module__.startswith("vlprompt")
    return (text if plain else f"{type(e).__name__}: {text}") + " (run with --debug for the traceback)", 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    forget_log()
    debug = args.debug or os.environ.get("VLPROMPT_DEBUG", "") not in ("", "0")
    try:
        return run(args)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # every error ends as one message (and in log.txt), the traceback with --debug
        message, status = error_message(e, args)
        print(f"error: {message}", file=sys.stderr)
        append_to_log(f"error: {message}")
        if debug:
            append_to_log(traceback.format_exc())
            raise
        return status


if __name__ == "__main__":
    sys.exit(main())
