"""Miniature copies of the 15 benchmarks' on-disk layouts, for tests and for trying a reader without downloads.

Each dataset gets its real folder names, split file and side files in their real formats (split_zhou JSON,
the devkit/imagelabels .mat files, annotation and partition .txt lists, classnames.txt) with a handful of
classes and a few 8x8 images per class. The class names are real ones chosen to exercise the readers'
quirks (Caltech101's ignored and renamed folders, EuroSAT's and UCF101's renaming, SUN397's qualifiers,
StanfordCars' year, ImageNet-A/-R as a subset of classnames.txt). Nothing here draws from python's global
``random``. Used by ``tools/make_fixture_data.py`` and the tests.
"""
import hashlib
import json
import os

import numpy as np
from PIL import Image
from scipy.io import savemat

__all__ = ["FIXTURE_DATASETS", "write_fixture_data"]

IMAGE_SIZE = 8
TRAINVAL, TEST = 4, 2  # per class where the raw data has a train+val / test partition (3 train + 1 val)
PER_CLASS = 6  # per class where CoOp splits a folder 50/20/30 (3 train, 1 val, 2 test)
IMAGENET_CLASSES = [
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"),
]


def _image(path):
    """A tiny image whose colours depend on the path; JPEG or PNG by extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    seed = hashlib.sha256(path.encode()).digest()
    pixels = np.frombuffer(seed * 6, dtype=np.uint8)[:IMAGE_SIZE * IMAGE_SIZE * 3]
    img = Image.fromarray(pixels.reshape(IMAGE_SIZE, IMAGE_SIZE, 3).copy(), "RGB")
    img.save(path, format="PNG" if path.lower().endswith(".png") else "JPEG")


def _text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _split_json(path, train, val, test):
    """CoOp's split_zhou layout: {"train"|"val"|"test": [[relative path, label, class name], ...]}."""
    with open(path, "w") as f:
        json.dump({"train": train, "val": val, "test": test}, f, indent=4, separators=(",", ": "))


def _folder_classes(d, image_dir, folders, name_of, file_of, kept=None):
    """Class folders of PER_CLASS images; the split file takes 3/1/2 of each kept class (sorted folders)."""
    for folder in folders:
        for i in range(PER_CLASS):
            _image(os.path.join(d, image_dir, folder, file_of(folder, i)))
    split = ([], [], [])
    for label, folder in enumerate(sorted(kept if kept is not None else folders)):
        files = [f"{folder}/{file_of(folder, i)}" for i in range(PER_CLASS)]
        for part, chunk in zip(split, (files[:3], files[3:4], files[4:])):
            part.extend([f, label, name_of(folder)] for f in chunk)
    return split


def _trainval_split(trainval, test):
    """Split file from (path, label, name) lists: per class the first 3 of train+val train, the 4th val."""
    train, val, seen = [], [], {}
    for path, label, name in trainval:
        seen[label] = seen.get(label, 0) + 1
        (train if seen[label] <= TRAINVAL - 1 else val).append([path, label, name])
    return train, val, [list(t) for t in test]


def _oxford_pets(d):
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("basset_hound", 2), ("Bengal", 1)]  # (name, species)
    lists = {"trainval": [], "test": []}
    species_count = {}
    for cid, (breed, species) in enumerate(breeds, 1):
        species_count[species] = species_count.get(species, 0) + 1
        for n in range(1, TRAINVAL + TEST + 1):
            _image(os.path.join(d, "images", f"{breed}_{n}.jpg"))
            part = "trainval" if n <= TRAINVAL else "test"
            lists[part].append((f"{breed}_{n}", cid, species, species_count[species]))
    for part, rows in lists.items():
        _text(os.path.join(d, "annotations", f"{part}.txt"), [" ".join(map(str, r)) for r in rows])
    # the split groups train+val by class here; the real file's order is CoOp's shuffle
    as_items = {k: [(f"{r[0]}.jpg", r[1] - 1, r[0].rsplit("_", 1)[0].lower()) for r in v] for k, v in lists.items()}
    _split_json(os.path.join(d, "split_zhou_OxfordPets.json"), *_trainval_split(as_items["trainval"], as_items["test"]))


