"""UCF101 (middle frames): split_zhou_UCF101.json, or CoOp's split of trainlist01/testlist01.
Class names split the CamelCase action at capitals ("ApplyEyeMakeup" -> "Apply_Eye_Makeup"), which is also
the frame folder's name."""
import os
import re

from vlprompt.data.base import Datum

from . import DATASET_REGISTRY
from .benchmark import BenchmarkDataset, split_trainval

SPLITS = "UCF101TrainTestSplits-RecognitionTask.zip from the UCF101 page (UCF CRCV), extracted into ucf101/"


@DATASET_REGISTRY.register()
class UCF101(BenchmarkDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    title = "UCF101"
    split_sources = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                     "ucfTrainTestlist/testlist01.txt")
    sources = {"UCF-101-midframes": "UCF-101-midframes.zip from the Google Drive link in CoOp's DATASETS.md, "
                                    "section \"UCF101\", extracted into ucf101/",
               **{name: SPLITS for name in split_sources}}

    def create_split(self):
        cname2lab = {}
        with open(os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt")) as f:
            for line in f:
                label, classname = line.strip().split(" ")
                cname2lab[classname] = int(label) - 1
        trainval = self.read_list(cname2lab, "trainlist01.txt")
        test = self.read_list(cname2lab, "testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, cname2lab, name):
        items = []
        with open(os.path.join(self.dataset_dir, "ucfTrainTestlist", name)) as f:
            for line in f:
                action, filename = line.strip().split(" ")[0].split("/")  # "Action/v_Action_g08_c01.avi [label]"
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = os.path.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed))
        return items
