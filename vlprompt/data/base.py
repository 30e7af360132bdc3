"""Datum, DatasetBase and the sampling helpers every reader shares, matching Dassl/CoOp item for item.

Few-shot and base/new sampling draw from python's global ``random`` in the same order as the official
code, so a given SEED selects the same images as Dassl/CoOp.
"""
import math
import os
import random
from collections import defaultdict

__all__ = [
    "Datum", "DatasetBase", "LabelError", "check_split_labels", "split_dataset_by_label", "split_dataset_by_domain",
    "generate_fewshot_dataset",
    "subsample_classes",
]


class Datum:
    """One labelled image.

    The attribute names (``_impath``, ``_label``, ``_domain``, ``_classname``) are Dassl's, so Dassl's
    pickled Datum objects (the official few-shot caches) load straight into this class. Unlike Dassl,
    the constructor does not stat the file; readers check paths where it matters.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self._impath = os.fspath(impath)
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return (f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, "
                f"classname={self._classname!r})")


class LabelError(ValueError):
    """Labels that do not make a classification task: gaps, or evaluation classes the training set lacks."""


def _label_range_problem(labels):
    """A message when ``labels`` (a set) is not 0..K-1, else ''."""
    if not labels:
        return ""
    expected = set(range(max(labels) + 1))
    gaps = sorted(expected - labels)
    if gaps:
        shown = ", ".join(map(str, gaps[:10])) + (", ..." if len(gaps) > 10 else "")
        return (f"the training labels must be 0..{max(labels)} without gaps, but no training image has label "
                f"{shown} (a class the model would have no name for)")
    return ""


def check_split_labels(train, val, test, source):
    """Training labels are 0..K-1 without gaps, and every val/test label is one of them; LabelError names
    ``source`` (the file or dataset) and the first offending entry."""
    train_labels = {item.label for item in train or ()}
    problem = _label_range_problem(train_labels)
    if problem:
        raise LabelError(f"{source}: {problem}")
    for name, items in (("val", val), ("test", test)):
        for i, item in enumerate(items or ()):
            if item.label not in train_labels:
                raise LabelError(f'{source}: "{name}" entry {i} ({item.impath}) has label {item.label}, which no '
                                 f"training image has (training labels: 0..{max(train_labels)}): the model cannot "
                                 f"predict a class it was never given")


def split_dataset_by_label(data_source):
    """label -> items, labels in order of first appearance (Dassl's defaultdict; few-shot order depends on it)."""
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def split_dataset_by_domain(data_source):
    output = defaultdict(list)
    for item in data_source:
        output[item.domain].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    """Sample ``num_shots`` items per class from each data source, exactly as Dassl does.

    Per source, labels are visited in order of first appearance and ``random.sample(items, num_shots)``
    picks the items; a class with fewer items keeps all of them (no random call) unless ``repeat``, which
    draws ``random.choices(items, k=num_shots)``. ``num_shots < 1`` returns the input unchanged.
    One source returns a list, several return a list of lists (Dassl returns the input tuple for < 1).
    """
    if num_shots < 1:
        return data_sources[0] if len(data_sources) == 1 else data_sources

    print(f"Creating a {num_shots}-shot dataset")
    output = []
    for data_source in data_sources:
        dataset = []
        short = []
        for label, items in split_dataset_by_label(data_source).items():
            if len(items) < num_shots and not repeat:
                short.append(f"{label} ({items[0].classname}): {len(items)}")
            if len(items) >= num_shots:
                dataset.extend(random.sample(items, num_shots))
            elif repeat:
                dataset.extend(random.choices(items, k=num_shots))
            else:
                dataset.extend(items)
        if short:
            print(f"Warning: {num_shots}-shot sampling: {len(short)} class(es) have fewer images, all of which are "
                  f"used (label (class): images): {'; '.join(short[:10])}{'; ...' if len(short) > 10 else ''}")
        output.append(dataset)
    return output[0] if len(output) == 1 else output


def subsample_classes(*args, subsample="all"):
    """Keep the base (first ceil(n/2) sorted labels) or new (the rest) classes, as CoOp does.

    The label set comes from the first dataset (train). Kept items are relabelled 0..k-1 in label order;
    like CoOp, the new Datum objects keep impath/label/classname only (domain resets to 0).
    ``"all"`` returns the arguments untouched (a tuple).
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"DATASET.SUBSAMPLE_CLASSES must be 'all', 'base' or 'new', got {subsample!r}")
    if subsample == "all":
        return args

    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return [
        [Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
         for item in dataset if item.label in relabeler]
        for dataset in args
    ]


class DatasetBase:
    """train_x / train_u / val / test lists of Datum plus the class bookkeeping Dassl derives from train_x."""

    dataset_dir = ""  # folder under DATASET.ROOT (readers set it)
    domains = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        # Dassl derives both from train_x only: a class absent from train is unknown to the model
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @staticmethod
    def get_num_classes(data_source):
        """max label + 1 (not the number of distinct labels), as Dassl."""
        if not data_source:
            raise ValueError("The training split is empty: cannot count classes")
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """({label: classname}, classnames sorted by label)."""
        mapping = {item.label: item.classname for item in data_source}
        classnames = [mapping[label] for label in sorted(mapping)]
        return mapping, classnames

    split_dataset_by_label = staticmethod(split_dataset_by_label)
    split_dataset_by_domain = staticmethod(split_dataset_by_domain)
    subsample_classes = staticmethod(subsample_classes)
    generate_fewshot_dataset = staticmethod(generate_fewshot_dataset)
