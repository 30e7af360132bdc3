"""Own data by config alone: ``ImageFolder`` (one folder per class) and ``ImageList`` (a CSV or JSON list).

Both take their files from ``DATASET.CUSTOM.*`` and then follow the benchmarks' path (optional CoOp split
file, few-shot sampling and cache, base/new halves), so every trainer and protocol runs on them unchanged.
See docs/datasets.md for the layouts and keys.
"""
import csv
import json
import os
import random

from vlprompt.config import CfgNode, register_config_extension
from vlprompt.data.base import Datum
from vlprompt.data.split_dataset import (
    DataFileError, PathOutsideDatasetError, SplitFileDataset, path_inside, read_split, save_split,
)

from . import DATASET_REGISTRY
from .benchmark import DataCheck, DatasetIncompleteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GUIDE = "the \"Own data\" section of docs/datasets.md"
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
PATH_KEYS = ("path", "impath", "image", "file", "filename")
CLASSNAME_KEYS = ("classname", "class_name", "class", "category", "name")


@register_config_extension
def add_own_data_config(cfg):
    cfg.DATASET.CUSTOM = CfgNode()
    cfg.DATASET.CUSTOM.DIR = ""  # the dataset folder: absolute, or relative to DATASET.ROOT
    cfg.DATASET.CUSTOM.IMAGE_DIR = ""  # the folder image paths are relative to, inside DIR ("" = DIR)
    cfg.DATASET.CUSTOM.LIST_FILE = ""  # ImageList: the CSV or JSON list, inside DIR
    cfg.DATASET.CUSTOM.SPLIT_FILE = ""  # optional CoOp split JSON inside DIR: read if present, else written
    cfg.DATASET.CUSTOM.CLASSNAMES_FILE = ""  # optional: "<folder or label> <class name>" lines, or a JSON object
    cfg.DATASET.CUSTOM.SPLIT_RATIOS = (0.5, 0.2)  # train and val fractions per class when no split is given


