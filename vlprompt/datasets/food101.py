"""Food101: split_zhou_Food101.json, or CoOp's 50/20/30 split of images/ (one folder per dish)."""
from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, read_and_split_data


@DATASET_REGISTRY.register()
class Food101(BenchmarkDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    title = "Food101"
    split_sources = ("images",)
    sources = {"images": "food-101.tar.gz from the Food-101 page (ETH Zurich), extracted under --root as food-101/"}

    def create_split(self):
        return read_and_split_data(self.image_dir)
