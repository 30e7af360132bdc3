"""Data core: Dassl/CoOp-identical sampling, split files, few-shot caches, transforms, loaders, Synthetic."""
import hashlib
import json
import math
import os
import pickle
import random
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

from vlprompt.config import get_cfg_default
from vlprompt.data import (
    BrokenImageError, DataManager, DatasetBase, DatasetWrapper, Datum, SplitFileDataset, build_data_loader,
    build_transform, generate_fewshot_dataset, load_fewshot_cache, read_split, save_split, subsample_classes,
)
from vlprompt.datasets import build_dataset


def make_cfg(root="", **overrides):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def fields(items):
    return [(d.impath, d.label, d.domain, d.classname) for d in items]


def make_items(class_sizes, order_seed=0):
    """Items with labels interleaved in a shuffled order (first appearance != sorted label order)."""
    items = [Datum(f"/data/c{label}/{i}.jpg", label, 0, f"class {label}")
             for label, n in enumerate(class_sizes) for i in range(n)]
    random.Random(order_seed).shuffle(items)
    return items


def reference_fewshot(items, num_shots):
    """Dassl's algorithm, written independently: classes in order of first appearance, random.sample each."""
    order = list(dict.fromkeys(item.label for item in items))
    picked = []
    for label in order:
        members = [item for item in items if item.label == label]
        picked += random.sample(members, num_shots) if len(members) >= num_shots else members
    return picked


# ---------------------------------------------------------------- few-shot and base/new sampling

@pytest.mark.parametrize("seed", [1, 2])
def test_fewshot_matches_reference(seed):
    train, val = make_items([9, 7, 12, 8, 10], 0), make_items([5, 6, 4, 7, 5], 1)
    assert [i.label for i in train][:5] != sorted(i.label for i in train)[:5]

    random.seed(seed)
    ours_train = generate_fewshot_dataset(train, num_shots=4)
    ours_val = generate_fewshot_dataset(val, num_shots=min(4, 4))
    after_ours = random.random()

    random.seed(seed)
    ref_train, ref_val = reference_fewshot(train, 4), reference_fewshot(val, 4)
    assert random.random() == after_ours  # same number of random draws
    assert all(a is b for a, b in zip(ours_train, ref_train)) and len(ours_train) == len(ref_train) == 20
    assert all(a is b for a, b in zip(ours_val, ref_val))

    random.seed(seed)
    both = generate_fewshot_dataset(train, val, num_shots=4)
    assert [fields(x) for x in both] == [fields(ref_train), fields(ref_val)]


def test_fewshot_class_smaller_than_num_shots():
    items = make_items([10, 2, 10])
    random.seed(0)
    out = generate_fewshot_dataset(items, num_shots=4)
    assert sorted(i.label for i in out).count(1) == 2  # the small class keeps all of its items
    random.seed(0)
    assert fields(out) == fields(reference_fewshot(items, 4))

    random.seed(0)
    repeated = generate_fewshot_dataset(items, num_shots=4, repeat=True)
    assert [i.label for i in repeated].count(1) == 4

    assert generate_fewshot_dataset(items, num_shots=0) is items
    assert generate_fewshot_dataset(items, items, num_shots=-1) == (items, items)


def test_subsample_base_new_all_relabels():
    train, val, test = make_items([3] * 5, 0), make_items([2] * 5, 1), make_items([2] * 5, 2)
    base = subsample_classes(train, val, test, subsample="base")
    assert [sorted({i.label for i in split}) for split in base] == [[0, 1, 2]] * 3
    assert {i.classname for i in base[0]} == {"class 0", "class 1", "class 2"}

    new = subsample_classes(train, val, test, subsample="new")
    assert [sorted({i.label for i in split}) for split in new] == [[0, 1]] * 3
    assert {(i.label, i.classname) for i in new[2]} == {(0, "class 3"), (1, "class 4")}
    assert len(new[0]) == 6 and all(i.impath.startswith(("/data/c3/", "/data/c4/")) for i in new[0])

    assert subsample_classes(train, val, test, subsample="all") == (train, val, test)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(train, subsample="novel")

    odd = subsample_classes(make_items([1] * 7), subsample="base")[0]
    assert len({i.label for i in odd}) == math.ceil(7 / 2)


