"""Checkpoints in Dassl's layout (<dir>/<name>/model.pth.tar-<epoch>, model-best.pth.tar, `checkpoint`).

Writes are atomic (temp file + rename): an interrupted save never leaves a half-written checkpoint.
Reads go through a restricted unpickler: a checkpoint is untrusted input, and official ones pickle Dassl
objects (the warmup scheduler) that must load without Dassl installed and without running pickled code.
"""
import os
import random

import numpy as np
import torch

from vlprompt.utils import safe_pickle

BEST_NAME = "model-best.pth.tar"
POINTER_NAME = "checkpoint"  # Dassl's text file naming the latest regular checkpoint


def checkpoint_name(epoch: int) -> str:
    return f"model.pth.tar-{epoch}"


def _atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state: dict, save_dir: str, model_name: str = "") -> str:
    """Save `state` (Dassl keys: state_dict, epoch, optimizer, scheduler, val_result) under save_dir."""
    os.makedirs(save_dir, exist_ok=True)
    model_name = model_name or checkpoint_name(state["epoch"])
    path = os.path.join(save_dir, model_name)
    _atomic_torch_save(state, path)
    if model_name != BEST_NAME:
        # Only regular checkpoints are resume points (Dassl also points at model-best, which breaks resume).
        tmp = os.path.join(save_dir, f".{POINTER_NAME}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(model_name + "\n")
        os.replace(tmp, os.path.join(save_dir, POINTER_NAME))
    print(f"Checkpoint saved to {path}")
    return path


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Model not found at "{path}"')
    ckpt = safe_pickle.torch_load(path, map_location="cpu")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a checkpoint dict (got {type(ckpt).__name__})")
    if "state_dict" not in ckpt:  # a bare state dict
        ckpt = {"state_dict": ckpt}
    return ckpt


def latest_checkpoint(save_dir: str):
    """Path of the latest regular checkpoint recorded in save_dir, or None."""
    pointer = os.path.join(save_dir, POINTER_NAME)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.readline().strip()
    path = os.path.join(save_dir, name)
    return path if os.path.isfile(path) else None


def refuse_training_past_the_end(path: str, state: dict, max_epoch: int) -> None:
    """A checkpoint written when training finished holds no optimizer state: it cannot train on to more epochs."""
    if state.get("training_finished") and state.get("max_epoch") != max_epoch:
        raise ValueError(
            f"{path} was written when training finished (epoch {state['epoch']} of OPTIM.MAX_EPOCH "
            f"{state.get('max_epoch')}) and holds only the weights, not the optimizer state needed to train on "
            f"to OPTIM.MAX_EPOCH {max_epoch}; nothing was changed. Train in a new output directory instead.")


def check_resumable(directory: str, max_epoch: int) -> None:
    """refuse_training_past_the_end for every model's latest checkpoint under directory (before any file of the
    run is touched)."""
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        path = latest_checkpoint(os.path.join(directory, name))
        if path:
            refuse_training_past_the_end(path, load_checkpoint(path), max_epoch)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