def _caltech101(d):
    folders = ["accordion", "airplanes", "BACKGROUND_Google", "Faces", "Faces_easy", "Leopards"]
    names = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard"}
    split = _folder_classes(d, "101_ObjectCategories", folders, lambda f: names.get(f, f),
                            lambda f, i: f"image_{i + 1:04d}.jpg",
                            kept=[f for f in folders if f not in ("BACKGROUND_Google", "Faces_easy")])
    _split_json(os.path.join(d, "split_zhou_Caltech101.json"), *split)


def _stanford_cars(d):
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012", "BMW M3 Coupe 2012"]
    rows = {}
    for part, count in (("cars_train", TRAINVAL), ("cars_test", TEST)):
        rows[part] = []
        for k in range(count * len(names)):  # classes interleave, as in the real annotation files
            fname, label = f"{k + 1:05d}.jpg", k % len(names) + 1
            _image(os.path.join(d, part, fname))
            rows[part].append((fname, label))

    def annotations(rows):
        arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in
                                              ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
        for i, (fname, label) in enumerate(rows):
            arr[0, i] = (np.array([[0]]), np.array([[0]]), np.array([[7]]), np.array([[7]]),
                         np.array([[label]], dtype=np.uint8), np.array([fname]))
        return {"annotations": arr}

    os.makedirs(os.path.join(d, "devkit"))
    savemat(os.path.join(d, "devkit", "cars_meta.mat"), {"class_names": np.array([names], dtype=object)})
    savemat(os.path.join(d, "devkit", "cars_train_annos.mat"), annotations(rows["cars_train"]))
    savemat(os.path.join(d, "cars_test_annos_withlabels.mat"), annotations(rows["cars_test"]))

    def item(part, fname, label):
        *words, year = names[label - 1].split(" ")
        return f"{part}/{fname}", label - 1, " ".join([year] + words)

    trainval = sorted((item("cars_train", *r) for r in rows["cars_train"]), key=lambda t: t[1])
    test = [item("cars_test", *r) for r in rows["cars_test"]]
    _split_json(os.path.join(d, "split_zhou_StanfordCars.json"), *_trainval_split(trainval, test))


