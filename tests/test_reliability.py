"""Reliability under faults and concurrency (README "Reliability"): exact resume with data-loader workers after
kill -9 and SIGTERM, one run per output folder, logs that survive a kill, checked checkpoints, errors as
messages. Runs of tools/train.py's CLI on the Synthetic dataset with the tiny CLIP, as tests/test_cli.py."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vlprompt import cli
from vlprompt.engine import checkpoint as ckpt
from vlprompt.engine.trainer import TrainerBase
from vlprompt.utils.run_lock import LOCK_NAME

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")


def argv(data_root, out, *extra, workers=2, epochs=3):
    return ["--root", str(data_root), "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", DATASET_CFG,
            "--config-file", COOP_CFG, "--output-dir", str(out), *extra, "MODEL.BACKBONE.NAME", "vlprompt-tiny",
            "DATALOADER.NUM_WORKERS", str(workers), "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", str(epochs),
            "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.CHECKPOINT_FREQ", "1"]


def subprocess_run(code, *args, **kwargs):
    """Run `code` in a fresh python (the CLI imported), with args as sys.argv[1:]."""
    # the same intra-op thread count as this process: float reductions, and so the weights, depend on it
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def final_state(out):
    return torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-3"), weights_only=False)


def assert_same_run(a, b):
    """Same final weights (bit for bit) and the same test metrics."""
    torch.testing.assert_close(final_state(b)["state_dict"]["ctx"], final_state(a)["state_dict"]["ctx"],
                               rtol=0, atol=0)
    ma, mb = (json.loads(open(os.path.join(o, "metrics.json")).read()) for o in (a, b))
    for key in ("accuracy", "correct", "macro_f1", "confusion_matrix"):
        assert ma[key] == mb[key]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """A 3-epoch CoOp run with 2 data-loader workers, never interrupted."""
    out = tmp_path_factory.mktemp("runs") / "full"
    assert cli.main(argv(data_root, out)) == 0
    return out


KILL_AFTER_EPOCH_2 = """
    import os, signal, sys
    from vlprompt import cli
    from vlprompt.engine.trainer import TrainerBase
    original = TrainerBase.after_epoch
    def after_epoch(self):
        original(self)  # writes the epoch's checkpoint
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    TrainerBase.after_epoch = after_epoch
    sys.exit(cli.main(sys.argv[1:]))
"""


def test_kill9_then_resume_with_two_workers_equals_uninterrupted_run(data_root, uninterrupted, tmp_path):
    cut = tmp_path / "cut"
    proc = subprocess_run(KILL_AFTER_EPOCH_2, *argv(data_root, cut))
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (cut / "prompt_learner/model.pth.tar-2").is_file() and not (cut / "prompt_learner/model.pth.tar-3").exists()
    # the log survived the kill, up to its last line
    log = (cut / "log.txt").read_text()
    assert "epoch [2/3] batch [5/5]" in log and log.rstrip().endswith("model.pth.tar-2")
    # the killed run's lock died with it: resuming in the same folder is not refused
    assert cli.main(argv(data_root, cut, "--resume", str(cut))) == 0
    assert_same_run(uninterrupted, cut)


def test_no_workers_gives_the_same_run_as_two_workers(data_root, uninterrupted, tmp_path):
    assert cli.main(argv(data_root, tmp_path / "w0", workers=0)) == 0
    assert_same_run(uninterrupted, tmp_path / "w0")


def test_sigterm_mid_epoch_writes_a_resume_point_and_the_log_then_resume_is_exact(
        data_root, uninterrupted, tmp_path, monkeypatch, capsys):
    cut = tmp_path / "cut"
    original = TrainerBase.write_scalar

    def signal_at_step_7(self, tag, value, step):  # epoch 2, batch 2 of 5: a real SIGTERM to this process
        original(self, tag, value, step)
        if tag == "train/lr" and step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainerBase, "write_scalar", signal_at_step_7)
    assert cli.main(argv(data_root, cut, "TRAIN.PRINT_FREQ", "1")) == 143
    monkeypatch.setattr(TrainerBase, "write_scalar", original)
    err = capsys.readouterr().err
    assert "Stopped by SIGTERM after epoch 2 batch 2 of 5" in err
    assert f"Resume with: python tools/train.py --resume {cut} --root" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run
    state = torch.load(cut / "prompt_learner" / ckpt.INTERRUPTED_NAME, weights_only=False)
    assert state["epoch"] == 1 and state["batches_done"] == 2 and "optimizer" in state
    assert (cut / "prompt_learner/checkpoint").read_text().strip() == ckpt.INTERRUPTED_NAME
    log = (cut / "log.txt").read_text()
    assert "SIGTERM received" in log and "epoch [2/3] batch [2/5]" in log
    assert log.rstrip().splitlines()[-1].startswith("error: Stopped by SIGTERM")
    assert "epoch [2/3] batch [3/5]" not in log

    assert cli.main(argv(data_root, cut, "--resume", str(cut), "TRAIN.PRINT_FREQ", "1")) == 0
    assert "then 2 batches of epoch 2" in capsys.readouterr().out
    assert not (cut / "prompt_learner" / ckpt.INTERRUPTED_NAME).exists()  # replaced by the next resume point
    assert_same_run(uninterrupted, cut)


SLOW_RUN = """
    import sys, time
    from vlprompt import cli
    from vlprompt.engine.trainer import TrainerBase
    original = TrainerBase.write_scalar
    def slow(self, *args):
        time.sleep(0.05)
        original(self, *args)
    TrainerBase.write_scalar = slow
    sys.exit(cli.main(sys.argv[1:]))
