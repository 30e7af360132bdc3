"""The restricted unpickler runs nothing a pickle asks for, yet loads real checkpoints."""
import collections
import copy
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from vlprompt.utils import safe_pickle
from vlprompt.utils.safe_pickle import PickledGlobal


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.eval": _Reduce(eval, touch),
        "builtins.exec": _Reduce(exec, touch),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call"])
def test_malicious_pickle_does_not_execute(tmp_path, attack, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"payload": _attacks(marker)[attack]}, protocol=protocol)
    out = safe_pickle.loads(data)
    assert not marker.exists()
    stub = out["payload"]
    assert isinstance(stub, PickledGlobal)
    assert stub.pickled_name == attack.split(".")[1]  # os.system pickles as posix.system
    assert stub.pickled_args  # the arguments were recorded, not used


def test_python2_names_and_dotted_names_are_not_loopholes(tmp_path):
    marker = tmp_path / "pwned"
    # protocol-0 GLOBAL opcodes written by hand: __builtin__ maps to builtins, dotted names are not allowed
    py2_eval = f"c__builtin__\neval\n(S\"open('{marker}', 'w').close()\"\ntR.".encode()
    dotted = f"ctorch._utils\nos.system\n(S'touch {marker}'\ntR.".encode()
    for data in (py2_eval, dotted):
        assert isinstance(safe_pickle.loads(data), PickledGlobal)
    assert not marker.exists()


def test_malicious_object_inside_torch_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pth"
    for new_format in (True, False):
        torch.save({"w": torch.ones(2), "evil": _attacks(marker)["os.system"]}, path,
                   _use_new_zipfile_serialization=new_format)
        out = safe_pickle.torch_load(path)
        assert not marker.exists()
        assert isinstance(out["evil"], PickledGlobal)
        assert torch.equal(out["w"], torch.ones(2))


def _train_a_little():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("new_format", [True, False])
def test_checkpoint_with_pickled_optimizer_and_scheduler_objects(tmp_path, new_format):
    torch.manual_seed(0)
    model, optimizer, scheduler = _train_a_little()
    # Dassl's ConstantWarmupScheduler pickles its successor scheduler (and so the SGD object) whole
    ckpt = {
        "state_dict": model.state_dict(),
        "epoch": 3,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"successor": scheduler, "last_epoch": 3},
        "extras": {"array": np.arange(4, dtype=np.float32), "od": collections.OrderedDict(a=1), "set": {1, 2},
                   "dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3])},
    }
    path = tmp_path / "model.pth.tar-3"
    torch.save(ckpt, path, _use_new_zipfile_serialization=new_format)

    out = safe_pickle.torch_load(path)
    for key, value in model.state_dict().items():
        assert torch.equal(out["state_dict"][key], value)
    assert out["epoch"] == 3
    momentum = out["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state_dict()["state"][0]["momentum_buffer"])

    sched = out["scheduler"]["successor"]
    assert isinstance(sched, PickledGlobal) and sched.pickled_name == "CosineAnnealingLR"
    assert sched.T_max == 10 and sched.last_epoch == 1
    sgd = sched.optimizer
    assert isinstance(sgd, PickledGlobal) and sgd.pickled_module == "torch.optim.sgd"
    params = sgd.param_groups[0]["params"]
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))

    # a loaded checkpoint can be copied and saved again; its stubs stay stubs
    again = tmp_path / "again.pth"
    torch.save(copy.deepcopy(out), again)
    sched2 = safe_pickle.torch_load(again)["scheduler"]["successor"]
    assert type(sched2) is type(sched) and sched2.T_max == 10
    assert torch.equal(sched2.optimizer.param_groups[0]["params"][0], params[0])

    extras = out["extras"]
    assert np.array_equal(extras["array"], np.arange(4, dtype=np.float32))
    assert extras["od"] == collections.OrderedDict(a=1) and extras["set"] == {1, 2}
    assert extras["dtype"] is torch.float16 and extras["size"] == torch.Size([2, 3])


def test_dassl_classes_become_stubs_and_allowed_mapping_loads_real_objects(tmp_path):
    names = ["dassl", "dassl.optim", "dassl.optim.lr_scheduler"]
    fake = {name: types.ModuleType(name) for name in names}

    class ConstantWarmupScheduler:
        def __init__(self, lr):
            self.lr = lr

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    fake["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules.update(fake)
    try:
        data = pickle.dumps({"sched": ConstantWarmupScheduler(1e-5)}, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for name in names:
            del sys.modules[name]

    stub = safe_pickle.loads(data)["sched"]
    assert isinstance(stub, PickledGlobal) and stub.lr == 1e-5

    class Mine:
        pass

    real = safe_pickle.loads(data, allowed={("dassl.optim.lr_scheduler", "ConstantWarmupScheduler"): Mine})
    assert type(real["sched"]) is Mine and real["sched"].lr == 1e-5


def test_payloads_are_real(tmp_path):
    """Control: plain pickle runs the same payloads, so the tests above do test something."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_attacks(marker)["builtins.eval"]))
    assert marker.exists()
