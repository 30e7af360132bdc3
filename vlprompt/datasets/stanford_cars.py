"""StanfordCars: split_zhou_StanfordCars.json (paths relative to stanford_cars/), or CoOp's split of the
devkit's .mat annotations. Class names move the year to the front ("2012 Audi R8 Coupe")."""
import os

from scipy.io import loadmat

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, split_trainval

CARS_PAGE = "the Stanford Cars dataset page"


@DATASET_REGISTRY.register()
class StanfordCars(BenchmarkDataset):
    dataset_dir = "stanford_cars"
    image_dir = ""  # the split's paths start with cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    title = "StanfordCars"
    required = ("cars_train", "cars_test")
    split_sources = ("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat")
    sources = {
        "cars_train": f"cars_train.tgz from {CARS_PAGE}, extracted into stanford_cars/",
        "cars_test": f"cars_test.tgz from {CARS_PAGE}, extracted into stanford_cars/",
        "": f"cars_train.tgz and cars_test.tgz from {CARS_PAGE}, extracted into stanford_cars/",
        "devkit/cars_train_annos.mat": f"car_devkit.tgz from {CARS_PAGE}, extracted into stanford_cars/",
        "devkit/cars_meta.mat": f"car_devkit.tgz from {CARS_PAGE}, extracted into stanford_cars/",
        "cars_test_annos_withlabels.mat": f"cars_test_annos_withlabels.mat from {CARS_PAGE}, into stanford_cars/",
    }

    def create_split(self):
        meta = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_annotations("cars_train", os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat"),
                                         meta)
        test = self.read_annotations("cars_test", os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat"),
                                     meta)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, image_dir, anno_file, meta_file):
        annotations = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        items = []
        for anno in annotations:
            label = int(anno["class"][0, 0]) - 1
            *words, year = class_names[label][0].split(" ")
            items.append(Datum(impath=os.path.join(self.dataset_dir, image_dir, anno["fname"][0]), label=label,
                               classname=" ".join([year] + words)))
        return items
