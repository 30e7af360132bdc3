"""Base-to-new and open-world numbers from one evaluation over all classes, against the official two-run flow."""
import csv
import json
import math
import os

import pytest
import torch

from vlprompt import cli

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
CONFIGS = {"CoOp": "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
           "BMIP": "configs/trainers/BMIP/BMIP_ctx2_dp9_lr2.yaml"}
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4",
        "OPTIM.MAX_EPOCH", "1", "DATALOADER.TEST.BATCH_SIZE", "7"]


def run(trainer, data, out, *extra):
    argv = ["--root", data, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", os.path.join(REPO, CONFIGS[trainer]), "--output-dir", str(out), *extra, *FAST]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


# BMIP's default vision weights average over the test batch, and the two flows batch different images
# together; per-sample scores make its predictions independent of the batch.
@pytest.mark.parametrize("trainer,extra", [("CoOp", []), ("BMIP", ["TRAINER.BMIP.VISION_SCORE", "per_sample"])])
def test_single_pass_equals_two_run_flow(trainer, extra, tmp_path):
    data = str(tmp_path / "data")
    train_dir = tmp_path / "train_base"
    run(trainer, data, train_dir, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.FINAL_MODEL", "last_step", *extra)
    model = ["--eval-only", "--model-dir", str(train_dir), "--load-epoch", "1"]
    base = run(trainer, data, tmp_path / "test_base", *model, "DATASET.SUBSAMPLE_CLASSES", "base", *extra)
    new = run(trainer, data, tmp_path / "test_new", *model, "DATASET.SUBSAMPLE_CLASSES", "new", *extra)
    both = run(trainer, data, tmp_path / "test_all", *model, "DATASET.SUBSAMPLE_CLASSES", "all",
               "TEST.SAVE_LOGITS", "True", "TEST.SAVE_PREDICTIONS", "True", *extra)
    assert both["num_base_classes"] == 5 and both["num_new_classes"] == 5
    assert both["base_to_new"]["base"] == pytest.approx(base["accuracy"])
    assert both["base_to_new"]["new"] == pytest.approx(new["accuracy"])

    # open-world, recomputed from the saved logits
    saved = torch.load(tmp_path / "test_all/logits.pt")
    logits, label = saved["logits"], saved["label"]
    m = math.ceil(logits.shape[1] / 2)
    pred = logits.argmax(1)
    is_base = label < m
    ow_base = 100.0 * (pred[is_base] == label[is_base]).float().mean().item()
    ow_new = 100.0 * (pred[~is_base] == label[~is_base]).float().mean().item()
    ow = both["open_world"]
    assert ow["base"] == pytest.approx(ow_base) and ow["new"] == pytest.approx(ow_new)
    assert ow["hm"] == pytest.approx(2 * ow_base * ow_new / (ow_base + ow_new) if ow_base + ow_new else 0.0)
    assert ow["accuracy"] == pytest.approx(100.0 * (pred == label).float().mean().item())
    b2n = both["base_to_new"]
    assert b2n["hm"] == pytest.approx(2 * b2n["base"] * b2n["new"] / (b2n["base"] + b2n["new"])
                                      if b2n["base"] + b2n["new"] else 0.0)

    # the confusion matrix and the per-sample predictions
    confusion = torch.tensor(both["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(label)
    assert confusion.diagonal().sum() == (pred == label).sum()
    with open(tmp_path / "test_all/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["impath"] for r in rows] == saved["impath"]
    assert [int(r["label"]) for r in rows] == label.tolist()
    names = both["classes"]
    assert [r["top1"] for r in rows] == [names[p] for p in pred.tolist()]
    top_scores = logits.softmax(1).topk(5, dim=1).values
    assert [float(r["top5_score"]) for r in rows] == pytest.approx(top_scores[:, 4].tolist(), abs=1e-6)
