"""SUN397: split_zhou_SUN397.json, or CoOp's split of the Training_01/Testing_01 partition.
Class names drop the letter folder and put the qualifier first ("/a/apartment_building/outdoor" ->
"outdoor apartment_building")."""
import os

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, split_trainval

SUN_PAGE = "the SUN database page (Princeton)"
PARTITIONS = f"Partitions.zip from {SUN_PAGE}, extracted into sun397/"


@DATASET_REGISTRY.register()
class SUN397(BenchmarkDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    title = "SUN397"
    split_sources = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")
    sources = {"SUN397": f"SUN397.tar.gz from {SUN_PAGE}, extracted into sun397/",
               **{name: PARTITIONS for name in split_sources}}

    def create_split(self):
        with open(os.path.join(self.dataset_dir, "ClassName.txt")) as f:
            cname2lab = {line.strip()[1:]: i for i, line in enumerate(f)}
        trainval = self.read_partition(cname2lab, "Training_01.txt")
        test = self.read_partition(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_partition(self, cname2lab, name):
        items = []
        with open(os.path.join(self.dataset_dir, name)) as f:
            for line in f:
                imname = line.strip()[1:]  # drop the leading "/"
                folder = os.path.dirname(imname)
                classname = " ".join(folder.split("/")[1:][::-1])
                items.append(Datum(impath=os.path.join(self.image_dir, imname), label=cname2lab[folder],
                                   classname=classname))
        return items
