"""End-to-end runs of tools/train.py's CLI on the Synthetic dataset with the tiny CLIP."""
import json
import os
import pickle
import re
import sys
import types

import pytest
import torch

from vlprompt import cli
from vlprompt.engine.trainer import TrainerBase
from vlprompt.utils.run_lock import LOCK_NAME

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
COCOOP_CFG = os.path.join(REPO, "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml")
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def run(data_root, out, *extra, trainer="CoOp", config=COOP_CFG, seed="1"):
    argv = ["--root", data_root, "--seed", seed, "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", config, "--output-dir", str(out), *extra]
    return cli.main(argv if "MODEL.BACKBONE.NAME" in extra else argv + FAST)


def train_args(epochs=1, *more):
    return FAST + ["OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.TRAIN_X.BATCH_SIZE", "8", *more]


def test_train_then_eval_only_gives_identical_predictions(data_root, tmp_path):
    out = tmp_path / "train"
    assert run(data_root, out, *train_args(1, "TEST.SAVE_LOGITS", "True")) == 0
    ckpt_file = out / "prompt_learner" / "model.pth.tar-1"
    assert ckpt_file.is_file()
    saved = torch.load(ckpt_file, weights_only=False)
    assert list(saved["state_dict"]) == ["ctx"] and saved["epoch"] == 1  # only what was trained
    trained = torch.load(out / "logits.pt")
    ev = tmp_path / "eval"
    assert run(data_root, ev, "--eval-only", "--model-dir", str(out), "--load-epoch", "1",
               *train_args(1, "TEST.SAVE_LOGITS", "True")) == 0
    again = torch.load(ev / "logits.pt")
    assert again["impath"] == trained["impath"]
    assert torch.equal(again["label"], trained["label"])
    torch.testing.assert_close(again["logits"], trained["logits"], rtol=0, atol=0)
    assert trained["logits"].shape == (len(trained["impath"]), 10)

    metrics = json.loads((ev / "metrics.json").read_text())
    pred = again["logits"].argmax(1)
    assert metrics["num_samples"] == len(pred)
    assert metrics["accuracy"] == pytest.approx(100.0 * (pred == again["label"]).float().mean().item())
    assert metrics["num_classes_evaluated"] == 10 and len(metrics["classes"]) == 10

    log = (out / "log.txt").read_text()
    for marker in ("epoch [1/1] batch [", "Finish training", "=> result", "* accuracy: "):
        assert marker in log
    assert (out / "config.yaml").is_file()
    versions = json.loads((out / "versions.json").read_text())
    assert {"python", "torch", "open_clip", "vlprompt"} <= set(versions)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard"))


def test_seed_zero_is_a_real_seed(data_root, tmp_path):
    for name in ("a", "b"):
        assert run(data_root, tmp_path / name, *train_args(1), seed="0") == 0
    a = torch.load(tmp_path / "a/prompt_learner/model.pth.tar-1", weights_only=False)["state_dict"]["ctx"]
    b = torch.load(tmp_path / "b/prompt_learner/model.pth.tar-1", weights_only=False)["state_dict"]["ctx"]
    assert torch.equal(a, b)
    assert "SEED: 0" in (tmp_path / "a/config.yaml").read_text()


