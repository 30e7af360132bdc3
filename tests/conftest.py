import logging
import os

import pytest

# open_clip logs a warning for every randomly initialised model; the tests build many.
logging.getLogger().setLevel(logging.ERROR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_clip():
    from vlprompt.clip import load_clip

    return load_clip("vlprompt-tiny")


@pytest.fixture(scope="session")
def tokenizer():
    from vlprompt.clip import get_tokenizer

    return get_tokenizer("vlprompt-tiny")
