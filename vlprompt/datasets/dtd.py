"""DescribableTextures (DTD): split_zhou_DescribableTextures.json, or CoOp's 50/20/30 split of images/.
Class names are the folder names (CoOp renames none)."""
from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(BenchmarkDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    title = "DTD"
    split_sources = ("images",)
    sources = {"images": "dtd-r1.0.1.tar.gz from the Describable Textures Dataset page (VGG, Oxford), "
                         "extracted under --root as dtd/"}

    def create_split(self):
        return read_and_split_data(self.image_dir)
