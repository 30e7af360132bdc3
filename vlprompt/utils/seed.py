import contextlib
import hashlib
import random

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    """Seed python's `random`, numpy and torch, as Dassl's set_random_seed does.

    Few-shot sampling uses python's `random`, so the same seed picks the same items as the official code.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed function of the integers ``parts`` (e.g. run seed, epoch, sample index)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _seed_all(seed):
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


@contextlib.contextmanager
def seeded_rng(seed: int, restore: bool = True):
    """Run the block with python's `random`, numpy's and torch's CPU generators seeded with ``seed``: the block's
    random draws depend on ``seed`` alone. With ``restore`` the caller's states come back afterwards, so the
    process's own random streams (dropout, sampling) are left exactly where they were (about 0.3 ms, mostly
    numpy's state); a data-loader worker, whose streams serve nothing else, can skip that. CUDA generators are
    not touched."""
    if not restore:
        _seed_all(seed)
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
