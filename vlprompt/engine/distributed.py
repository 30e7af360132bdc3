"""Multi-process training with torchrun: process group, rank helpers, samplers and the exact gather of
evaluation results.

`torchrun --nproc_per_node N tools/train.py ...` sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT);
init_from_env() starts the process group from them: nccl on CUDA (one GPU per process, cuda:LOCAL_RANK),
gloo on a CPU. Without those variables (or with WORLD_SIZE 1) everything here is a no-op.
"""
import math
import os

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["env_world_size", "is_distributed", "get_rank", "get_world_size", "is_main_process", "barrier",
           "init_from_env", "cleanup", "per_rank_batch_size", "DistributedSampler", "all_gather_object"]


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def init_from_env(device_name: str = "auto", use_cuda: bool = True) -> bool:
    """Join the process group torchrun describes in the environment; False when there is none (1 process).
    Returns True when this call (or an earlier one) set up a group of several processes."""
    if env_world_size() <= 1:
        return False
    if is_distributed():
        return True
    name = (device_name or "auto").lower()
    on_cuda = name.startswith("cuda") or (name == "auto" and use_cuda and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return True


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch_size(batch_size: int, what: str = "DATALOADER.TRAIN_X.BATCH_SIZE") -> int:
    """The global batch split over the processes; it must divide evenly, or the gradient would not be the
    mean over the global batch."""
    world = get_world_size()
    if batch_size % world:
        raise ValueError(f"{what} {batch_size} is the global batch and must be divisible by the number of "
                         f"processes ({world}); choose e.g. {max(world, batch_size - batch_size % world)}")
    return batch_size // world


class DistributedSampler(Sampler):
    """Rank r of W takes positions r, r + W, r + 2W, ... of one index order shared by all ranks (the same
    permutation for shuffling: a generator seeded with seed + epoch, set_epoch() each epoch).

    With shuffle=False the global batch k of W ranks (per-rank batch B/W) holds exactly the items of batch k of
    one process with batch B, so a run with N processes computes the same mean gradient as one process.
    drop_last drops the tail that would not fill every rank; otherwise the order is padded by repeating its
    first items (evaluation removes the duplicates by their dataset index)."""

    def __init__(self, data_source, shuffle=True, seed=0, drop_last=False, num_replicas=None, rank=None):
        self.n = len(data_source)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        self.epoch = 0
        if drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            order = order[:self.total_size]
        else:
            while len(order) < self.total_size:  # a tiny set can need more than one repetition
                order += order[:self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])

    def __len__(self):
        return self.num_samples


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (just [obj] in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
