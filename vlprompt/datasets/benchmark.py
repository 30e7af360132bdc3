"""The base every benchmark reader shares: what its folder must hold, the check that names what is missing,
and the split builders CoOp's readers use when a split file is absent.

A reader declares its layout (``dataset_dir``, ``image_dir``, ``split_file``, ``required``, ``split_sources``,
``sources``) and overrides ``create_split()`` (or ``load_split()``) where CoOp builds the data differently.
``check(root)`` inspects a DATA folder without writing anything; the reader runs it before loading (so a
run stops before any model is built) and ``tools/check_data.py`` prints it, so both give the same message.

Python's global ``random`` is drawn exactly where CoOp draws it (``random.shuffle`` per class, in CoOp's
class order), so a split built here equals the one the official code would build from the same folder.
"""
import json
import os
import random
import warnings
from collections import defaultdict

from vlprompt.data.base import Datum, LabelError
from vlprompt.data.split_dataset import (
    DataFileError, SplitFileDataset, load_fewshot_cache, save_split, split_from_json,
)

__all__ = [
    "DATASETS_MD", "DatasetIncompleteError", "DataCheck", "DatasetLayout", "BenchmarkDataset", "listdir_nohidden",
    "split_trainval", "read_and_split_data",
]

DATASETS_MD = "CoOp's DATASETS.md"
MAX_EXAMPLES = 3


class DatasetIncompleteError(FileNotFoundError):
    """A dataset folder lacks a piece the reader needs; the message names each piece and where to get it."""


def listdir_nohidden(path, sort=False):
    """Dassl's listdir_nohidden: os.listdir without dot-files, in os.listdir's order unless ``sort``."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def _join(base, rel):
    return os.path.join(base, rel) if rel else base


class DataCheck:
    """What ``check()`` found for one dataset: problems (each with where to get the piece) and notes."""

    def __init__(self, name, root, dataset_dir, guide):
        self.name, self.root, self.dataset_dir = name, root, dataset_dir
        self.guide = guide  # where the layout is described
        self.problems = []  # (what is wrong, where to get it)
        self.notes = []

    @property
    def ok(self):
        return not self.problems

    def missing(self, what, get=""):
        self.problems.append((what, get))

    def missing_images(self, paths, listed_in, base, get=""):
        """Record the paths (relative to ``base``) that are not on disk; returns how many."""
        absent = [p for p in paths if not os.path.exists(os.path.join(base, p))]
        if absent:
            examples = ", ".join(absent[:MAX_EXAMPLES]) + (", ..." if len(absent) > MAX_EXAMPLES else "")
            self.missing(f"{len(absent):,} of {len(paths):,} images listed in {listed_in} are missing under "
                         f"{base} (first: {examples})", get)
        return len(absent)

    def lines(self):
        """The problem lines, as the reader's error and check_data print them."""
        out = []
        for what, get in self.problems:
            out.append(f"  - {what}")
            for i, line in enumerate([get] if isinstance(get, str) else get):
                if line:
                    out.append(f"      {'get it: ' if i == 0 else '        '}{line}")
        return out

    def summary(self):
        """check_data's block for this dataset."""
        state = "found" if self.ok else "MISSING"
        out = [f"{self.name}: {state} ({self.dataset_dir})"] + self.lines()
        out += [f"  note: {note}" for note in self.notes]
        if not self.ok:
            out.append(f"  see {self.guide}")
        return "\n".join(out)

    def error_message(self):
        return "\n".join(
            [f"{self.name}: the dataset under DATASET.ROOT ({self.root}) is incomplete:"] + self.lines()
            + [f"See {self.guide}. Check all datasets with: python tools/check_data.py --root {self.root}"]
        )


