"""OxfordFlowers (Flowers102): split_zhou_OxfordFlowers.json, or CoOp's 50/20/30 split of imagelabels.mat
with the names of cat_to_name.json."""
import json
import os
import random
from collections import defaultdict

from scipy.io import loadmat

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset

FLOWERS_PAGE = "the 102 Category Flower Dataset page (VGG, Oxford)"


@DATASET_REGISTRY.register()
class OxfordFlowers(BenchmarkDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    title = "Flowers102"
    split_sources = ("imagelabels.mat", "cat_to_name.json")
    sources = {
        "jpg": f"102flowers.tgz from {FLOWERS_PAGE}, extracted into oxford_flowers/",
        "imagelabels.mat": f"imagelabels.mat from {FLOWERS_PAGE}, into oxford_flowers/",
        "cat_to_name.json": "the Google Drive link in CoOp's DATASETS.md, section \"Flowers102\" (save it in "
                            "oxford_flowers/)",
    }

    def create_split(self):
        """Image i (1-based, image_%05d.jpg) has label labels[i-1]; per label, in order of first appearance,
        shuffle and cut round(n/2) train, round(n/5) val, the rest test."""
        tracker = defaultdict(list)
        labels = loadmat(os.path.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]
        for i, label in enumerate(labels):
            tracker[int(label)].append(os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        with open(os.path.join(self.dataset_dir, "cat_to_name.json")) as f:
            lab2cname = json.load(f)

        print("Splitting data into 50% train, 20% val, and 30% test")
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_train, n_val = round(len(impaths) * 0.5), round(len(impaths) * 0.2)
            if not (n_train > 0 and n_val > 0 and len(impaths) - n_train - n_val > 0):
                raise ValueError(f"Flower class {label} has {len(impaths)} images: too few for a train/val/test split")
            cname = lab2cname[str(label)]
            for items, part in ((train, impaths[:n_train]), (val, impaths[n_train:n_train + n_val]),
                                (test, impaths[n_train + n_val:])):
                items.extend(Datum(impath=im, label=label - 1, classname=cname) for im in part)
        return train, val, test
