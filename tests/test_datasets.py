"""The 15 benchmark readers on their miniature layouts (vlprompt.datasets.fixtures), against references
written here from CoOp's logic: items, labels, class names, the splits CoOp builds when a split file is
missing, few-shot picks per seed, base/new halves, and the official pickles (few-shot caches, ImageNet's
preprocessed.pkl)."""
import json
import math
import os
import pickle
import random
import shutil
import sys
import types

import numpy as np
import pytest
from scipy.io import loadmat

from vlprompt.config import get_cfg_default
from vlprompt.data import Datum
from vlprompt.datasets import DATASET_REGISTRY, build_dataset
from vlprompt.datasets.fixtures import FIXTURE_DATASETS, write_fixture_data

IMAGENET = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]
# What CoOp's readers make of the fixtures: class names in label order and (train, val, test) sizes
EXPECTED = {
    "ImageNet": (IMAGENET, (15, 10, 10)),
    "Caltech101": (["face", "leopard", "accordion", "airplane"], (12, 4, 8)),
    "OxfordPets": (["abyssinian", "american_bulldog", "basset_hound", "bengal"], (12, 4, 8)),
    "StanfordCars": (["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi R8 Coupe", "2012 BMW M3 Coupe"],
                     (12, 4, 8)),
    "OxfordFlowers": (["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"], (12, 4, 8)),
    "Food101": (["apple_pie", "baby_back_ribs", "baklava"], (9, 3, 6)),
    "FGVCAircraft": (["707-320", "A300B4", "Cessna 172", "F/A-18"], (12, 4, 8)),
    "SUN397": (["abbey", "outdoor apartment_building", "bedroom", "outdoor church"], (12, 4, 8)),
    "DescribableTextures": (["banded", "blotchy", "braided", "bubbly"], (12, 4, 8)),
    "EuroSAT": (["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"], (12, 4, 8)),
    "UCF101": (["Apply_Eye_Makeup", "Basketball", "Handstand_Pushups", "Yo_Yo"], (12, 4, 8)),
    "ImageNetV2": (IMAGENET, (10, 0, 10)),
    "ImageNetSketch": (IMAGENET, (10, 0, 10)),
    "ImageNetA": (["goldfish", "great white shark", "hammerhead shark"], (6, 0, 6)),
    "ImageNetR": (["tench", "goldfish", "tiger shark"], (6, 0, 6)),
}
SPLIT_FILE_DATASETS = ["Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "SUN397",
                       "DescribableTextures", "EuroSAT", "UCF101"]
TRAINABLE = ["ImageNet", "FGVCAircraft"] + SPLIT_FILE_DATASETS
VARIANTS = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """The fixture layouts, written once; tests read copies (readers write caches and split files)."""
    root = tmp_path_factory.mktemp("pristine")
    write_fixture_data(str(root))
    return root


@pytest.fixture
def data(pristine, tmp_path):
    """copy(name) -> (DATA root, dataset folder) holding a fresh copy of that dataset."""
    def copy(name):
        folder = FIXTURE_DATASETS[name][0]
        shutil.copytree(pristine / folder, tmp_path / "DATA" / folder)
        return str(tmp_path / "DATA"), str(tmp_path / "DATA" / folder)
    return copy


