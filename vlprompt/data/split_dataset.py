"""CoOp's split files and few-shot caches, and the reader base class the benchmark datasets share.

A benchmark reader subclasses ``SplitFileDataset`` and states only what differs: its folder
(``dataset_dir``), the image folder the split's paths are relative to (``image_dir``), the split file
(``split_file``) and, if it can build a missing split itself, ``create_split()``.
"""
import json
import os
import pickle
import re
import uuid
import warnings

from vlprompt.utils import safe_pickle

from .base import DatasetBase, Datum, check_split_labels, generate_fewshot_dataset, subsample_classes

__all__ = [
    "DATUM_PICKLE_NAMES", "DataFileError", "PathOutsideDatasetError", "path_inside", "read_split", "split_from_json",
    "save_split", "load_fewshot_cache", "save_fewshot_cache",
    "save_datum_pickle", "reroot_impath", "SplitFileDataset",
]

# The official caches pickle Dassl's Datum (its __module__ is base_dataset); map every spelling to ours
DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")
DATUM_PICKLE_NAMES = {
    DASSL_DATUM: Datum,
    ("dassl.data.datasets", "Datum"): Datum,
    (Datum.__module__, "Datum"): Datum,
}


class DataFileError(ValueError):
    """A split file or few-shot cache with an entry that cannot be used; the message names file and entry."""


class PathOutsideDatasetError(DataFileError):
    """A path in a split file or cache that leads out of the dataset's folder."""


def path_inside(folder, path):
    """True when ``path`` (absolute, or relative to ``folder``) stays inside ``folder`` once "." and ".." are
    resolved. Lexical, on purpose: symbolic links inside the dataset (an image folder on another disk) are the
    user's own layout and are followed; what a data file names cannot climb out with "..", or be absolute
    elsewhere."""
    folder = os.path.normpath(os.path.abspath(folder))
    target = os.path.normpath(os.path.join(folder, path))
    return os.path.commonpath([folder, target]) == folder


def read_split(filepath, path_prefix):
    """CoOp's split_zhou JSON ({"train"|"val"|"test": [[relative path, label, classname], ...]}) -> 3 lists.
    Every entry is checked (3 fields: a path inside ``path_prefix``, an integer label >= 0, a class name), and
    the labels of the file as a whole (check_split_labels); DataFileError names the file and the entry."""
    print(f"Reading split from {filepath}")
    with open(filepath) as f:
        split = json.load(f)
    return split_from_json(split, filepath, path_prefix)


def split_from_json(split, filepath, path_prefix):
    """read_split's checks and Datum lists for a loaded split JSON (also used by the data check)."""
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise DataFileError(f"Split file {filepath} is not a CoOp split file: it needs lists under "
                            f'"train", "val" and "test"')

    def convert(key, items):
        out = []
        for i, entry in enumerate(items):
            where = f'{filepath}, "{key}" entry {i} ({json.dumps(entry)[:200]})'
            if not isinstance(entry, list) or len(entry) != 3:
                got = len(entry) if isinstance(entry, list) else type(entry).__name__
                raise DataFileError(f"{where}: expected [image path, label, class name] (3 fields), got {got}")
            impath, label, classname = entry
            if not isinstance(impath, str) or not impath:
                raise DataFileError(f"{where}: the image path must be a non-empty string")
            if not path_inside(path_prefix, impath):
                raise PathOutsideDatasetError(f"{where}: the image path leads outside the dataset's image folder "
                                              f"{path_prefix}; paths must be relative to it, without '..'")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise DataFileError(f"{where}: the label must be an integer >= 0, got {label!r}")
            out.append(Datum(impath=os.path.normpath(os.path.join(path_prefix, impath)), label=label,
                             classname=str(classname)))
        return out

    train, val, test = (convert(key, split[key]) for key in ("train", "val", "test"))
    check_split_labels(train, val, test, filepath)
    return train, val, test


def save_split(train, val, test, filepath, path_prefix):
    """Write the split_zhou JSON, atomically (a killed build leaves no truncated file). Paths lose
    ``path_prefix`` the way CoOp strips it (str.replace, then one leading "/"), so files written here and by
    CoOp are identical."""

    def extract(items):
        out = []
        for item in items:
            impath = item.impath.replace(path_prefix, "")
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, item.label, item.classname))
        return out

    split = {"train": extract(train), "val": extract(val), "test": extract(test)}
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    tmp = f"{filepath}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "x") as f:
            json.dump(split, f, indent=4, separators=(",", ": "))  # Dassl's write_json format
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(f"Saved split to {filepath}")


