"""Caltech101: split_zhou_Caltech101.json, or CoOp's 50/20/30 split of 101_ObjectCategories.

As CoOp: BACKGROUND_Google and Faces_easy are left out, and four folder names become singular nouns.
"""
from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, read_and_split_data

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(BenchmarkDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    title = "Caltech101"
    split_sources = ("101_ObjectCategories",)
    sources = {"101_ObjectCategories": "101_ObjectCategories.tar.gz from the Caltech 101 page (CaltechDATA), "
                                       "extracted into caltech-101/"}

    def create_split(self):
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
