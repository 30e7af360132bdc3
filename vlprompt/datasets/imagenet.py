"""ImageNet and its test-only variants (ImageNetV2, ImageNet-Sketch, ImageNet-A, ImageNet-R), as CoOp reads them.

ImageNet has no split file: train = images/train, test (also used as val) = images/val, one folder per WNID
(sorted) named through classnames.txt; the lists are cached in ``preprocessed.pkl`` and the K-shot train
sample in ``split_fewshot/shot_K-seed_S.pkl`` (train only), both in CoOp's format. Within a class the files
keep os.listdir's order, as in CoOp, so the cache built here on a machine equals the official one there.
The variants are test-only (train_x = test = all images, no val, no few-shot or base/new subsampling);
ImageNet-A and -R hold 200 of the 1000 classes, labelled 0..199 in sorted WNID order.
"""
import os
import re
import warnings
from collections import OrderedDict

from vlprompt.data.base import Datum, DatasetBase, generate_fewshot_dataset
from vlprompt.data.split_dataset import DATUM_PICKLE_NAMES, load_fewshot_cache, save_datum_pickle
from vlprompt.utils import safe_pickle

from . import DATASET_REGISTRY
from .benchmark import DATASETS_MD, BenchmarkDataset, DatasetLayout, listdir_nohidden

CLASSNAMES_LINK = f"the Google Drive link in {DATASETS_MD}, section \"ImageNet\""
CLASSNAMES = f"classnames.txt from {CLASSNAMES_LINK} (save it in imagenet/)"


def read_classnames(path):
    """classnames.txt: "<wnid> <class name>" lines -> OrderedDict wnid -> name (file order)."""
    classnames = OrderedDict()
    with open(path) as f:
        for line in f:
            words = line.strip().split(" ")
            if words[0]:
                classnames[words[0]] = " ".join(words[1:])
    return classnames


def read_wnid_folders(folder, classnames, folders):
    """Datum per file of each class folder; label = index in ``folders``, files in os.listdir order."""
    items = []
    for label, wnid in enumerate(folders):
        class_dir = os.path.join(folder, wnid)
        classname = classnames[wnid]
        items.extend(Datum(impath=os.path.join(class_dir, im), label=label, classname=classname)
                     for im in listdir_nohidden(class_dir))
    return items


def unnamed_folders(report, folder, classnames, folders):
    """Record class folders that classnames.txt does not name (CoOp stops on them with a KeyError)."""
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        report.missing(f"{len(unknown)} class folders in {folder} have no line in classnames.txt "
                       f"(first: {', '.join(unknown[:3])})", CLASSNAMES)