def test_dataset_base_classes_from_train_x():
    train = [Datum("/a.jpg", 2, classname="cat"), Datum("/b.jpg", 0, classname="dog")]
    test = [Datum("/c.jpg", 5, classname="cow")]
    ds = DatasetBase(train_x=train, test=test)
    assert ds.num_classes == 3  # max label + 1, from train_x only
    assert ds.lab2cname == {0: "dog", 2: "cat"} and ds.classnames == ["dog", "cat"]


# ---------------------------------------------------------------- split files and few-shot caches

def test_read_save_split_round_trip(tmp_path):
    image_dir = str(tmp_path / "images")
    items = [Datum(os.path.join(image_dir, "a", f"{i}.jpg"), i % 2, classname=f"name {i % 2}") for i in range(4)]
    path = tmp_path / "split_zhou_X.json"
    save_split(items[:2], items[2:3], items[3:], str(path), image_dir)

    raw = json.loads(path.read_text())
    assert raw["train"] == [["a/0.jpg", 0, "name 0"], ["a/1.jpg", 1, "name 1"]]
    assert path.read_text().startswith('{\n    "train": [\n        [\n            "a/0.jpg",')

    train, val, test = read_split(str(path), image_dir)
    assert fields(train + val + test) == fields(items)


def write_png(path, colour=(255, 0, 0), size=(20, 12)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return str(path)


class TinyReader(SplitFileDataset):
    """A benchmark-style reader: only folder and split names."""

    dataset_dir = "tiny_set"
    image_dir = "images"
    split_file = "split_zhou_Tiny.json"


def make_tiny_dataset(root, n_classes=4, per_split=(5, 3, 2)):
    ds_dir = os.path.join(root, TinyReader.dataset_dir)
    image_dir = os.path.join(ds_dir, "images")
    splits = []
    for split, n in zip(("train", "val", "test"), per_split):
        splits.append([
            Datum(write_png(os.path.join(image_dir, f"c{y}", f"{split}{i}.png"), (40 * y, 0, 0)), y,
                  classname=f"thing {y}")
            for y in range(n_classes) for i in range(n)
        ])
    save_split(*splits, os.path.join(ds_dir, TinyReader.split_file), image_dir)
    return ds_dir, splits


def install_fake_dassl():
    """A stand-in for the real dassl package, enough to pickle/unpickle Datum like the official code."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    modules = {name: types.ModuleType(name) for name in names}

    class Datum:  # the official class stats the file; not needed here
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = "dassl.data.datasets.base_dataset"
    Datum.__qualname__ = "Datum"
    modules["dassl.data.datasets.base_dataset"].Datum = Datum
    modules["dassl.data.datasets"].Datum = Datum
    sys.modules.update(modules)
    return Datum, names


def write_official_cache(path, train, val):
    """Pickle {"train", "val"} with dassl's Datum class, then remove the fake dassl again."""
    DasslDatum, names = install_fake_dassl()
    try:
        data = {key: [DasslDatum(d.impath, d.label, d.domain, d.classname) for d in items]
                for key, items in (("train", train), ("val", val))}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for name in names:
            sys.modules.pop(name)


def test_official_fewshot_pickle_loads_into_our_datum(tmp_path):
    ds_dir, (train, val, _) = make_tiny_dataset(str(tmp_path))
    cache = os.path.join(ds_dir, "split_fewshot", "shot_2-seed_1.pkl")
    official_train, official_val = train[::3], val[::2]  # a sample random sampling would not give
    write_official_cache(cache, official_train, official_val)
    assert "dassl" not in sys.modules

    loaded_train, loaded_val = load_fewshot_cache(cache, ds_dir)
    assert all(type(d) is Datum for d in loaded_train + loaded_val)
    assert fields(loaded_train) == fields(official_train) and fields(loaded_val) == fields(official_val)

    # the reader uses the cache as it is instead of sampling
    cfg = make_cfg(tmp_path, SEED=1, DATASET__NUM_SHOTS=2)
    ds = TinyReader(cfg)
    assert fields(ds.train_x) == fields(official_train) and fields(ds.val) == fields(official_val)


def test_our_cache_matches_fresh_sampling_and_loads_in_official_code(tmp_path):
    ds_dir, (train, val, _) = make_tiny_dataset(str(tmp_path))
    cfg = make_cfg(tmp_path, SEED=3, DATASET__NUM_SHOTS=2)
    random.seed(3)
    ds = TinyReader(cfg)
    random.seed(3)
    assert fields(ds.train_x) == fields(reference_fewshot(train, 2))
    assert fields(ds.val) == fields(reference_fewshot(val, 2))

    cache = os.path.join(ds_dir, "split_fewshot", "shot_2-seed_3.pkl")
    DasslDatum, names = install_fake_dassl()
    try:
        with open(cache, "rb") as f:
            data = pickle.load(f)  # what the official code does
    finally:
        for name in names:
            sys.modules.pop(name)
    assert all(type(d) is DasslDatum for d in data["train"])
    assert [d._impath for d in data["train"]] == [d.impath for d in ds.train_x]

    random.seed(99)  # a second build reads the cache: the sample does not depend on the random state
    assert fields(TinyReader(cfg).train_x) == fields(ds.train_x)


def test_moved_dataset_paths_are_rerooted(tmp_path):
    ds_dir, (train, val, _) = make_tiny_dataset(str(tmp_path / "new_home"))
    old_root = "/old/machine/data/tiny_set"
    moved = [Datum(d.impath.replace(ds_dir, old_root), d.label, d.domain, d.classname) for d in train[:4]]
    cache = os.path.join(ds_dir, "split_fewshot", "shot_1-seed_1.pkl")
    write_official_cache(cache, moved, [])

    loaded_train, _ = load_fewshot_cache(cache, ds_dir)
    assert fields(loaded_train) == fields(train[:4])

    # still missing after re-rooting: sample again, with a warning, and keep the file
    gone = [Datum("/old/machine/data/tiny_set/images/c0/nothere.png", 0, classname="thing 0")]
    write_official_cache(cache, gone, [])
    with pytest.warns(UserWarning, match="not under"):
        assert load_fewshot_cache(cache, ds_dir) is None
    cfg = make_cfg(tmp_path / "new_home", SEED=1, DATASET__NUM_SHOTS=1)
    random.seed(1)
    with pytest.warns(UserWarning, match="sampling the few-shot split again"):
        ds = TinyReader(cfg)
    random.seed(1)
    assert fields(ds.train_x) == fields(reference_fewshot(train, 1))
    assert os.path.exists(cache)


def test_reader_subsamples_after_fewshot(tmp_path):
    make_tiny_dataset(str(tmp_path), n_classes=5)
    ds = TinyReader(make_cfg(tmp_path, SEED=1, DATASET__NUM_SHOTS=2, DATASET__SUBSAMPLE_CLASSES="new"))
    assert ds.num_classes == 2 and ds.classnames == ["thing 3", "thing 4"]
    assert len(ds.train_x) == 4 and len(ds.val) == 4 and len(ds.test) == 4


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny_set"):
        TinyReader(make_cfg(tmp_path))


# ---------------------------------------------------------------- transforms

def test_transform_shapes_and_deterministic_test_transform():
    cfg = make_cfg()
    train_tfm, test_tfm = build_transform(cfg, is_train=True), build_transform(cfg, is_train=False)
    for size in [(32, 32), (300, 120)]:
        img = Image.new("RGB", size, (10, 200, 30))
        img.putpixel((1, 1), (255, 255, 255))
        assert train_tfm(img).shape == (3, 224, 224)
        a, b = test_tfm(img), test_tfm(img)
        assert a.shape == (3, 224, 224) and torch.equal(a, b)

    cfg.INPUT.SIZE = (64, 48)
    cfg.INPUT.TRANSFORMS = ("random_crop", "colorjitter", "randomgrayscale", "gaussian_blur", "cutout",
                            "normalize", "gaussian_noise", "instance_norm", "random_translation", "center_crop")
    assert build_transform(cfg, is_train=True)(Image.new("RGB", (80, 70))).shape == (3, 64, 48)
    assert build_transform(cfg, is_train=False)(Image.new("RGB", (80, 70))).shape == (3, 64, 48)


def test_unknown_transform_and_no_transform():
    cfg = make_cfg()
    cfg.INPUT.TRANSFORMS = ("random_flip", "random_spin")
    with pytest.raises(ValueError, match="random_spin.*Supported: random_flip"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.TRANSFORMS = ("randaugment2",)  # Dassl's "randaugment" is implemented (CoPrompt); its variants are not
    with pytest.raises(ValueError, match="not implemented"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg, is_train=True) is None


# ---------------------------------------------------------------- loaders and broken images

def test_broken_image_is_named_or_skipped_and_counted(tmp_path):
    good = Datum(write_png(str(tmp_path / "good.png")), 0)
    broken_path = tmp_path / "broken.jpg"
    broken_path.write_bytes(b"this is not a jpeg")
    broken = Datum(str(broken_path), 1)
    cfg = make_cfg()
    tfm = build_transform(cfg, is_train=False)

    with pytest.raises(BrokenImageError, match="broken.jpg"):
        DatasetWrapper(cfg, [good, broken], transform=tfm)[1]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        DatasetWrapper(cfg, [Datum(str(tmp_path / "missing.png"), 0)], transform=tfm)[0]

    cfg.DATALOADER.SKIP_BROKEN_IMAGES = True
    loader = build_data_loader(cfg, "SequentialSampler", [good, broken, good], batch_size=3, tfm=tfm,
                               is_train=False)
    with pytest.warns(UserWarning, match="broken.jpg"):
        batches = list(loader)
    assert len(batches) == 1 and batches[0]["img"].shape[0] == 2 and batches[0]["index"].tolist() == [0, 2]
    assert loader.dataset.num_skipped == 1


def test_drop_last_only_with_a_full_training_batch(tmp_path):
    cfg = make_cfg()
    cfg.INPUT.SIZE = (16, 16)
    items = [Datum(write_png(str(tmp_path / f"{i}.png")), 0) for i in range(5)]
    tfm = build_transform(cfg, is_train=False)
    assert len(build_data_loader(cfg, "RandomSampler", items, batch_size=4, tfm=tfm, is_train=True)) == 1
    assert len(build_data_loader(cfg, "RandomSampler", items[:3], batch_size=4, tfm=tfm, is_train=True)) == 1
    assert len(build_data_loader(cfg, "SequentialSampler", items, batch_size=4, tfm=tfm, is_train=False)) == 2
    with pytest.raises(ValueError, match="RandomDomainSampler"):
        build_data_loader(cfg, "RandomDomainSampler", items, batch_size=4, tfm=tfm)


# ---------------------------------------------------------------- Synthetic + DataManager

@pytest.mark.parametrize("subsample", ["all", "base", "new"])
def test_data_manager_on_synthetic(tmp_path, subsample, capsys):
    cfg = make_cfg(tmp_path, SEED=1, DATASET__NAME="Synthetic", DATASET__NUM_SHOTS=2,
                   DATASET__SUBSAMPLE_CLASSES=subsample)
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    dm = DataManager(cfg)
    assert "# classes" in capsys.readouterr().out

    n = 10 if subsample == "all" else 5
    assert dm.num_classes == n == len(dm.classnames) == len(dm.lab2cname)
    assert len(dm.dataset.train_x) == 2 * n and len(dm.dataset.val) == 2 * n and len(dm.dataset.test) == 4 * n
    if subsample == "base":
        assert dm.classnames[0] == "red circle"
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "domain", "impath", "index"}
    assert batch["img"].shape == (4, 3, 32, 32) and batch["label"].max() < n
    test_batch = next(iter(dm.test_loader))
    assert test_batch["img"].shape == (8, 3, 32, 32)
    assert dm.val_loader is not None and dm.num_skipped_images == 0
    assert os.path.exists(tmp_path / "synthetic" / "split_fewshot" / "shot_2-seed_1.pkl")
    assert not [name for name in os.listdir(tmp_path) if name != "synthetic"]  # no temporary folder left


def test_synthetic_generation_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        build_dataset(make_cfg(tmp_path / name, DATASET__NAME="Synthetic"))
        folder = tmp_path / name / "synthetic"
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        digests.append([(str(p.relative_to(folder)), hashlib.md5(p.read_bytes()).hexdigest()) for p in files])
    assert digests[0] == digests[1] and len(digests[0]) == 10 * 12 + 1


def test_synthetic_root_errors_and_unknown_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_parent"):
        build_dataset(make_cfg(tmp_path / "no_parent" / "data", DATASET__NAME="Synthetic"))
    with pytest.raises(KeyError, match="Synthetic"):
        build_dataset(make_cfg(tmp_path, DATASET__NAME="OxfordPetz"))
    with pytest.raises(ValueError, match="DATASET.NAME"):
        build_dataset(make_cfg(tmp_path))


def test_datasets_import_first():
    # vlprompt.datasets -> synthetic -> vlprompt.data -> manager -> vlprompt.datasets (half-imported)
    subprocess.run([sys.executable, "-c", "import vlprompt.datasets"], check=True)
