"""EuroSAT (RGB): split_zhou_EuroSAT.json, or CoOp's 50/20/30 split of 2750/ with CoOp's readable names."""
from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, read_and_split_data

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(BenchmarkDataset):
    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    title = "EuroSAT"
    split_sources = ("2750",)
    sources = {"2750": "EuroSAT.zip (the RGB images) from the EuroSAT page, extracted into eurosat/"}

    def create_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