def test_resume_equals_uninterrupted_run(data_root, tmp_path, monkeypatch):
    args = train_args(3, "TRAIN.CHECKPOINT_FREQ", "1", "TEST.FINAL_MODEL", "best_val")
    assert run(data_root, tmp_path / "full", *args) == 0

    original = TrainerBase.after_epoch

    def stop_after_two(self):
        original(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainerBase, "after_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(data_root, tmp_path / "cut", *args)
    monkeypatch.setattr(TrainerBase, "after_epoch", original)
    assert not (tmp_path / "cut/prompt_learner/model.pth.tar-3").exists()
    assert run(data_root, tmp_path / "cut", "--resume", str(tmp_path / "cut"), *args) == 0
    for name in ("model.pth.tar-3", "model-best.pth.tar"):
        full = torch.load(tmp_path / "full/prompt_learner" / name, weights_only=False)
        cut = torch.load(tmp_path / "cut/prompt_learner" / name, weights_only=False)
        assert full["epoch"] == cut["epoch"]
        torch.testing.assert_close(cut["state_dict"]["ctx"], full["state_dict"]["ctx"], rtol=0, atol=0)
    full_m = json.loads((tmp_path / "full/metrics.json").read_text())
    cut_m = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert full_m["accuracy"] == cut_m["accuracy"]
    # the first log is kept, the resumed run logs next to it
    assert len([f for f in os.listdir(tmp_path / "cut") if f.startswith("log.txt")]) == 2


def test_final_checkpoints_hold_weights_only_and_end_the_run(data_root, tmp_path, capsys):
    """Resume points keep the optimizer, scheduler and RNG state; the last-epoch and best checkpoints hold the
    weights alone. Resuming a finished run trains nothing; resuming it to more epochs is refused by name."""
    out = tmp_path / "run"
    args = train_args(2, "TRAIN.CHECKPOINT_FREQ", "1", "TEST.FINAL_MODEL", "best_val")
    assert run(data_root, out, *args) == 0
    first = torch.load(out / "prompt_learner/model.pth.tar-1", weights_only=False)
    last = torch.load(out / "prompt_learner/model.pth.tar-2", weights_only=False)
    best = torch.load(out / "prompt_learner/model-best.pth.tar", weights_only=False)
    assert {"optimizer", "scheduler", "rng_state"} <= set(first) and "training_finished" not in first
    assert first["optimizer"]["state"][0]["momentum_buffer"].shape == first["state_dict"]["ctx"].shape
    for state in (last, best):
        assert not {"optimizer", "scheduler", "rng_state"} & set(state)
    assert last["training_finished"] and last["max_epoch"] == 2 and last["epoch"] == 2
    assert (out / "prompt_learner/checkpoint").read_text().strip() == "model.pth.tar-2"
    assert os.path.getsize(out / "prompt_learner/model.pth.tar-2") < os.path.getsize(
        out / "prompt_learner/model.pth.tar-1")

    capsys.readouterr()
    mtime = os.stat(out / "prompt_learner/model.pth.tar-2").st_mtime_ns
    assert run(data_root, out, "--resume", str(out), *args) == 0
    printed = capsys.readouterr().out
    assert "nothing left to train" in printed and "epoch [" not in printed
    assert os.stat(out / "prompt_learner/model.pth.tar-2").st_mtime_ns == mtime

    config = (out / "config.yaml").read_text()
    assert run(data_root, out, "--resume", str(out), *train_args(3, "TRAIN.CHECKPOINT_FREQ", "1")) == 1
    assert re.search("holds only the weights.*OPTIM.MAX_EPOCH 3; nothing was changed", capsys.readouterr().err)
    assert (out / "config.yaml").read_text() == config


def test_cocoop_and_zeroshot_from_cli(data_root, tmp_path):
    assert run(data_root, tmp_path / "cocoop", *train_args(1, "DATASET.SUBSAMPLE_CLASSES", "base"),
               trainer="CoCoOp", config=COCOOP_CFG) == 0
    state = torch.load(tmp_path / "cocoop/prompt_learner/model.pth.tar-1", weights_only=False)["state_dict"]
    assert set(state) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                          "meta_net.linear2.weight", "meta_net.linear2.bias"}
    metrics = json.loads((tmp_path / "cocoop/metrics.json").read_text())
    assert metrics["num_classes_evaluated"] == 5  # base half of 10 classes
    assert run(data_root, tmp_path / "zs", "--eval-only", *FAST, trainer="ZeroshotCLIP") == 0
    assert "* accuracy:" in (tmp_path / "zs/log.txt").read_text()


def test_unknown_config_key_message(data_root, tmp_path, capsys):
    assert run(data_root, tmp_path / "x", *FAST, "TRAINER.COOP.N_CTXX", "4") == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'TRAINER.COOP.N_CTXX'" in err and "TRAINER.COOP.N_CTX" in err


def test_unknown_trainer_message(data_root, tmp_path, capsys):
    assert run(data_root, tmp_path / "x", *FAST, trainer="CoOpp") == 2
    err = capsys.readouterr().err
    assert "Unknown trainer 'CoOpp'" in err and "CoOp" in err
    assert not (tmp_path / "x").exists()  # nothing was written