"""


def test_second_run_in_a_running_folder_is_refused_and_sigterm_from_outside(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess_run(SLOW_RUN, *argv(data_root, out, workers=0, epochs=50))
    try:
        deadline = time.time() + 120
        while "epoch [1/50]" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        assert cli.main(argv(data_root, out, workers=0, epochs=50)) == 1
        err = capsys.readouterr().err
        assert f"Another run is using the output folder {out} (pid {first.pid} on " in err
        # the second run wrote nothing: no log of its own, the lock still names the first
        assert [f for f in os.listdir(out) if f.startswith("log.txt")] == ["log.txt"]
        assert (out / LOCK_NAME).read_text().startswith(f"pid {first.pid} on ")
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143
    assert f"Resume with: python tools/train.py --resume {out} --root" in first_err
    log = (out / "log.txt").read_text()
    assert "** Config **" in log and "epoch [1/50]" in log and "error: Stopped by SIGTERM" in log
    assert (out / "prompt_learner/checkpoint").is_file()  # a resume point
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(out / "prompt_learner")))
    assert "optimizer" in state and "rng_state" in state


# ---- checkpoints --------------------------------------------------------------------------------------------


def saved_checkpoint(tmp_path, **tensors):
    tensors = tensors or {"ctx": torch.randn(16, 48)}
    return ckpt.save_checkpoint({"state_dict": tensors, "epoch": 1}, str(tmp_path / "ckpt"))


def test_checkpoint_with_a_flipped_byte_is_refused(tmp_path):
    path = saved_checkpoint(tmp_path, ctx=torch.arange(4096, dtype=torch.float32))
    assert ckpt.load_checkpoint(path)["state_dict"]["ctx"][100] == 100.0
    data = bytearray(open(path, "rb").read())
    offset = data.find(torch.tensor([1000.0]).numpy().tobytes())  # inside the tensor's bytes
    assert offset > 0
    data[offset] ^= 0x10
    open(path, "wb").write(bytes(data))
    assert torch.load(path, weights_only=False)["state_dict"]["ctx"][1000] != 1000.0  # torch loads it silently
    with pytest.raises(ckpt.CheckpointError, match=f"Checkpoint {path} is corrupted.*checksum"):
        ckpt.load_checkpoint(path)


def test_checkpoint_without_checksum_loads_as_before(tmp_path):
    path = str(tmp_path / "official.pth.tar")
    torch.save({"state_dict": {"ctx": torch.ones(2, 3)}, "epoch": 5}, path)
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 5 and torch.equal(state["state_dict"]["ctx"], torch.ones(2, 3))


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (os.urandom(5000), "cannot be read")])
def test_empty_and_random_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "model.pth.tar-1"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=f"Checkpoint {path} {message}"):
        ckpt.load_checkpoint(str(path))


BOMB_LOAD = """
    import resource, sys
    from vlprompt.engine import checkpoint as ckpt
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        ckpt.load_checkpoint(sys.argv[1])
        print("LOADED")
    except ckpt.CheckpointError as e:
        print("REFUSED", e)
    print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_compressed_bomb_checkpoint_is_refused_before_unpacking(tmp_path):
    import zipfile

    genuine = tmp_path / "genuine.pth"
    torch.save({"state_dict": {"ctx": torch.zeros(32 * 2 ** 20)}}, genuine)  # 128 MiB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    genuine.unlink()
    assert bomb.stat().st_size < 2 ** 20
    proc = subprocess_run(BOMB_LOAD, bomb)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"REFUSED Checkpoint {bomb} is refused" in out and "declares 134,217,728 bytes unpacked" in out
    growth_mb = int(out.split("GROWTH_KB")[1]) / 1024
    assert growth_mb < 32  # the 128 MiB tensor was never unpacked


