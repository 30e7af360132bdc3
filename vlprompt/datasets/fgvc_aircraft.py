"""FGVCAircraft (variants): no split file; CoOp reads variants.txt and images_variant_{train,val,test}.txt."""
import os

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset

SPLITS = ("train", "val", "test")
ARCHIVE = ("the data/ folder of fgvc-aircraft-2013b.tar.gz from the FGVC-Aircraft page (VGG, Oxford), "
           "moved under --root and renamed fgvc_aircraft/")


@DATASET_REGISTRY.register()
class FGVCAircraft(BenchmarkDataset):
    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    split_file = ""
    title = "FGVCAircraft"
    required = ("variants.txt",) + tuple(f"images_variant_{s}.txt" for s in SPLITS)
    sources = {name: ARCHIVE for name in ("images",) + required}

    @classmethod
    def read_lists(cls, dataset_dir):
        """{split: [(image file, variant)]} from lines "<image id> <variant name with spaces>"."""
        out = {}
        for split in SPLITS:
            with open(os.path.join(dataset_dir, f"images_variant_{split}.txt")) as f:
                out[split] = [(words[0] + ".jpg", " ".join(words[1:])) for words in
                              (line.strip().split(" ") for line in f)]
        return out

    @classmethod
    def listed_images(cls, dataset_dir):
        lists = cls.read_lists(dataset_dir)
        return ([im for split in SPLITS for im, _ in lists[split]], "images_variant_{train,val,test}.txt",
                os.path.join(dataset_dir, cls.image_dir))

    @classmethod
    def check_more(cls, report, dataset_dir):
        if not all(os.path.isfile(os.path.join(dataset_dir, rel)) for rel in cls.required):
            return
        with open(os.path.join(dataset_dir, "variants.txt")) as f:
            known = {line.strip() for line in f}
        unknown = sorted({v for items in cls.read_lists(dataset_dir).values() for _, v in items} - known)
        if unknown:
            report.missing(f"{len(unknown)} variants in images_variant_*.txt are not in variants.txt "
                           f"(first: {', '.join(unknown[:3])})", cls.sources["variants.txt"])

    def load_split(self):
        with open(os.path.join(self.dataset_dir, "variants.txt")) as f:
            cname2lab = {line.strip(): i for i, line in enumerate(f)}
        lists = self.read_lists(self.dataset_dir)
        return tuple(
            [Datum(impath=os.path.join(self.image_dir, im), label=cname2lab[variant], classname=variant)
             for im, variant in lists[split]]
            for split in SPLITS
        )