def _class_dirs(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _reroot_all(items, dataset_dir):
    """Paths recorded under another copy of the dataset (an absolute prefix ending in the dataset folder's
    name), moved under ``dataset_dir``; None if the first item cannot be placed there."""
    name = os.path.basename(os.path.normpath(dataset_dir))
    match = None
    for match in re.finditer(r"(^|[\\/])" + re.escape(name) + r"[\\/]", items[0].impath):
        pass
    if match is None:
        return None
    prefix = items[0].impath[:match.end()]
    if any(not d.impath.startswith(prefix) for d in (items[len(items) // 2], items[-1])):
        return None
    return [Datum(impath=os.path.join(dataset_dir, *re.split(r"[\\/]+", d.impath[len(prefix):])), label=d.label,
                  domain=d.domain, classname=d.classname) for d in items]


@DATASET_REGISTRY.register()
class ImageNet(BenchmarkDataset):
    dataset_dir = "imagenet"
    image_dir = "images"
    fewshot_cache_keys = ("train",)  # CoOp's ImageNet cache holds no val
    split_file = ""
    title = "ImageNet"
    required = ("images/train", "images/val", "classnames.txt")
    sources = {
        "images": "the ILSVRC-2012 images from image-net.org, one folder per WNID, as imagenet/images/{train,val}",
        "images/train": "the ILSVRC-2012 training images from image-net.org, one folder per WNID, "
                        "as imagenet/images/train",
        "images/val": "the ILSVRC-2012 validation images from image-net.org, sorted into one folder per WNID, "
                      "as imagenet/images/val",
        "classnames.txt": CLASSNAMES,
    }

    @classmethod
    def check_more(cls, report, dataset_dir):
        names_file = os.path.join(dataset_dir, "classnames.txt")
        if not os.path.isfile(names_file):
            return
        classnames = read_classnames(names_file)
        for split in ("train", "val"):
            folder = os.path.join(dataset_dir, "images", split)
            if os.path.isdir(folder):
                unnamed_folders(report, folder, classnames, _class_dirs(folder))
        if os.path.exists(os.path.join(dataset_dir, "preprocessed.pkl")):
            report.notes.append("preprocessed.pkl (CoOp's cache of the image lists) found: it is used when its "
                                "paths exist, else rebuilt")

    def load_split(self):
        """(train, test, test) from preprocessed.pkl when usable, else from the folders (then cached)."""
        cache = os.path.join(self.dataset_dir, "preprocessed.pkl")
        loaded = self.load_preprocessed(cache) if os.path.exists(cache) else None
        if loaded is not None:
            train, test = loaded
        else:
            classnames = read_classnames(os.path.join(self.dataset_dir, "classnames.txt"))
            train = self.read_split_dir(classnames, "train")
            test = self.read_split_dir(classnames, "val")  # standard practice: evaluate on val
            try:
                save_datum_pickle(cache, {"train": train, "test": test})
            except OSError as e:
                warnings.warn(f"Could not write {cache}: {e}")
        return train, test, test

    def read_split_dir(self, classnames, split):
        folder = os.path.join(self.image_dir, split)
        return read_wnid_folders(folder, classnames, _class_dirs(folder))

    def load_preprocessed(self, path):
        """CoOp's {"train", "test"} pickle, read with the restricted unpickler. Paths are spot-checked (first,
        middle, last of each list) and re-rooted together when the dataset moved; None (with a warning) if
        it cannot be used, so the lists are read from the folders again."""
        try:
            data = safe_pickle.load(path, allowed=DATUM_PICKLE_NAMES)
            lists = [data["train"], data["test"]]
            if not all(isinstance(s, list) and s and all(isinstance(d, Datum) for d in s) for s in lists):
                raise TypeError("expected non-empty lists of Datum under 'train' and 'test'")
        except Exception as e:
            warnings.warn(f"Ignoring unreadable {path} ({type(e).__name__}: {e}); reading the image folders")
            return None

        def usable(items):
            return all(os.path.exists(d.impath) for d in (items[0], items[len(items) // 2], items[-1]))

        out = []
        for items in lists:
            if not usable(items):
                items = _reroot_all(items, self.dataset_dir)
                if items is None or not usable(items):
                    warnings.warn(f"{path} lists images that are not under {self.dataset_dir}; reading the image "
                                  f"folders instead (delete the file to cache the new lists)")
                    return None
            out.append(items)
        return out

    def fewshot_train_val(self, train, val, num_shots, seed):
        """CoOp samples (and caches) only train for ImageNet; val stays the test set."""
        if num_shots < 1:
            return train, val
        cache = os.path.join(self.split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")
        if os.path.exists(cache):
            print(f"Loading preprocessed few-shot data from {cache}")
            loaded = load_fewshot_cache(cache, self.dataset_dir, keys=("train",))
            if loaded is not None:
                return loaded[0], val
            return generate_fewshot_dataset(train, num_shots=num_shots), val
        train = generate_fewshot_dataset(train, num_shots=num_shots)
        print(f"Saving preprocessed few-shot data to {cache}")
        try:
            save_datum_pickle(cache, {"train": train})
        except OSError as e:
            warnings.warn(f"Could not write the few-shot cache {cache}: {e}")
        return train, val


class ImageNetVariant(DatasetLayout, DatasetBase):
    """A test-only ImageNet variant: class folders under ``image_dir`` named through classnames.txt."""

    required = ("classnames.txt",)
    ignored = ()  # entries of image_dir that are not class folders

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        cls = type(self)
        self.dataset_dir = os.path.join(root, cls.dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, cls.image_dir)
        self.prepare(root)
        data = self.read_data(read_classnames(os.path.join(self.dataset_dir, "classnames.txt")))
        super().__init__(train_x=data, test=data)

    @classmethod
    def class_folders(cls, image_dir, classnames):
        return [f for f in listdir_nohidden(image_dir, sort=True) if f not in cls.ignored]

    def read_data(self, classnames):
        return read_wnid_folders(self.image_dir, classnames, self.class_folders(self.image_dir, classnames))

    @classmethod
    def check_more(cls, report, dataset_dir):
        names_file, image_dir = os.path.join(dataset_dir, "classnames.txt"), os.path.join(dataset_dir, cls.image_dir)
        if os.path.isfile(names_file) and os.path.isdir(image_dir):
            classnames = read_classnames(names_file)
            unnamed_folders(report, image_dir, classnames, cls.class_folders(image_dir, classnames))


def _copy_classnames(folder):
    return f"a copy of imagenet/classnames.txt (from {CLASSNAMES_LINK}), into {folder}/"


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    """Matched-frequency ImageNetV2: folder "i" holds class i of classnames.txt (CoOp: i in range(1000))."""

    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    title = "ImageNetV2"
    sources = {image_dir: "imagenetv2-matched-frequency.tar.gz from the ImageNetV2 project page, extracted into "
                          "imagenetv2/",
               "classnames.txt": _copy_classnames("imagenetv2")}

    @classmethod
    def class_folders(cls, image_dir, classnames):
        return [str(label) for label in range(len(classnames))]

    def read_data(self, classnames):
        items = []
        for label, wnid in enumerate(classnames):
            class_dir = os.path.join(self.image_dir, str(label))
            items.extend(Datum(impath=os.path.join(class_dir, im), label=label, classname=classnames[wnid])
                         for im in listdir_nohidden(class_dir))
        return items

    @classmethod
    def check_more(cls, report, dataset_dir):
        names_file, image_dir = os.path.join(dataset_dir, "classnames.txt"), os.path.join(dataset_dir, cls.image_dir)
        if os.path.isfile(names_file) and os.path.isdir(image_dir):
            absent = [f for f in cls.class_folders(image_dir, read_classnames(names_file))
                      if not os.path.isdir(os.path.join(image_dir, f))]
            if absent:
                report.missing(f"{len(absent)} numbered class folders are missing in {image_dir} "
                               f"(first: {', '.join(absent[:3])})", cls.sources[cls.image_dir])


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    title = "ImageNet-Sketch"
    sources = {"images": "the ImageNet-Sketch archive from its project page, extracted as imagenet-sketch/images "
                         "(1,000 folders n*)",
               "classnames.txt": _copy_classnames("imagenet-sketch")}


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    title = "ImageNet-A"
    ignored = ("README.txt",)
    sources = {"imagenet-a": "imagenet-a.tar from the natural adversarial examples project page, extracted into "
                             "imagenet-adversarial/ (200 folders n*)",
               "classnames.txt": _copy_classnames("imagenet-adversarial")}


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    title = "ImageNet-R"
    ignored = ("README.txt",)
    sources = {"imagenet-r": "imagenet-r.tar from the ImageNet-R project page, extracted into imagenet-rendition/ "
                             "(200 folders n*)",
               "classnames.txt": _copy_classnames("imagenet-rendition")}