def is_image(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_classname_map(path):
    """A JSON object {key: name}, or text lines "<key> <class name ...>" (ImageNet's classnames.txt)."""
    with open(path) as f:
        text = f.read()
    if path.lower().endswith(".json"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    pairs = (line.strip().split(" ", 1) for line in text.splitlines() if line.strip())
    return {p[0]: (p[1].strip() if len(p) > 1 else p[0]) for p in pairs}


def ratio_split(items, ratios):
    """Per class (label order): a fixed shuffle (its own RNG, not python's global one, so the split does not
    depend on SEED), then round(n * p_train) train (at least 1), round(n * p_val) val, the rest test."""
    p_train, p_val = ratios
    rng = random.Random(0)
    by_label = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    train, val, test = [], [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda d: d.impath)
        rng.shuffle(group)
        n_train = min(len(group), max(1, round(len(group) * p_train)))
        n_val = min(len(group) - n_train, round(len(group) * p_val))
        train += group[:n_train]
        val += group[n_train:n_train + n_val]
        test += group[n_train + n_val:]
    return train, val, test


class OwnDataset(SplitFileDataset):
    """Paths from DATASET.CUSTOM; ``build_split()`` makes (train, val, test) when no split file is given."""

    def __init__(self, cfg):
        self.custom = cfg.DATASET.CUSTOM
        super().__init__(cfg)

    @classmethod
    def locate(cls, root, custom):
        dataset_dir = os.path.join(root, os.path.expanduser(custom.DIR))  # an absolute DIR wins
        image_dir = os.path.join(dataset_dir, custom.IMAGE_DIR) if custom.IMAGE_DIR else dataset_dir
        return dataset_dir, image_dir

    @classmethod
    def check_custom(cls, root, custom, images=True):
        """The DataCheck of the files DATASET.CUSTOM (``custom``) names (reads, never writes)."""
        root = os.path.abspath(os.path.expanduser(root))
        dataset_dir, image_dir = cls.locate(root, custom)
        report = DataCheck(cls.__name__, root, dataset_dir, GUIDE)
        if not custom.DIR:
            report.missing("DATASET.CUSTOM.DIR is empty", "set it to your dataset folder (absolute, or under --root)")
            return report
        if not os.path.isdir(dataset_dir):
            report.missing(f"dataset folder {dataset_dir} (DATASET.CUSTOM.DIR) not found",
                           "point DATASET.CUSTOM.DIR (or --root) at your dataset folder")
            return report
        for key in cls.required_keys() + ("CLASSNAMES_FILE",):
            value = custom[key]
            if key in cls.required_keys() and not value:
                report.missing(f"DATASET.CUSTOM.{key} is empty", f"set it ({GUIDE})")
            elif value and not os.path.exists(os.path.join(dataset_dir, value)):
                report.missing(f"{os.path.join(dataset_dir, value)} (DATASET.CUSTOM.{key}) not found", GUIDE)
        if not os.path.isdir(image_dir):
            report.missing(f"image folder {image_dir} (DATASET.CUSTOM.IMAGE_DIR) not found", GUIDE)
        if not report.ok or not images:
            return report
        split_path = os.path.join(dataset_dir, custom.SPLIT_FILE) if custom.SPLIT_FILE else ""
        try:
            if split_path and os.path.exists(split_path):
                paths, listed_in = [d.impath for d in sum(read_split(split_path, image_dir), [])], custom.SPLIT_FILE
            else:
                paths, listed_in = cls.listed_paths(dataset_dir, image_dir, custom), custom.LIST_FILE
        except (ValueError, KeyError, TypeError, IndexError) as e:
            report.missing(f"cannot read the dataset's list ({type(e).__name__}: {e})", GUIDE)
            return report
        if paths is not None:
            report.missing_images([os.path.relpath(p, image_dir) for p in paths], listed_in, image_dir, GUIDE)
        return report

    @classmethod
    def required_keys(cls):
        return ()

    @classmethod
    def listed_paths(cls, dataset_dir, image_dir, custom):
        return None

    def prepare(self, root):
        report = self.check_custom(root, self.custom)
        if not report.ok:
            raise DatasetIncompleteError(report.error_message())
        self.dataset_dir, self.image_dir = self.locate(root, self.custom)
        self.split_path = os.path.join(self.dataset_dir, self.custom.SPLIT_FILE) if self.custom.SPLIT_FILE else ""
        self.split_fewshot_dir = os.path.join(self.dataset_dir, "split_fewshot")

    def load_split(self):
        if self.split_path and os.path.exists(self.split_path):
            split = self.read_split_file()  # a truncated file (a killed build) is built again
            if split is not None:
                return split
        train, val, test = self.build_split()
        if not train:
            raise ValueError(f"{type(self).__name__}: no training images found in {self.image_dir}")
        if self.split_path:
            save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def classname_map(self):
        f = self.custom.CLASSNAMES_FILE
        return read_classname_map(os.path.join(self.dataset_dir, f)) if f else {}

    def build_split(self):
        raise NotImplementedError


@DATASET_REGISTRY.register()
class ImageFolder(OwnDataset):
    """IMAGE_DIR/<class>/<image>, split per class by SPLIT_RATIOS; or IMAGE_DIR/{train,val,test}/<class>/<image>
    (val optional) when train/ and test/ exist. Labels follow the sorted folder names."""

    def build_split(self):
        root = self.image_dir
        if all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test")):
            parts = {s: os.path.join(root, s) for s in ("train", "val", "test") if os.path.isdir(os.path.join(root, s))}
        else:
            parts = {"all": root}
        files = {}  # (split, class folder) -> image names
        for split, d in parts.items():
            for c in sorted(os.listdir(d)):
                if not c.startswith(".") and os.path.isdir(os.path.join(d, c)):
                    images = sorted(im for im in os.listdir(os.path.join(d, c)) if is_image(im))
                    if images:
                        files[split, c] = images
        label = {c: i for i, c in enumerate(sorted({c for _, c in files}))}  # folders holding images
        names = self.classname_map()
        out = {split: [] for split in parts}
        for (split, c), images in files.items():
            out[split] += [Datum(impath=os.path.join(parts[split], c, im), label=label[c], classname=names.get(c, c))
                           for im in images]
        if "all" in out:
            return ratio_split(out["all"], tuple(self.custom.SPLIT_RATIOS))
        return out["train"], out.get("val", []), out["test"]


@DATASET_REGISTRY.register()
class ImageList(OwnDataset):
    """LIST_FILE: a CSV with a header (path, and label and/or classname, optional split), or JSON: a list of
    such objects or of [path, label, classname] triples, or CoOp's {"train", "val", "test"} split layout.
    Labels are renumbered 0..K-1 in sorted order; without labels, classes are numbered by sorted name."""

    @classmethod
    def required_keys(cls):
        return ("LIST_FILE",)

    @classmethod
    def read_entries(cls, path):
        """[{"path", "label"?, "classname"?, "split"?}] from the list file."""
        if path.lower().endswith(".csv"):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            return [cls._entry({k.strip().lower(): v for k, v in row.items() if k}) for row in rows]
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            return [dict(cls._entry(e), split=split) for split in ("train", "val", "test") for e in data.get(split, [])]
        return [cls._entry(e) for e in data]

    @staticmethod
    def _entry(e):
        if isinstance(e, (list, tuple)):  # [path, label, classname] or [path, label-or-classname]
            out = {"path": e[0]}
            for value in e[1:3]:
                is_name = isinstance(value, str) and not value.strip().lstrip("-").isdigit()
                out["classname" if is_name else "label"] = value
            return out
        out = {"path": next((e[k] for k in PATH_KEYS if e.get(k) not in (None, "")), None)}
        if out["path"] is None:
            raise KeyError(f"an entry has no image path (a column named one of {', '.join(PATH_KEYS)}): {e}")
        cname = next((e[k] for k in CLASSNAME_KEYS if e.get(k) not in (None, "")), None)
        if cname is not None:
            out["classname"] = str(cname)
        if e.get("label") not in (None, ""):
            out["label"] = e["label"]
        if e.get("split") not in (None, ""):
            out["split"] = str(e["split"]).strip().lower()
        return out

    @classmethod
    def listed_paths(cls, dataset_dir, image_dir, custom):
        entries = cls.read_entries(os.path.join(dataset_dir, custom.LIST_FILE))
        return [os.path.join(image_dir, e["path"]) for e in entries]

    def build_split(self):
        list_file = os.path.join(self.dataset_dir, self.custom.LIST_FILE)
        entries = self.read_entries(list_file)
        names = self.classname_map()
        with_label = sum("label" in e for e in entries)
        if with_label not in (0, len(entries)):
            raise ValueError("ImageList: some entries have a label and some do not")
        for i, e in enumerate(entries):  # as for a split file: paths stay in IMAGE_DIR, labels are integers >= 0
            if not path_inside(self.image_dir, e["path"]):
                raise PathOutsideDatasetError(f"ImageList {list_file}, entry {i} ({e['path']!r}): the image path "
                                              f"leads outside the image folder {self.image_dir}")
            if with_label and not (str(e["label"]).strip().isdigit()):
                raise DataFileError(f"ImageList {list_file}, entry {i} ({e['path']!r}): the label must be an "
                                    f"integer >= 0, got {e['label']!r}")
        if with_label:
            keys = sorted({int(e["label"]) for e in entries})
            labels = [int(e["label"]) for e in entries]
            cnames = [e.get("classname") or names.get(str(y), str(y)) for e, y in zip(entries, labels)]
        else:
            if any("classname" not in e for e in entries):
                raise ValueError("ImageList: every entry needs a label or a class name")
            keys = sorted({e["classname"] for e in entries})
            labels = [e["classname"] for e in entries]
            cnames = [names.get(e["classname"], e["classname"]) for e in entries]
        relabel = {k: i for i, k in enumerate(keys)}
        seen = {}
        items = []
        for e, y, cname in zip(entries, labels, cnames):
            if seen.setdefault(relabel[y], cname) != cname:
                raise ValueError(f"ImageList: label {y} has two class names, {seen[relabel[y]]!r} and {cname!r}")
            items.append(Datum(impath=os.path.join(self.image_dir, e["path"]), label=relabel[y], classname=cname))

        splits = [e.get("split") for e in entries]
        if all(s is None for s in splits):
            return ratio_split(items, tuple(self.custom.SPLIT_RATIOS))
        unknown = {s for s in splits if s not in SPLIT_NAMES}
        if unknown:
            raise ValueError(f"ImageList: split values must be train, val or test (got {sorted(map(str, unknown))})")
        out = {"train": [], "val": [], "test": []}
        for item, s in zip(items, splits):
            out[SPLIT_NAMES[s]].append(item)
        return out["train"], out["val"], out["test"]
