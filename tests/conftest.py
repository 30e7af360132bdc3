import logging
import os

import pytest

# open_clip logs a warning for every randomly initialised model; the tests build many.
logging.getLogger().setLevel(logging.ERROR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Caches the code writes (HiCroPL's fixed text embeddings) go to a temporary folder, not ~/.cache."""
    path = tmp_path_factory.mktemp("vlprompt-cache")
    os.environ["VLPROMPT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip():
    from vlprompt.clip import load_clip

    return load_clip("vlprompt-tiny")


@pytest.fixture(scope="session")
def tokenizer():
    from vlprompt.clip import get_tokenizer

    return get_tokenizer("vlprompt-tiny")


# The trainers register their config keys on import, as the CLI does (vlprompt.config never imports them).
import vlprompt.trainers  # noqa: E402,F401
