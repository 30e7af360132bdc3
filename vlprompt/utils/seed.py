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
