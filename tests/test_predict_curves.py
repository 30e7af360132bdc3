"""TEST.EVAL_EVERY: learning curves that leave the run's final checkpoint and metrics bit-identical."""
import json
import os

import pytest
import torch

from vlprompt import cli

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1"]


def run(data_root, out, *extra):
    argv = ["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", DATASET_CFG,
            "--config-file", COOP_CFG, "--output-dir", str(out), *FAST, *extra]
    assert cli.main(argv) == 0


def test_eval_every_leaves_the_final_results_bit_identical(tmp_path):
    data_root = str(tmp_path / "data")
    base = ["DATASET.SUBSAMPLE_CLASSES", "base"]
    run(data_root, tmp_path / "plain", *base)
    run(data_root, tmp_path / "curves", *base, "TEST.EVAL_EVERY", "1")
    for epoch in (1, 2, 3):
        plain = torch.load(tmp_path / f"plain/prompt_learner/model.pth.tar-{epoch}", weights_only=False)
        curves = torch.load(tmp_path / f"curves/prompt_learner/model.pth.tar-{epoch}", weights_only=False)
        assert list(plain["state_dict"]) == list(curves["state_dict"])
        for key in plain["state_dict"]:
            assert torch.equal(plain["state_dict"][key], curves["state_dict"][key])
    final = json.loads((tmp_path / "plain/metrics.json").read_text())
    assert json.loads((tmp_path / "curves/metrics.json").read_text()) == final
    assert not (tmp_path / "plain/metrics_history.jsonl").exists()

    history = [json.loads(line) for line in (tmp_path / "curves/metrics_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    last = history[-1]
    # the base run's own numbers: its base samples among its base classes, as its final evaluation
    assert last["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    # ECE in %: the curve point's logits come from the all-classes model, equal to float rounding
    assert last["ece"] == pytest.approx(final["ece"], abs=1e-4)
    assert last["nll"] == pytest.approx(final["nll"], abs=1e-6)
    assert last["num_samples"] == final["num_samples"]
    # new classes and HM from the all-classes test set: those of an --eval-only run over all classes
    argv = ["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", DATASET_CFG,
            "--config-file", COOP_CFG, "--output-dir", str(tmp_path / "all"), "--eval-only", "--model-dir",
            str(tmp_path / "curves"), "--load-epoch", "3", *FAST, "DATASET.SUBSAMPLE_CLASSES", "all"]
    assert cli.main(argv) == 0
    everything = json.loads((tmp_path / "all/metrics.json").read_text())
    for block in ("base_to_new", "open_world"):
        assert last[block] == pytest.approx(everything[block], abs=1e-6)
    events = os.listdir(tmp_path / "curves/tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)
