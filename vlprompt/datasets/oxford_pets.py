"""OxfordPets (Oxford-IIIT Pet): split_zhou_OxfordPets.json, or CoOp's split of annotations/trainval.txt."""
import os

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, split_trainval

PETS_PAGE = "the Oxford-IIIT Pet Dataset page (VGG, Oxford)"


@DATASET_REGISTRY.register()
class OxfordPets(BenchmarkDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    title = "OxfordPets"
    split_sources = ("annotations/trainval.txt", "annotations/test.txt")
    sources = {
        "images": f"images.tar.gz from {PETS_PAGE}, extracted into oxford_pets/",
        "annotations/trainval.txt": f"annotations.tar.gz from {PETS_PAGE}, extracted into oxford_pets/",
        "annotations/test.txt": f"annotations.tar.gz from {PETS_PAGE}, extracted into oxford_pets/",
    }

    def create_split(self):
        trainval = self.read_annotations("trainval.txt")
        test = self.read_annotations("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, name):
        """Lines "<image> <class id> <species> <breed id>"; the class name is the lower-cased image-name prefix."""
        items = []
        with open(os.path.join(self.dataset_dir, "annotations", name)) as f:
            for line in f:
                imname, label, _species, _breed = line.strip().split(" ")
                breed = "_".join(imname.split("_")[:-1]).lower()
                items.append(Datum(impath=os.path.join(self.image_dir, imname + ".jpg"), label=int(label) - 1,
                                   classname=breed))
        return items