def make_cfg(root, name, shots=-1, seed=1, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS = root, name, shots
    cfg.DATASET.SUBSAMPLE_CLASSES, cfg.SEED = subsample, seed
    return cfg


def build(root, name, seed=None, **kw):
    if seed is not None:
        random.seed(seed)
    return build_dataset(make_cfg(root, name, seed=seed if seed is not None else 1, **kw))


def triples(items, base=""):
    return [(os.path.relpath(d.impath, base) if base else d.impath, d.label, d.classname) for d in items]


# ---------------------------------------------------------------- references from CoOp's logic


def listdir(path):
    return [f for f in os.listdir(path) if not f.startswith(".")]


def ref_folder_split(image_dir, ignored=(), new_cnames=None):
    """DTD.read_and_split_data: sorted class folders, os.listdir files, shuffle, round(n/2) / round(n/5) / rest."""
    train, val, test = [], [], []
    for label, c in enumerate(sorted(f for f in listdir(image_dir) if f not in ignored)):
        ims = [os.path.join(image_dir, c, f) for f in listdir(os.path.join(image_dir, c))]
        random.shuffle(ims)
        a, b = round(len(ims) * 0.5), round(len(ims) * 0.2)
        name = (new_cnames or {}).get(c, c)
        train += [(p, label, name) for p in ims[:a]]
        val += [(p, label, name) for p in ims[a:a + b]]
        test += [(p, label, name) for p in ims[a + b:]]
    return train, val, test


def ref_trainval(trainval):
    """OxfordPets.split_trainval: per label (first appearance) shuffle indices, first round(n/5) to val."""
    groups = {}
    for i, t in enumerate(trainval):
        groups.setdefault(t[1], []).append(i)
    train, val = [], []
    for idxs in groups.values():
        n_val = round(len(idxs) * 0.2)
        random.shuffle(idxs)
        for n, i in enumerate(idxs):
            (val if n < n_val else train).append(trainval[i])
    return train, val


def pets_list(d, name):
    out = []
    for line in open(os.path.join(d, "annotations", name)):
        img, cid = line.split()[:2]
        out.append((os.path.join(d, "images", img + ".jpg"), int(cid) - 1, img.rsplit("_", 1)[0].lower()))
    return out


def cars_list(d, folder, mat):
    names = [n[0] for n in loadmat(os.path.join(d, "devkit", "cars_meta.mat"))["class_names"][0]]
    out = []
    for a in loadmat(os.path.join(d, mat))["annotations"][0]:
        y = int(a["class"][0, 0]) - 1
        words = names[y].split(" ")
        out.append((os.path.join(d, folder, a["fname"][0]), y, " ".join(words[-1:] + words[:-1])))
    return out


def sun_list(d, name):
    classes = [c.strip()[1:] for c in open(os.path.join(d, "ClassName.txt"))]
    out = []
    for line in open(os.path.join(d, name)):
        rel = line.strip()[1:]
        folder = os.path.dirname(rel)
        out.append((os.path.join(d, "SUN397", rel), classes.index(folder), " ".join(reversed(folder.split("/")[1:]))))
    return out


UCF_NAMES = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "Basketball": "Basketball", "HandstandPushups": "Handstand_Pushups",
             "YoYo": "Yo_Yo"}


def ucf_list(d, name):
    ind = {line.split()[1]: int(line.split()[0]) - 1 for line in open(os.path.join(d, "ucfTrainTestlist/classInd.txt"))}
    out = []
    for line in open(os.path.join(d, "ucfTrainTestlist", name)):
        action, video = line.split()[0].split("/")
        out.append((os.path.join(d, "UCF-101-midframes", UCF_NAMES[action], video[:-4] + ".jpg"), ind[action],
                    UCF_NAMES[action]))
    return out


def ref_flowers(d):
    labels = loadmat(os.path.join(d, "imagelabels.mat"))["labels"][0]
    names = json.load(open(os.path.join(d, "cat_to_name.json")))
    groups = {}
    for i, y in enumerate(labels):
        groups.setdefault(int(y), []).append(os.path.join(d, "jpg", "image_%05d.jpg" % (i + 1)))
    train, val, test = [], [], []
    for y, ims in groups.items():
        random.shuffle(ims)
        a, b = round(len(ims) * 0.5), round(len(ims) * 0.2)
        for part, chunk in ((train, ims[:a]), (val, ims[a:a + b]), (test, ims[a + b:])):
            part += [(p, y - 1, names[str(y)]) for p in chunk]
    return train, val, test


def with_trainval(trainval, test):
    train, val = ref_trainval(trainval)
    return train, val, test


