import contextlib
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
    words = np.random.SeedSequence([int(p) % 2 ** 64 for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run the block with python's `random`, numpy's and torch's CPU generators seeded with ``seed``, and give
    the caller's states back afterwards: the block's random draws depend on ``seed`` alone, and the process's
    own random streams (dropout, sampling) are left exactly where they were. CUDA generators are not touched."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