class _DasslNamePickler(pickle._Pickler):
    """Pickles our Datum under Dassl's name, so a cache written here also loads in the official code."""

    def save_global(self, obj, name=None):
        if obj is Datum and self.proto >= 4:
            self.save(DASSL_DATUM[0])
            self.save(DASSL_DATUM[1])
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def save_datum_pickle(path, data):
    """Pickle ``data`` (Datum lists in a dict) like CoOp (HIGHEST_PROTOCOL, Datum under Dassl's name),
    atomically (a crash leaves no truncated file behind)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # not mkstemp: its 0600 mode would stay
    try:
        with open(tmp, "xb") as f:
            _DasslNamePickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_fewshot_cache(path, train, val):
    """Write {"train": [...], "val": [...]} like CoOp."""
    save_datum_pickle(path, {"train": train, "val": val})


def reroot_impath(impath, dataset_dir):
    """An absolute path recorded under another copy of the dataset, moved under ``dataset_dir``: the part
    after the last path component named like the dataset folder (e.g. ``oxford_pets``) is kept.
    Returns None when no candidate exists."""
    parts = re.split(r"[\\/]+", impath)  # caches written on Windows use backslashes
    name = os.path.basename(os.path.normpath(dataset_dir))
    for i in reversed(range(len(parts))):
        if parts[i] == name:
            candidate = os.path.join(dataset_dir, *parts[i + 1:])
            if os.path.exists(candidate):
                return candidate
    return None


def load_fewshot_cache(path, dataset_dir, keys=("train", "val"), image_dir=None):
    """Read a few-shot cache (official or ours) with the restricted unpickler; returns the lists under
    ``keys`` (CoOp's ImageNet cache holds only "train"), with paths re-rooted under ``dataset_dir`` where
    the dataset moved, or None (with a warning) if unusable. An entry with a label that is not an integer >= 0,
    or whose image is outside ``image_dir`` (default: dataset_dir) and cannot be re-rooted into it while the file
    exists, is refused (DataFileError naming the cache and the entry): the cache never opens files elsewhere."""
    try:
        data = safe_pickle.load(path, allowed=DATUM_PICKLE_NAMES)
        splits = [data[key] for key in keys]
        if not all(isinstance(s, list) and all(isinstance(d, Datum) for d in s) for s in splits):
            raise TypeError(f"expected lists of Datum under {' and '.join(map(repr, keys))}")
    except Exception as e:
        warnings.warn(f"Ignoring unreadable few-shot cache {path} ({type(e).__name__}: {e})")
        return None

    folder = image_dir or dataset_dir
    missing = 0
    for key, items in zip(keys, splits):
        for i, item in enumerate(items):
            where = f'Few-shot cache {path}, "{key}" entry {i} ({item.impath!r}, label {item.label!r})'
            label = item.label
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise DataFileError(f"{where}: the label must be an integer >= 0. Delete the cache file to sample "
                                    f"the few-shot split again.")
            inside = isinstance(item.impath, str) and path_inside(folder, item.impath)
            if inside and os.path.isabs(item.impath) and os.path.exists(item.impath):
                continue
            moved = reroot_impath(item.impath, dataset_dir) if isinstance(item.impath, str) else None
            if moved is not None and path_inside(folder, moved):
                items[i] = Datum(impath=os.path.normpath(moved), label=item.label, domain=item.domain,
                                 classname=item.classname)
                continue
            if moved is not None or (isinstance(item.impath, str) and os.path.exists(item.impath)):
                raise PathOutsideDatasetError(
                    f"{where}: the image is outside the dataset's image folder {folder}; a cache may only list "
                    f"images of its dataset. Delete the cache file to sample the few-shot split again.")
            missing += 1
    check_split_labels(splits[0], splits[1] if len(splits) > 1 else None, None, f"Few-shot cache {path}")
    if missing:
        example = next(d.impath for s in splits for d in s if not (isinstance(d.impath, str) and
                                                                   os.path.exists(d.impath)))
        warnings.warn(
            f"Few-shot cache {path} lists {missing} images that are not under {dataset_dir} "
            f"(e.g. {example}); sampling the few-shot split again instead. The cache file is left as it is: "
            f"delete it to cache the new sample."
        )
        return None
    return tuple(splits)


class SplitFileDataset(DatasetBase):
    """A dataset described by a CoOp split file, with few-shot sampling and base/new subsampling.

    Follows CoOp's OxfordPets.__init__ step by step (read or create split -> few-shot train and val,
    cached in ``split_fewshot/shot_{K}-seed_{SEED}.pkl`` -> subsample classes), so python's ``random``
    is drawn in the official order and a given SEED picks the official images.
    """

    dataset_dir = ""  # folder under DATASET.ROOT, e.g. "oxford_pets"
    image_dir = "images"  # folder under dataset_dir the split's relative paths start from ("" = dataset_dir)
    split_file = ""  # e.g. "split_zhou_OxfordPets.json"

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        cls = type(self)
        self.dataset_dir = os.path.join(root, cls.dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, cls.image_dir) if cls.image_dir else self.dataset_dir
        self.split_path = os.path.join(self.dataset_dir, cls.split_file)
        self.split_fewshot_dir = os.path.join(self.dataset_dir, "split_fewshot")
        self.prepare(root)
        train, val, test = self.load_split()
        train, val = self.fewshot_train_val(train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def prepare(self, root):
        """Make sure ``self.dataset_dir`` is there (a generated dataset writes itself here)."""
        if not os.path.isdir(self.dataset_dir):
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset folder {self.dataset_dir} not found. Put the "
                f"'{type(self).dataset_dir}' folder under DATASET.ROOT ({root}) as CoOp's DATASETS.md "
                f"describes, or point DATASET.ROOT (--root) at the folder that holds it."
            )

    def can_create_split(self):
        """Whether this reader builds its split itself when the file is missing (it overrides create_split)."""
        return type(self).create_split is not SplitFileDataset.create_split

    def read_split_file(self):
        """The split file's (train, val, test); None when the file is not complete JSON (a build killed while
        writing it, before writes were atomic) and this reader can build it again, which it then does."""
        try:
            return read_split(self.split_path, self.image_dir)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if not self.can_create_split():
                raise DataFileError(f"Split file {self.split_path} is truncated or damaged (not valid JSON: {e}). "
                                    f"Delete it and get it again.") from None
            print(f"Split file {self.split_path} is truncated or damaged (not valid JSON: {e}), probably by a build "
                  f"that was stopped while writing it: building it again")
            return None

    def load_split(self):
        """(train, val, test): the split file, or else ``create_split()``, written to the split file as CoOp does."""
        if os.path.exists(self.split_path):
            split = self.read_split_file()
            if split is not None:
                return split
        train, val, test = self.create_split()
        save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def create_split(self):
        """(train, val, test) built from the raw dataset when the split file is missing; readers that can
        build it (as CoOp's do from annotations) override this."""
        raise FileNotFoundError(
            f"{type(self).__name__}: split file {self.split_path} not found. Download "
            f"'{type(self).split_file}' (links in CoOp's DATASETS.md) into {self.dataset_dir}."
        )

    def fewshot_train_val(self, train, val, num_shots, seed):
        """K-shot train and min(K, 4)-shot val, from the official cache file when there is a usable one."""
        if num_shots < 1:
            return train, val
        cache = os.path.join(self.split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")
        if os.path.exists(cache):
            print(f"Loading preprocessed few-shot data from {cache}")
            loaded = load_fewshot_cache(cache, self.dataset_dir, image_dir=self.image_dir)
            if loaded is not None:
                return loaded
            return self._sample_fewshot(train, val, num_shots)

        train, val = self._sample_fewshot(train, val, num_shots)
        print(f"Saving preprocessed few-shot data to {cache}")
        try:
            save_fewshot_cache(cache, train, val)
        except OSError as e:  # e.g. a read-only dataset folder: the sample is still valid, just not cached
            warnings.warn(f"Could not write the few-shot cache {cache}: {e}")
        return train, val

    @staticmethod
    def _sample_fewshot(train, val, num_shots):
        train = generate_fewshot_dataset(train, num_shots=num_shots)
        val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        return train, val
