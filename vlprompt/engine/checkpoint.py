"""Checkpoints in Dassl's layout (<dir>/<name>/model.pth.tar-<epoch>, model-best.pth.tar, `checkpoint`).

Writes are atomic (temp file + rename): an interrupted save never leaves a half-written checkpoint, and the
temporary files an interrupted save left behind are removed at the next save in that folder. Every file written
here holds a SHA-256 checksum of its contents (tensors byte for byte), verified on load; official checkpoints
have none and load as before.
Reads go through a restricted unpickler: a checkpoint is untrusted input, and official ones pickle Dassl
objects (the warmup scheduler) that must load without Dassl installed and without running pickled code. A
tensor that declares more bytes than the file holds (a compressed bomb) is refused before it is allocated.
"""
import hashlib
import os
import random
import re
import zipfile

import numpy as np
import torch

from vlprompt.utils import safe_pickle

BEST_NAME = "model-best.pth.tar"
INTERRUPTED_NAME = "model-interrupted.pth.tar"  # a resume point in the middle of an epoch (SIGTERM)
POINTER_NAME = "checkpoint"  # Dassl's text file naming the latest regular checkpoint
CHECKSUM_KEY = "checksum"
_TEMP_FILE = re.compile(r"^(.+\.tmp\d+|\." + POINTER_NAME + r"\.tmp\d+)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, not a checkpoint, corrupted, or absurd."""


def checkpoint_name(epoch: int) -> str:
    return f"model.pth.tar-{epoch}"


def state_checksum(state) -> str:
    """SHA-256 over a checkpoint's contents in order: each tensor's and array's dtype, shape and bytes, and the
    plain values (numbers, strings) with their keys; other objects count by type name."""
    digest = hashlib.sha256()

    def feed(obj, where):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"{where}:{t.dtype}:{tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, np.ndarray):
            digest.update(f"{where}:{obj.dtype}:{obj.shape}\n".encode())
            digest.update(np.ascontiguousarray(obj).tobytes())
        elif isinstance(obj, dict):
            for key, value in obj.items():
                feed(value, f"{where}/{key!r}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                feed(value, f"{where}[{i}]")
        elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
            digest.update(f"{where}={obj!r}\n".encode())
        else:
            digest.update(f"{where}:{type(obj).__name__}\n".encode())

    feed({k: v for k, v in state.items() if k != CHECKSUM_KEY}, "")
    return digest.hexdigest()


def remove_stale_temp_files(save_dir: str) -> list:
    """Delete the temporary files of saves that were interrupted (a killed process); one run owns its output
    folder (the CLI's lock), so no other process is writing them."""
    removed = []
    for name in os.listdir(save_dir):
        if _TEMP_FILE.match(name):
            try:
                os.remove(os.path.join(save_dir, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        print(f"Removed {len(removed)} temporary file(s) of an interrupted save in {save_dir}: {', '.join(removed)}")
    return removed


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
    remove_stale_temp_files(save_dir)
    model_name = model_name or checkpoint_name(state["epoch"])
    path = os.path.join(save_dir, model_name)
    state = dict(state)
    state[CHECKSUM_KEY] = {"sha256": state_checksum(state)}
    _atomic_torch_save(state, path)
    if model_name != BEST_NAME:
        # Only regular checkpoints are resume points (Dassl also points at model-best, which breaks resume).
        tmp = os.path.join(save_dir, f".{POINTER_NAME}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(model_name + "\n")
        os.replace(tmp, os.path.join(save_dir, POINTER_NAME))
        interrupted = os.path.join(save_dir, INTERRUPTED_NAME)
        if model_name != INTERRUPTED_NAME and os.path.exists(interrupted):
            os.remove(interrupted)  # a later resume point replaces it
    print(f"Checkpoint saved to {path}")
    return path


def _check_declared_sizes(path: str, size: int) -> None:
    """torch.save stores its records uncompressed, so none can unpack to more than the file's size: a record
    that does is a compression bomb, refused before anything is unpacked."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > size:
                raise CheckpointError(
                    f"Checkpoint {path} is refused: its record {info.filename} declares {info.file_size:,} bytes "
                    f"unpacked in a file of {size:,} bytes (a compressed record; torch.save never writes one)")


def load_checkpoint(path: str) -> dict:
    """A checkpoint as a dict with "state_dict"; CheckpointError (naming the path) for a file that is empty,
    not a checkpoint, fails its checksum or declares absurd tensor sizes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Model not found at "{path}"')
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): an interrupted copy? Copy or train it again")
    try:
        _check_declared_sizes(path, size)
        ckpt = safe_pickle.torch_load(path, map_location="cpu", max_storage_bytes=size)
    except CheckpointError:
        raise
    except safe_pickle.StorageTooLargeError as e:
        raise CheckpointError(f"Checkpoint {path} is refused: {e}") from None
    except MemoryError:
        raise CheckpointError(f"Checkpoint {path} is refused: loading it ran out of memory") from None
    except Exception as e:  # random bytes, truncation, a broken zip: torch and pickle raise many kinds
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(e).__name__}: {e}); the file is "
                              f"damaged or not a PyTorch checkpoint") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint {path} is not a checkpoint dict (got {type(ckpt).__name__})")
    stored = ckpt.get(CHECKSUM_KEY)
    if stored is not None:
        expected = stored.get("sha256") if isinstance(stored, dict) else None
        actual = state_checksum(ckpt)
        if expected != actual:
            raise CheckpointError(f"Checkpoint {path} is corrupted: its contents do not match the checksum written "
                                  f"with it (sha256 {str(expected)[:12]}..., computed {actual[:12]}...)")
        ckpt = {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}
    if "state_dict" not in ckpt:  # a bare state dict
        ckpt = {"state_dict": ckpt}
    return ckpt


def latest_checkpoint(save_dir: str):
    """Path of the latest regular checkpoint recorded in save_dir, or None. The pointer file may only name a
    file in its own folder."""
    pointer = os.path.join(save_dir, POINTER_NAME)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, errors="replace") as f:
        name = f.readline(4096).strip()
    if not name:
        return None
    if name in (".", "..") or os.path.basename(name) != name or "/" in name or "\\" in name or os.path.isabs(name):
        raise CheckpointError(f"The pointer file {pointer} names {name!r}, which is not a file in its own folder; "
                              f"it may only name a checkpoint next to it (e.g. {checkpoint_name(1)})")
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
