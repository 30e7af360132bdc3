"""The in-memory cache of decoded training images and the on-disk cache of test-time preprocessing."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.config import get_cfg_default
from vlprompt.data import Datum, build_data_loader
from vlprompt.data import manager
from vlprompt.data.transforms import build_transform


def make_cfg(**dataloader):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("normalize",)  # deterministic train transform: Resize + ToTensor + Normalize
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.USE_CUDA = False
    for k, v in dataloader.items():
        cfg.DATALOADER[k] = v
    return cfg


def write_image(path, seed, size=(48, 40)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def items(tmp_path):
    out = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        write_image(path, i)
        out.append(Datum(str(path), i % 3))
    return out


def epoch(loader):
    return torch.cat([batch["img"] for batch in loader])


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    original = manager.read_image

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(manager, "read_image", counting)
    return calls


def loader(cfg, items, is_train):
    return build_data_loader(cfg, "SequentialSampler", items, batch_size=4, tfm=build_transform(cfg, is_train),
                             is_train=is_train)


def test_train_images_are_decoded_once_and_equal_the_uncached(items, count_reads):
    plain = epoch(loader(make_cfg(CACHE_TRAIN_IMAGES=False), items, True))
    count_reads.clear()
    cached = loader(make_cfg(CACHE_TRAIN_IMAGES=True), items, True)
    first = epoch(cached)
    assert len(count_reads) == 6  # all 6 decoded once up front (drop_last uses 4 of them this epoch)
    count_reads.clear()
    second = epoch(cached)
    assert count_reads == []  # no decoding after the first epoch
    assert torch.equal(first, plain[:4]) and torch.equal(second, plain[:4])


def test_train_cache_downscales_to_max_shorter_side(items):
    cached = loader(make_cfg(CACHE_TRAIN_IMAGES=True, CACHE_MAX_SIDE=20), items, True)
    epoch(cached)
    assert cached.dataset.memory_cache.get(0).size == (24, 20)  # 48x40 -> shorter side 20


def test_test_cache_equals_uncached_and_is_invalidated(items, tmp_path, count_reads):
    cache_dir = str(tmp_path / "cache")
    plain = epoch(loader(make_cfg(), items, False))

    def cached_loader(**kw):
        ld = loader(make_cfg(**kw), items, False)
        ld.dataset.enable_disk_cache(cache_dir, "Toy", "test")
        return ld

    first = cached_loader()
    count_reads.clear()
    assert torch.equal(epoch(first), plain)
    assert len(count_reads) == 6 and first.dataset.disk_cache[0].misses == 6
    count_reads.clear()
    again = cached_loader()  # another run: served from disk, no decoding
    assert torch.equal(epoch(again), plain)
    assert count_reads == [] and again.dataset.disk_cache[0].hits == 6

    # a changed file is recomputed (its mtime and size are part of the key)
    write_image(items[2].impath, 99, size=(50, 40))
    os.utime(items[2].impath, ns=(10**18, 10**18))
    fresh = epoch(loader(make_cfg(), items, False))
    assert not torch.equal(fresh[2], plain[2])
    ld = cached_loader()
    assert torch.equal(epoch(ld), fresh)
    assert ld.dataset.disk_cache[0].misses == 1 and ld.dataset.disk_cache[0].hits == 5

    # a changed transform (other interpolation) gets its own entries
    cfg = make_cfg()
    cfg.INPUT.INTERPOLATION = "bicubic"
    ld = loader(cfg, items, False)
    ld.dataset.enable_disk_cache(cache_dir, "Toy", "test")
    assert torch.equal(epoch(ld), epoch(loader(cfg, items, False)))
    assert ld.dataset.disk_cache[0].misses == 6


def test_workers_are_persistent_and_see_the_cache(items):
    plain = epoch(loader(make_cfg(CACHE_TRAIN_IMAGES=False), items, True))
    ld = loader(make_cfg(CACHE_TRAIN_IMAGES=True, NUM_WORKERS=1), items, True)
    assert ld.persistent_workers
    assert torch.equal(epoch(ld), plain) and torch.equal(epoch(ld), plain)
    assert ld.dataset.memory_cache.loaded