# How CoOp builds each split when the split file is missing: (reference, image folder the split is relative to)
REF_SPLITS = {
    "Caltech101": (lambda d: ref_folder_split(
        os.path.join(d, "101_ObjectCategories"), ("BACKGROUND_Google", "Faces_easy"),
        {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}),
        "101_ObjectCategories"),
    "OxfordPets": (lambda d: with_trainval(pets_list(d, "trainval.txt"), pets_list(d, "test.txt")), "images"),
    "StanfordCars": (lambda d: with_trainval(cars_list(d, "cars_train", "devkit/cars_train_annos.mat"),
                                             cars_list(d, "cars_test", "cars_test_annos_withlabels.mat")), ""),
    "OxfordFlowers": (ref_flowers, "jpg"),
    "Food101": (lambda d: ref_folder_split(os.path.join(d, "images")), "images"),
    "SUN397": (lambda d: with_trainval(sun_list(d, "Training_01.txt"), sun_list(d, "Testing_01.txt")), "SUN397"),
    "DescribableTextures": (lambda d: ref_folder_split(os.path.join(d, "images")), "images"),
    "EuroSAT": (lambda d: ref_folder_split(os.path.join(d, "2750"), (), {
        "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "SeaLake": "Sea or Lake"}), "2750"),
    "UCF101": (lambda d: with_trainval(ucf_list(d, "trainlist01.txt"), ucf_list(d, "testlist01.txt")),
               "UCF-101-midframes"),
}


def read_json_split(d, name):
    """(train, val, test) triples with absolute paths, straight from the split_zhou file."""
    cls = DATASET_REGISTRY.get(name)
    split = json.load(open(os.path.join(d, cls.split_file)))
    base = os.path.join(d, cls.image_dir) if cls.image_dir else d
    return tuple([(os.path.join(base, p), y, c) for p, y, c in split[k]] for k in ("train", "val", "test"))


def fgvc_split(d):
    variants = [v.strip() for v in open(os.path.join(d, "variants.txt"))]
    out = []
    for s in ("train", "val", "test"):
        rows = [line.strip().split(" ", 1) for line in open(os.path.join(d, f"images_variant_{s}.txt"))]
        out.append([(os.path.join(d, "images", i + ".jpg"), variants.index(v), v) for i, v in rows])
    return tuple(out)


def imagenet_folder(folder, names, folders):
    return [(os.path.join(folder, w, f), y, names[w])
            for y, w in enumerate(folders) for f in listdir(os.path.join(folder, w))]


def imagenet_names(d):
    return dict(line.strip().split(" ", 1) for line in open(os.path.join(d, "classnames.txt")))


def ref_full(name, d):
    """(train, val, test) triples CoOp's reader returns without few-shot or subsampling."""
    if name in REF_SPLITS:
        return read_json_split(d, name)
    if name == "FGVCAircraft":
        return fgvc_split(d)
    names = imagenet_names(d)
    if name == "ImageNet":
        folders = [os.path.join(d, "images", s) for s in ("train", "val")]
        train, test = (imagenet_folder(f, names, sorted(listdir(f))) for f in folders)
        return train, test, test
    if name == "ImageNetV2":
        folder = os.path.join(d, "imagenetv2-matched-frequency-format-val")
        data = [(os.path.join(folder, str(y), f), y, names[w]) for y, w in enumerate(names)
                for f in listdir(os.path.join(folder, str(y)))]
    else:
        folder = os.path.join(d, DATASET_REGISTRY.get(name).image_dir)
        data = imagenet_folder(folder, names, sorted(f for f in listdir(folder) if f != "README.txt"))
    return data, [], data


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("name", list(EXPECTED))
def test_reader_items_labels_classnames(name, data):
    root, d = data(name)
    ds = build(root, name)
    classnames, sizes = EXPECTED[name]
    assert ds.classnames == classnames and ds.num_classes == len(classnames)
    assert (len(ds.train_x), len(ds.val or []), len(ds.test)) == sizes
    train, val, test = ref_full(name, d)
    assert triples(ds.train_x) == train and triples(ds.val or []) == val and triples(ds.test) == test
    assert all(os.path.isfile(item.impath) for item in ds.train_x + ds.test)
    for item in ds.train_x + (ds.val or []) + ds.test:
        assert classnames[item.label] == item.classname


def test_split_file_class_names_agree_with_the_raw_annotations(pristine):
    """The fixtures' split files say what CoOp's readers make of their annotations (labels and names)."""
    for name in SPLIT_FILE_DATASETS:
        d = str(pristine / FIXTURE_DATASETS[name][0])
        random.seed(0)
        raw = {p: (y, c) for p, y, c in sum(REF_SPLITS[name][0](d), [])}
        listed = sum(read_json_split(d, name), [])
        assert sorted(p for p, _, _ in listed) == sorted(raw), name
        assert all(raw[p] == (y, c) for p, y, c in listed), name


@pytest.mark.parametrize("name", SPLIT_FILE_DATASETS)
def test_missing_split_is_built_like_coop_and_written(name, data):
    root, d = data(name)
    cls = DATASET_REGISTRY.get(name)
    os.remove(os.path.join(d, cls.split_file))
    for seed in (1, 2):
        if os.path.exists(os.path.join(d, cls.split_file)):
            os.remove(os.path.join(d, cls.split_file))
        ds = build(root, name, seed=seed)
        random.seed(seed)
        ref, image_dir = REF_SPLITS[name]
        train, val, test = ref(d)
        assert triples(ds.train_x) == train and triples(ds.val) == val and triples(ds.test) == test
        base = os.path.join(d, image_dir) if image_dir else d
        written = json.load(open(os.path.join(d, cls.split_file)))
        assert written == {k: [[os.path.relpath(p, base), y, c] for p, y, c in items]
                           for k, items in (("train", train), ("val", val), ("test", test))}
    # read back from the written file: the same items, without drawing from random
    again = build(root, name, seed=99)
    assert triples(again.train_x) == train and triples(again.test) == test


def ref_fewshot(items, k):
    groups = {}
    for t in items:
        groups.setdefault(t[1], []).append(t)
    out = []
    for g in groups.values():
        out += random.sample(g, k) if len(g) >= k else g
    return out


@pytest.mark.parametrize("name", TRAINABLE)
def test_fewshot_picks_for_two_seeds(name, data):
    root, d = data(name)
    train, val, test = ref_full(name, d)
    picks = []
    for seed in (1, 2):
        ds = build(root, name, seed=seed, shots=2)
        random.seed(seed)
        ref_train = ref_fewshot(train, 2)
        ref_val = val if name == "ImageNet" else ref_fewshot(val, 2)  # CoOp samples no val for ImageNet
        assert triples(ds.train_x) == ref_train and triples(ds.val) == ref_val and triples(ds.test) == test
        picks.append(ref_train)
        cache = os.path.join(d, "split_fewshot", f"shot_2-seed_{seed}.pkl")
        assert os.path.isfile(cache)
        # a second build reads the cache: same picks whatever the random state
        random.seed(1234)
        assert triples(build_dataset(make_cfg(root, name, shots=2, seed=seed)).train_x) == ref_train
    assert picks[0] != picks[1]


@pytest.mark.parametrize("name", TRAINABLE)
def test_base_new_halves(name, data):
    root, _ = data(name)
    classnames = EXPECTED[name][0]
    m = math.ceil(len(classnames) / 2)
    full = build(root, name)
    for subsample, kept in (("base", classnames[:m]), ("new", classnames[m:])):
        ds = build(root, name, subsample=subsample)
        assert ds.classnames == kept
        offset = 0 if subsample == "base" else m
        expected_test = [(d.impath, d.label - offset, d.classname) for d in full.test if d.classname in kept]
        assert triples(ds.test) == expected_test
        assert {d.label for d in ds.train_x} == set(range(len(kept)))


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_are_test_only_and_ignore_fewshot_and_subsampling(name, data):
    root, d = data(name)
    ds = build(root, name, shots=1, subsample="base")
    assert ds.val is None and ds.train_x == ds.test and ds.classnames == EXPECTED[name][0]
    assert not os.path.exists(os.path.join(d, "split_fewshot"))


# ---------------------------------------------------------------- official pickles


DASSL_MODULES = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]


def dump_like_dassl(path, data):
    """Pickle {key: [Datum]} the way the official code does: with dassl's Datum class (a stand-in)."""
    modules = {n: types.ModuleType(n) for n in DASSL_MODULES}

    class DasslDatum:
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    DasslDatum.__module__, DasslDatum.__qualname__, DasslDatum.__name__ = DASSL_MODULES[-1], "Datum", "Datum"
    modules[DASSL_MODULES[-1]].Datum = DasslDatum
    sys.modules.update(modules)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump({k: [DasslDatum(*t[:1], t[1], 0, t[2]) for t in v] for k, v in data.items()}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for n in DASSL_MODULES:
            sys.modules.pop(n)


def moved(items, d, old="/home/someone/DATA"):
    """Paths as another machine recorded them."""
    return [(os.path.join(old, os.path.basename(d), os.path.relpath(p, d)), y, c) for p, y, c in items]


def test_official_fewshot_cache_is_read_and_rerooted(data):
    root, d = data("OxfordPets")
    train, val, _ = ref_full("OxfordPets", d)
    official_train, official_val = train[::3], val[::2]  # not what sampling would pick
    dump_like_dassl(os.path.join(d, "split_fewshot", "shot_2-seed_1.pkl"),
                    {"train": moved(official_train, d), "val": moved(official_val, d)})
    assert "dassl" not in sys.modules
    ds = build(root, "OxfordPets", seed=1, shots=2)
    assert triples(ds.train_x) == official_train and triples(ds.val) == official_val
    assert all(type(x) is Datum for x in ds.train_x)


def test_stale_fewshot_cache_is_resampled_with_a_warning(data):
    root, d = data("DescribableTextures")
    dump_like_dassl(os.path.join(d, "split_fewshot", "shot_2-seed_1.pkl"),
                    {"train": [("/elsewhere/nothing/here.jpg", 0, "banded")], "val": []})
    with pytest.warns(UserWarning, match="sampling the few-shot split again"):
        ds = build(root, "DescribableTextures", seed=1, shots=2)
    train, val, _ = ref_full("DescribableTextures", d)
    random.seed(1)
    assert triples(ds.train_x) == ref_fewshot(train, 2)


def test_imagenet_official_preprocessed_and_fewshot_pickles(data):
    root, d = data("ImageNet")
    train, _, test = ref_full("ImageNet", d)
    # an official preprocessed.pkl from another machine, in another order: used as it is, re-rooted
    dump_like_dassl(os.path.join(d, "preprocessed.pkl"), {"train": moved(train[::-1], d), "test": moved(test, d)})
    ds = build(root, "ImageNet")
    assert triples(ds.train_x) == train[::-1] and triples(ds.test) == test and triples(ds.val) == test
    # CoOp's ImageNet few-shot cache holds "train" only
    dump_like_dassl(os.path.join(d, "split_fewshot", "shot_1-seed_3.pkl"), {"train": moved(train[:5], d)})
    ds = build(root, "ImageNet", seed=3, shots=1)
    assert triples(ds.train_x) == train[:5] and triples(ds.test) == test


def test_imagenet_writes_preprocessed_in_coops_format(data):
    root, d = data("ImageNet")
    build(root, "ImageNet", seed=1, shots=1)
    modules = {n: types.ModuleType(n) for n in DASSL_MODULES}

    class Datum2:
        pass

    modules[DASSL_MODULES[-1]].Datum = Datum2
    sys.modules.update(modules)
    try:
        pre = pickle.load(open(os.path.join(d, "preprocessed.pkl"), "rb"))  # what the official code does
        shots = pickle.load(open(os.path.join(d, "split_fewshot", "shot_1-seed_1.pkl"), "rb"))
    finally:
        for n in DASSL_MODULES:
            sys.modules.pop(n)
    train, _, test = ref_full("ImageNet", d)
    assert sorted(pre) == ["test", "train"] and sorted(shots) == ["train"]
    assert [(x._impath, x._label, x._classname) for x in pre["train"]] == train
    assert len(shots["train"]) == len(IMAGENET)


def test_imagenet_stale_preprocessed_is_rebuilt(data):
    root, d = data("ImageNet")
    dump_like_dassl(os.path.join(d, "preprocessed.pkl"), {"train": [("/x/y/z.JPEG", 0, "tench")],
                                                           "test": [("/x/y/w.JPEG", 0, "tench")]})
    with pytest.warns(UserWarning, match="reading the image folders"):
        ds = build(root, "ImageNet")
    assert triples(ds.train_x) == ref_full("ImageNet", d)[0]


def test_fixture_images_decode_and_mat_files_load(pristine):
    from PIL import Image

    for path in [os.path.join(dp, f) for dp, _, fs in os.walk(pristine) for f in fs if f.lower().endswith(
            (".jpg", ".jpeg"))][:50]:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == (8, 8)
    labels = loadmat(str(pristine / "oxford_flowers" / "imagelabels.mat"))["labels"]
    assert labels.shape == (1, 24) and np.issubdtype(labels.dtype, np.integer)