class DatasetLayout:
    """Mixin: a dataset's on-disk layout and the check of it. Paths are relative to ``dataset_dir``."""

    dataset_dir = ""
    image_dir = "images"
    split_file = ""
    title = ""  # the section of CoOp's DATASETS.md
    required = ()  # files/folders always needed, besides image_dir
    split_sources = ()  # what the split is built from when split_file is absent (empty: it cannot be)
    sources = {}  # relative path -> where to get it
    fewshot_cache_keys = ("train", "val")  # what split_fewshot/*.pkl holds

    @classmethod
    def guide(cls):
        return f"section \"{cls.title or cls.__name__}\" of {DATASETS_MD}"

    @classmethod
    def source_of(cls, rel):
        if rel in cls.sources:
            return cls.sources[rel]
        if rel == cls.split_file:
            return f"the Google Drive link in {DATASETS_MD}, section \"{cls.title}\" (save it in {cls.dataset_dir}/)"
        return f"see section \"{cls.title}\" of {DATASETS_MD}"

    @classmethod
    def sources_by_piece(cls, pieces):
        """["piece, piece: where to get them", ...], pieces sharing a source on one line."""
        grouped = {}
        for p in pieces:
            grouped.setdefault(cls.source_of(p), []).append(p)
        return [f"{', '.join(ps)}: {source}" for source, ps in grouped.items()]

    @classmethod
    def check(cls, root, images=True):
        """Inspect ``root/<dataset_dir>`` (reads, never writes). ``images``: also stat every listed image."""
        root = os.path.abspath(os.path.expanduser(root))
        dataset_dir = os.path.join(root, cls.dataset_dir)
        report = DataCheck(cls.__name__, root, dataset_dir, cls.guide())
        if not os.path.isdir(dataset_dir):
            pieces = [p for p in (cls.image_dir,) + tuple(cls.required) + (cls.split_file,) if p]
            pieces = [p for p in pieces if not any(q.startswith(p + "/") for q in pieces)]  # images/ in images/train
            extra = [p for p in cls.split_sources if p not in pieces]
            report.missing(f"dataset folder {dataset_dir} not found: --root must hold '{cls.dataset_dir}/' with "
                           f"{', '.join(pieces)}" + (f" (or, to build the split: {', '.join(extra)})" if extra else ""),
                           cls.sources_by_piece(pieces + extra))
            return report
        absent = []
        for rel in ((cls.image_dir,) if cls.image_dir else ()) + tuple(cls.required):
            path = os.path.join(dataset_dir, rel)
            if not os.path.exists(path) and not any(rel.startswith(a + "/") for a in absent):
                absent.append(rel)
                kind = "file" if os.path.splitext(rel)[1] else "folder"
                report.missing(f"{kind} {path} not found", cls.source_of(rel))
        listed = cls._check_split(report, dataset_dir) if cls.split_file else None
        cls._check_fewshot_caches(report, dataset_dir)
        cls.check_more(report, dataset_dir)
        if images and report.ok:
            try:
                listed = listed or cls.listed_images(dataset_dir)
            except ValueError:  # a truncated split file that will be built again (noted above)
                listed = None
            if listed is not None:
                paths, listed_in, base = listed
                report.missing_images(paths, listed_in, base, cls.source_of(cls.image_dir))
        return report

    @classmethod
    def _check_split(cls, report, dataset_dir):
        """The split file's listed_images(), or None (recording why it is missing or unreadable)."""
        split_path = os.path.join(dataset_dir, cls.split_file)
        buildable = cls.split_sources and all(os.path.exists(os.path.join(dataset_dir, rel))
                                              for rel in cls.split_sources)
        if os.path.exists(split_path):
            try:
                return cls.listed_images(dataset_dir)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if buildable:  # cut off by a killed build: rebuilt, not downloaded
                    report.notes.append(f"{cls.split_file} is truncated or damaged (not valid JSON: {e}); it will be "
                                        f"built again from {', '.join(cls.split_sources)}")
                else:
                    report.missing(f"split file {split_path} is truncated or damaged (not valid JSON: {e}): delete "
                                   f"it and get it again", cls.source_of(cls.split_file))
                return None
            except (DataFileError, LabelError) as e:
                report.missing(str(e), "correct or delete the split file; " + cls.source_of(cls.split_file))
                return None
            except (ValueError, KeyError, TypeError, IndexError) as e:
                report.missing(f"split file {split_path} is not a CoOp split file ({type(e).__name__}: {e})",
                               cls.source_of(cls.split_file))
                return None
        absent = [rel for rel in cls.split_sources if not os.path.exists(os.path.join(dataset_dir, rel))]
        if cls.split_sources and not absent:
            report.notes.append(f"{cls.split_file} not found: it will be built from "
                                f"{', '.join(cls.split_sources)} and written, as CoOp does")
            return None
        why = f"; it cannot be built either: {', '.join(absent)} missing too" if absent else ""
        report.missing(f"split file {split_path} not found{why}", cls.source_of(cls.split_file))
        return None

    @classmethod
    def _check_fewshot_caches(cls, report, dataset_dir):
        """The reader's checks of each few-shot cache in split_fewshot/ (labels, paths inside the dataset)."""
        folder = os.path.join(dataset_dir, "split_fewshot")
        if not os.path.isdir(folder):
            return
        keys = cls.fewshot_cache_keys
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".pkl"):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # unreadable or stale caches are sampled again, not errors
                    load_fewshot_cache(os.path.join(folder, name), dataset_dir, keys=keys,
                                       image_dir=_join(dataset_dir, cls.image_dir))
            except (DataFileError, LabelError) as e:
                report.missing(str(e), "delete the cache file: the few-shot split is sampled again and cached")

    @classmethod
    def listed_images(cls, dataset_dir):
        """(relative image paths, the file listing them, the folder they are relative to) or None."""
        if not cls.split_file:
            return None
        split_path = os.path.join(dataset_dir, cls.split_file)
        if not os.path.exists(split_path):
            return None
        with open(split_path) as f:
            split = json.load(f)
        base = _join(dataset_dir, cls.image_dir)
        # the reader's checks: 3 fields per entry, paths inside the image folder, labels 0..K-1 (DataFileError)
        split_from_json(split, split_path, base)
        paths = [item[0] for key in ("train", "val", "test") for item in split[key]]
        return paths, cls.split_file, _join(dataset_dir, cls.image_dir)

    @classmethod
    def check_more(cls, report, dataset_dir):
        """Reader-specific checks (e.g. folders without a class name)."""

    def prepare(self, root):
        report = self.check(root)
        if not report.ok:
            raise DatasetIncompleteError(report.error_message())