def _oxford_flowers(d):
    cat_to_name = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells", "4": "sweet pea",
                   "5": "english marigold"}  # the real file names all 102; class 5 has no image here
    # interleaved: CoOp visits labels in order of first appearance in the .mat (3, 1, 4, 2 here)
    labels = [[3, 1, 4, 2][k % 4] for k in range(4 * PER_CLASS)]
    for i in range(len(labels)):
        _image(os.path.join(d, "jpg", f"image_{i + 1:05d}.jpg"))
    savemat(os.path.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    with open(os.path.join(d, "cat_to_name.json"), "w") as f:
        json.dump(cat_to_name, f)
    split = ([], [], [])
    for y in sorted(set(labels)):
        files = [f"image_{i + 1:05d}.jpg" for i, label in enumerate(labels) if label == y]
        for part, chunk in zip(split, (files[:3], files[3:4], files[4:])):
            part.extend([f, y - 1, cat_to_name[str(y)]] for f in chunk)
    _split_json(os.path.join(d, "split_zhou_OxfordFlowers.json"), *split)


def _food101(d):
    split = _folder_classes(d, "images", ["apple_pie", "baby_back_ribs", "baklava"], lambda f: f,
                            lambda f, i: f"{1005649 + 7919 * i + len(f)}.jpg")
    _text(os.path.join(d, "meta", "classes.txt"), ["apple_pie", "baby_back_ribs", "baklava"])
    _split_json(os.path.join(d, "split_zhou_Food101.json"), *split)


def _fgvc_aircraft(d):
    variants = ["707-320", "A300B4", "Cessna 172", "F/A-18"]
    _text(os.path.join(d, "variants.txt"), variants)
    lists = {"train": [], "val": [], "test": []}
    k = 0
    for i in range(PER_CLASS):
        for variant in variants:  # interleaved, as in the real lists
            k += 1
            image_id = f"{1000000 + 37 * k:07d}"
            _image(os.path.join(d, "images", f"{image_id}.jpg"))
            lists["train" if i < 3 else "val" if i < 4 else "test"].append(f"{image_id} {variant}")
    for split, lines in lists.items():
        _text(os.path.join(d, f"images_variant_{split}.txt"), lines)


def _sun397(d):
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom", "/c/church/outdoor"]
    _text(os.path.join(d, "ClassName.txt"), classes)
    lists = {"Training_01.txt": [], "Testing_01.txt": []}
    for c in classes:
        for n in range(TRAINVAL + TEST):
            path = f"{c}/sun_{hashlib.md5(f'{c}{n}'.encode()).hexdigest()[:16]}.jpg"
            _image(os.path.join(d, "SUN397", path[1:]))
            lists["Training_01.txt" if n < TRAINVAL else "Testing_01.txt"].append(path)
    for name, lines in lists.items():
        _text(os.path.join(d, name), lines)

    def item(path):
        folder = os.path.dirname(path[1:])
        return path[1:], classes.index("/" + folder), " ".join(folder.split("/")[1:][::-1])

    split = _trainval_split([item(p) for p in lists["Training_01.txt"]], [item(p) for p in lists["Testing_01.txt"]])
    _split_json(os.path.join(d, "split_zhou_SUN397.json"), *split)


def _dtd(d):
    split = _folder_classes(d, "images", ["banded", "blotchy", "braided", "bubbly"], lambda f: f,
                            lambda f, i: f"{f}_{i + 1:04d}.jpg")
    _split_json(os.path.join(d, "split_zhou_DescribableTextures.json"), *split)
    os.makedirs(os.path.join(d, "imdb"))
    _text(os.path.join(d, "labels", "train1.txt"), [f"banded/banded_{i + 1:04d}.jpg" for i in range(3)])


def _eurosat(d):
    names = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
             "SeaLake": "Sea or Lake"}
    split = _folder_classes(d, "2750", list(names), names.get, lambda f, i: f"{f}_{i + 1}.jpg")
    _split_json(os.path.join(d, "split_zhou_EuroSAT.json"), *split)


def _ucf101(d):
    # (classInd name, name in the video file names, frame folder); HandstandPushups' videos say "HandStand"
    actions = [("ApplyEyeMakeup", "ApplyEyeMakeup", "Apply_Eye_Makeup"), ("Basketball", "Basketball", "Basketball"),
               ("HandstandPushups", "HandStandPushups", "Handstand_Pushups"), ("YoYo", "YoYo", "Yo_Yo")]
    lists = "ucfTrainTestlist"
    _text(os.path.join(d, lists, "classInd.txt"), [f"{i} {a[0]}" for i, a in enumerate(actions, 1)])
    train, test, items = [], [], {"train": [], "test": []}
    for label, (action, video, folder) in enumerate(actions):
        for g in range(TRAINVAL + TEST):
            name = f"v_{video}_g{g + 8 if g < TRAINVAL else g - TRAINVAL + 1:02d}_c01"
            _image(os.path.join(d, "UCF-101-midframes", folder, f"{name}.jpg"))
            if g < TRAINVAL:
                train.append(f"{action}/{name}.avi {label + 1}")
                items["train"].append((f"{folder}/{name}.jpg", label, folder))
            else:
                test.append(f"{action}/{name}.avi")
                items["test"].append((f"{folder}/{name}.jpg", label, folder))
    _text(os.path.join(d, lists, "trainlist01.txt"), train)
    _text(os.path.join(d, lists, "testlist01.txt"), test)
    _split_json(os.path.join(d, "split_zhou_UCF101.json"), *_trainval_split(items["train"], items["test"]))


