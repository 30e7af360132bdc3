"""Multi-process training (DistributedDataParallel, gloo on the CPU) against one process.

Two processes with per-process batch 4 and one process with batch 8 see the same global batches (sequential
sampler, deterministic transform: Resize + ToTensor + Normalize), and CoOp has no batch statistics, so the
mean of the per-process gradients is the full-batch gradient: the loss curves, the trained context and the
test predictions agree up to float32 summation order. Tolerance: rtol 1e-4, atol 1e-5.
"""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vlprompt import cli
from vlprompt.engine import distributed as dist_utils

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
RTOL, ATOL = 1e-4, 1e-5


def argv(data_root, out, *extra):
    return ["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", DATASET_CFG,
            "--config-file", COOP_CFG, "--output-dir", str(out), "--device", "cpu",
            "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
            "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.5", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "DATALOADER.TRAIN_X.SAMPLER", "SequentialSampler", "INPUT.TRANSFORMS", "['normalize']",
            "DATALOADER.TEST.BATCH_SIZE", "12", "TRAIN.PRINT_FREQ", "1", "TEST.SAVE_LOGITS", "True", *extra]


def _worker(rank, world, port, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    code = cli.main(args)
    if code != 0:
        raise SystemExit(code)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data_root = str(root / "data")
    one, two = root / "one", root / "two"
    assert cli.main(argv(data_root, one)) == 0  # also writes the Synthetic dataset the two processes read
    mp.spawn(_worker, args=(2, free_port(), argv(data_root, two)), nprocs=2, join=True)
    return one, two


def test_two_processes_equal_one_process(runs):
    one, two = runs
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4  # 2 epochs x (20 images / global batch 8, last partial batch dropped)
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=RTOL, atol=ATOL)
    assert a[-1] < a[0]  # it trained
    ctx = [torch.load(d / "prompt_learner/model.pth.tar-2", weights_only=False)["state_dict"]["ctx"] for d in runs]
    torch.testing.assert_close(ctx[1], ctx[0], rtol=RTOL, atol=ATOL)
    # evaluation sharded over 2 processes, gathered without the sampler's padding duplicates
    la, lb = torch.load(one / "logits.pt"), torch.load(two / "logits.pt")
    assert lb["impath"] == la["impath"] and torch.equal(lb["label"], la["label"])
    torch.testing.assert_close(lb["logits"], la["logits"], rtol=RTOL, atol=1e-4)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in runs)
    assert mb["num_samples"] == ma["num_samples"] == 40 and mb["accuracy"] == ma["accuracy"]
    # rank 0 alone writes logs, checkpoints and TensorBoard files
    log = (two / "log.txt").read_text()
    assert "Distributed run: 2 processes (gloo backend)" in log
    assert "DistributedDataParallel over prompt_learner on 2 processes (per-process batch 4)" in log
    assert sorted(os.listdir(two / "prompt_learner")) == ["checkpoint", "model.pth.tar-2"]
    assert len(os.listdir(two / "tensorboard")) == 1


def test_global_batch_must_divide(monkeypatch):
    monkeypatch.setattr(dist_utils, "get_world_size", lambda: 3)
    assert dist_utils.per_rank_batch_size(12) == 4
    with pytest.raises(ValueError, match=r"DATALOADER.TRAIN_X.BATCH_SIZE 8 is the global batch and must be "
                                         r"divisible by the number of processes \(3\)"):
        dist_utils.per_rank_batch_size(8)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_shards(shuffle, drop_last):
    n, world = 11, 3
    shards = [list(dist_utils.DistributedSampler(range(n), shuffle=shuffle, seed=5, drop_last=drop_last,
                                                 num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    union = [i for s in shards for i in s]
    if drop_last:
        assert len(union) == 9 and len(set(union)) == 9
    else:
        assert set(union) == set(range(n)) and len(union) == 12  # one padding duplicate
    if not shuffle:  # global batch k of the shards = batch k of one process
        assert sorted(shards[0][:2] + shards[1][:2] + shards[2][:2]) == list(range(6))