def test_storage_declaring_more_than_the_file_is_refused_in_both_formats(tmp_path):
    from vlprompt.utils import safe_pickle

    for zip_format in (True, False):
        path = tmp_path / f"t{zip_format}.pth"
        torch.save({"a": torch.arange(64.0)}, path, _use_new_zipfile_serialization=zip_format)
        assert torch.equal(safe_pickle.torch_load(path, max_storage_bytes=os.path.getsize(path))["a"],
                           torch.arange(64.0))
        with pytest.raises(safe_pickle.StorageTooLargeError, match="declares 256 bytes, more than the 100"):
            safe_pickle.torch_load(path, max_storage_bytes=100)


def test_pointer_file_may_only_name_a_checkpoint_in_its_folder(tmp_path):
    folder = tmp_path / "prompt_learner"
    saved_checkpoint(tmp_path)  # writes tmp_path/ckpt
    folder.mkdir()
    (tmp_path / "secret.pth").write_bytes(b"x")
    for name in ("../secret.pth", str(tmp_path / "secret.pth"), ".."):
        (folder / "checkpoint").write_text(name + "\n")
        with pytest.raises(ckpt.CheckpointError, match=f"pointer file {folder / 'checkpoint'} names"):
            ckpt.latest_checkpoint(str(folder))
    (folder / "checkpoint").write_text("model.pth.tar-1\n")
    assert ckpt.latest_checkpoint(str(folder)) is None  # a name in the folder, not there (yet)


def test_temporary_files_of_an_interrupted_save_are_removed_at_the_next_save(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    leftovers = [folder / "model.pth.tar-2.tmp4242", folder / ".checkpoint.tmp4242"]
    for f in leftovers:
        f.write_bytes(b"half a checkpoint")
    (folder / "notes.tmp").write_text("not ours")
    saved_checkpoint(tmp_path)
    assert not any(f.exists() for f in leftovers)
    assert (folder / "notes.tmp").exists() and (folder / "model.pth.tar-1").exists()


# ---- errors as messages ---------------------------------------------------------------------------------------


def test_errors_are_messages_in_the_terminal_and_the_log(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM: {LR: [unclosed\n")
    assert cli.main(argv(data_root, out, "--config-file", str(bad))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "bad.yaml" in err

    def disk_full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ckpt, "_atomic_torch_save", disk_full)
    assert cli.main(argv(data_root, out, workers=0)) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"no space left on the device while writing in {out / 'prompt_learner'} (" in err
    assert " MB free); the files written before are kept" in err and f"train.py --resume {out} --root" in err
    log = (out / "log.txt").read_text()
    assert "epoch [1/3] batch [5/5]" in log and log.rstrip().endswith(err.strip())

    with pytest.raises(OSError, match="No space left"):  # --debug: the traceback, for a bug report
        cli.main(argv(data_root, tmp_path / "debug", "--debug", workers=0))