def _classnames(d):
    _text(os.path.join(d, "classnames.txt"), [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES])


def _imagenet(d):
    _classnames(d)
    for k, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for n in range(3):
            _image(os.path.join(d, "images", "train", wnid, f"{wnid}_{1000 + 17 * n + k}.JPEG"))
        for n in range(2):
            _image(os.path.join(d, "images", "val", wnid, f"ILSVRC2012_val_{10 * k + n + 1:08d}.JPEG"))


def _imagenetv2(d):
    _classnames(d)
    for label in range(len(IMAGENET_CLASSES)):
        for n in range(2):
            _image(os.path.join(d, "imagenetv2-matched-frequency-format-val", str(label),
                                f"{hashlib.sha1(f'{label}-{n}'.encode()).hexdigest()}.jpeg"))


def _imagenet_sketch(d):
    _classnames(d)
    for wnid, _ in IMAGENET_CLASSES:
        for n in range(2):
            _image(os.path.join(d, "images", wnid, f"sketch_{n}.JPEG"))


def _subset_variant(image_dir, wnids, file_of):
    def write(d):
        _classnames(d)
        for wnid in wnids:
            for n in range(2):
                _image(os.path.join(d, image_dir, wnid, file_of(n)))
        _text(os.path.join(d, image_dir, "README.txt"), ["200 of the 1000 ImageNet classes (miniature)"])
    return write


# DATASET.NAME -> (folder under the root, writer), in the order of CoOp's DATASETS.md
FIXTURE_DATASETS = {
    "ImageNet": ("imagenet", _imagenet),
    "Caltech101": ("caltech-101", _caltech101),
    "OxfordPets": ("oxford_pets", _oxford_pets),
    "StanfordCars": ("stanford_cars", _stanford_cars),
    "OxfordFlowers": ("oxford_flowers", _oxford_flowers),
    "Food101": ("food-101", _food101),
    "FGVCAircraft": ("fgvc_aircraft", _fgvc_aircraft),
    "SUN397": ("sun397", _sun397),
    "DescribableTextures": ("dtd", _dtd),
    "EuroSAT": ("eurosat", _eurosat),
    "UCF101": ("ucf101", _ucf101),
    "ImageNetV2": ("imagenetv2", _imagenetv2),
    "ImageNetSketch": ("imagenet-sketch", _imagenet_sketch),
    "ImageNetA": ("imagenet-adversarial", _subset_variant(
        "imagenet-a", ["n01443537", "n01484850", "n01494475"], lambda n: f"0.00{n}_goldfish _ tench_0.9{n}.jpg")),
    "ImageNetR": ("imagenet-rendition", _subset_variant(
        "imagenet-r", ["n01440764", "n01443537", "n01491361"], lambda n: f"art_{n}.jpg")),
}


def write_fixture_data(root, names=None):
    """Write the miniature layouts of ``names`` (DATASET.NAME values; default all 15) under ``root``.
    Refuses to touch a dataset folder that already exists. Returns {name: dataset folder}."""
    names = list(FIXTURE_DATASETS) if not names else list(names)
    unknown = [n for n in names if n not in FIXTURE_DATASETS]
    if unknown:
        raise KeyError(f"No fixture for {', '.join(unknown)}; known: {', '.join(FIXTURE_DATASETS)}")
    out = {}
    for name in names:
        folder, write = FIXTURE_DATASETS[name]
        d = os.path.join(os.path.abspath(root), folder)
        if os.path.exists(d):
            raise FileExistsError(f"{d} already exists: the fixture writer never writes into an existing dataset "
                                  f"folder (choose an empty --root)")
        os.makedirs(d)
        write(d)
        out[name] = d
    return out
