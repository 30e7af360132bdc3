"""Every official dataset config trains and evaluates a CoOp run end to end from the CLI, on its miniature
layout (tiny CLIP, one epoch, 2 shots)."""
import json
import os

import pytest

from vlprompt import cli
from vlprompt.datasets.fixtures import write_fixture_data

from conftest import REPO

COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
# config file -> test-set size on the fixture
CONFIGS = {
    "imagenet": 10, "caltech101": 8, "oxford_pets": 8, "stanford_cars": 8, "oxford_flowers": 8, "food101": 6,
    "fgvc_aircraft": 8, "sun397": 8, "dtd": 8, "eurosat": 8, "ucf101": 8, "imagenetv2": 10, "imagenet_sketch": 10,
    "imagenet_a": 6, "imagenet_r": 6,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DATA")
    write_fixture_data(str(root))
    return str(root)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_coop_trains_and_evaluates_on_every_dataset_config(config, data_root, tmp_path):
    out = tmp_path / "out"
    argv = ["--root", data_root, "--seed", "1", "--trainer", "CoOp",
            "--dataset-config-file", os.path.join(REPO, "configs/datasets", f"{config}.yaml"),
            "--config-file", COOP_CFG, "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
            "DATASET.NUM_SHOTS", "2"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == CONFIGS[config]
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file()
    log = (out / "log.txt").read_text()
    assert "Finish training" in log and "* accuracy: " in log