class BenchmarkDataset(DatasetLayout, SplitFileDataset):
    """A CoOp benchmark reader: layout check, then SplitFileDataset's split -> few-shot -> base/new path."""

    def can_create_split(self):
        return bool(self.split_sources) and all(os.path.exists(os.path.join(self.dataset_dir, rel))
                                                for rel in self.split_sources)

    def load_split(self):
        if os.path.exists(self.split_path):
            split = self.read_split_file()
            if split is not None:
                return split
        train, val, test = self.create_split()
        # CoOp's Datum asserts every file exists; name the absent ones before writing a split that lists them
        report = DataCheck(type(self).__name__, os.path.dirname(self.dataset_dir), self.dataset_dir, self.guide())
        paths = [os.path.relpath(d.impath, self.dataset_dir) for d in train + val + test]
        if report.missing_images(paths, f"the annotations ({', '.join(self.split_sources)})", self.dataset_dir,
                                 self.source_of(type(self).image_dir)):
            raise DatasetIncompleteError(report.error_message())
        save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test


# ---------------------------------------------------------------- CoOp's split builders


def split_trainval(trainval, p_val=0.2):
    """CoOp's OxfordPets.split_trainval: per label (first-appearance order) shuffle the item indices and
    send the first round(n * p_val) to val."""
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise ValueError(f"Class {label} has {len(idxs)} train+val images: too few to split off a val image")
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """CoOp's DTD.read_and_split_data: one folder per class (sorted, minus ``ignored``), each class's
    files (os.listdir order) shuffled and cut into round(n * p_trn) train, round(n * p_val) val, rest test;
    ``new_cnames`` renames classes (labels keep the folder order)."""
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {1 - p_trn - p_val:.0%} test")
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_train, n_val = round(len(images) * p_trn), round(len(images) * p_val)
        if not (n_train > 0 and n_val > 0 and len(images) - n_train - n_val > 0):
            raise ValueError(f"{category_dir} holds {len(images)} images: too few for a train/val/test split")
        name = (new_cnames or {}).get(category, category)
        for items, part in ((train, images[:n_train]), (val, images[n_train:n_train + n_val]),
                            (test, images[n_train + n_val:])):
            items.extend(Datum(impath=im, label=label, classname=name) for im in part)
    return train, val, test