def test_missing_weights_message(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run(data_root, tmp_path / "x", "MODEL.BACKBONE.NAME", "ViT-B/16", "DATALOADER.NUM_WORKERS", "0") == 2
    err = capsys.readouterr().err
    assert "No weights found for CLIP backbone 'ViT-B/16'" in err and "MODEL.BACKBONE.PATH" in err


def test_missing_dataset_folder_message(tmp_path, capsys):
    argv = ["--root", str(tmp_path / "nowhere"), "--trainer", "CoOp", "--dataset-config-file",
            os.path.join(REPO, "configs/datasets/oxford_pets.yaml"), "--config-file", COOP_CFG,
            "--output-dir", str(tmp_path / "out"), *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "oxford_pets" in err.lower() or "OxfordPets" in err


def test_output_dir_with_results_is_not_overwritten(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(data_root, out, *train_args(1)) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert run(data_root, out, *train_args(1)) == 2
    assert "already holds results" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == before


def test_eval_only_missing_checkpoint(data_root, tmp_path, capsys):
    assert run(data_root, tmp_path / "x", "--eval-only", "--model-dir", str(tmp_path / "none"), *FAST) == 2
    assert 'Model not found at "' in capsys.readouterr().err


def _fake_dassl_modules():
    """Modules named like Dassl's, so pickles reference dassl.* classes the way official checkpoints do."""
    mod = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler:
        def __init__(self):
            self.successor = None

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    mod.ConstantWarmupScheduler = ConstantWarmupScheduler
    return {"dassl": types.ModuleType("dassl"), "dassl.optim": types.ModuleType("dassl.optim"),
            "dassl.optim.lr_scheduler": mod}


def test_loads_official_coop_checkpoint(data_root, tmp_path, monkeypatch):
    """An official checkpoint: token_prefix/suffix buffers and a pickled Dassl scheduler object inside."""
    out = tmp_path / "ours"
    assert run(data_root, out, *train_args(1, "TEST.SAVE_LOGITS", "True")) == 0
    ours = torch.load(out / "prompt_learner/model.pth.tar-1", weights_only=False)
    fake = _fake_dassl_modules()
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    sched = fake["dassl.optim.lr_scheduler"].ConstantWarmupScheduler()
    sched.successor = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1), 10)
    official = {
        "state_dict": {"ctx": ours["state_dict"]["ctx"].half(), "token_prefix": torch.zeros(10, 1, 48),
                       "token_suffix": torch.zeros(10, 60, 48)},
        "epoch": 50, "optimizer": {}, "scheduler": sched, "val_result": None,
    }
    official_dir = tmp_path / "official" / "prompt_learner"
    official_dir.mkdir(parents=True)
    torch.save(official, official_dir / "model.pth.tar-50")
    for name in fake:
        monkeypatch.delitem(sys.modules, name)  # loading must not need Dassl
    ev = tmp_path / "eval"
    assert run(data_root, ev, "--eval-only", "--model-dir", str(tmp_path / "official"), "--load-epoch", "50",
               *train_args(1, "TEST.SAVE_LOGITS", "True")) == 0
    expected = torch.load(out / "logits.pt")["logits"]
    got = torch.load(ev / "logits.pt")["logits"]
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)  # the official ctx is fp16


def test_checkpoint_shape_mismatch_names_key(data_root, tmp_path, capsys):
    out = tmp_path / "ours"
    assert run(data_root, out, *train_args(1)) == 0
    assert run(data_root, tmp_path / "ev", "--eval-only", "--model-dir", str(out), "--load-epoch", "1",
               *train_args(1, "TRAINER.COOP.N_CTX", "4")) == 1
    assert re.search(r"'ctx' has shape \(16, 48\), the model expects \(4, 48\) for 'prompt_learner.ctx'",
                     capsys.readouterr().err)


def test_broken_image_stops_or_is_skipped(tmp_path, capsys):
    root = tmp_path / "data"
    assert run(str(root), tmp_path / "first", *train_args(1)) == 0
    split = json.loads((root / "synthetic/split_synthetic.json").read_text())
    broken = root / "synthetic/images" / split["test"][0][0]
    broken.write_bytes(b"not an image")
    assert run(str(root), tmp_path / "stop", *train_args(1)) == 1
    assert str(broken) in capsys.readouterr().err
    assert run(str(root), tmp_path / "skip", *train_args(1, "DATALOADER.SKIP_BROKEN_IMAGES", "True")) == 0
    log = (tmp_path / "skip/log.txt").read_text()
    assert "Skipped 1 broken images" in log
    assert json.loads((tmp_path / "skip/metrics.json").read_text())["num_samples"] == len(split["test"]) - 1


def test_init_weights_and_input_size_check(data_root, tmp_path, capsys):
    out = tmp_path / "a"
    assert run(data_root, out, *train_args(1)) == 0
    ckpt = str(out / "prompt_learner/model.pth.tar-1")
    assert run(data_root, tmp_path / "b", *train_args(1, "MODEL.INIT_WEIGHTS", ckpt, "OPTIM.LR", "0.0",
                                                        "OPTIM.WARMUP_EPOCH", "0")) == 0
    a = torch.load(ckpt, weights_only=False)["state_dict"]["ctx"]
    b = torch.load(tmp_path / "b/prompt_learner/model.pth.tar-1", weights_only=False)["state_dict"]["ctx"]
    torch.testing.assert_close(b, a, rtol=0, atol=0)  # lr 0: the initial weights come back unchanged
    assert run(data_root, tmp_path / "c", *train_args(1, "INPUT.SIZE", "(32, 32)")) == 1
    assert "INPUT.SIZE (32, 32) must equal the CLIP image size (224, 224)" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = train_args(2, "TRAIN.CHECKPOINT_FREQ", "1")
    from vlprompt.trainers.base import CLIPPromptTrainer

    original = CLIPPromptTrainer.model_loss

    def nan_in_second_epoch(self, images, labels):
        logits, loss = original(self, images, labels)
        return logits, loss * float("nan") if self.epoch == 1 else loss

    monkeypatch.setattr(CLIPPromptTrainer, "model_loss", nan_in_second_epoch)
    assert run(data_root, out, *args) == 3
    err = capsys.readouterr().err
    assert "Loss is nan at epoch 2, batch 1 (step 6) with precision fp32" in err
    assert sorted(os.listdir(out / "prompt_learner")) == ["checkpoint", "model.pth.tar-1"]
    assert torch.load(out / "prompt_learner/model.pth.tar-1", weights_only=False)["epoch"] == 1
