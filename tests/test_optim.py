"""Optimizers and lr schedules against Dassl's semantics, checked with closed forms written here."""
import io
import math
import warnings

import pytest
import torch
import torch.nn as nn

from vlprompt.config import get_cfg_default
from vlprompt.engine.optim import build_lr_scheduler, build_optimizer

LR = 0.002
MAX_EPOCH = 12
GAMMA = 0.5


def optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    cfg.LR, cfg.MAX_EPOCH, cfg.GAMMA = LR, MAX_EPOCH, GAMMA
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def single_step_size(cfg):
    step = cfg.STEPSIZE[-1] if isinstance(cfg.STEPSIZE, (list, tuple)) else cfg.STEPSIZE
    return MAX_EPOCH if step <= 0 else step


def main_schedule_lr(cfg, t):
    """The scheduler without warmup, t epochs after it started (closed forms)."""
    if cfg.LR_SCHEDULER == "cosine":
        return LR * (1 + math.cos(math.pi * t / MAX_EPOCH)) / 2
    if cfg.LR_SCHEDULER == "single_step":
        return LR * GAMMA ** (t // single_step_size(cfg))
    return LR * GAMMA ** sum(1 for m in cfg.STEPSIZE if m <= t)


def expected_lr(cfg, epoch):
    """Dassl's lr during ``epoch`` (0-based; the scheduler steps after each epoch)."""
    warm = cfg.WARMUP_EPOCH
    if warm <= 0:
        return main_schedule_lr(cfg, epoch)
    if epoch < warm:
        if cfg.WARMUP_TYPE == "constant":
            return cfg.WARMUP_CONS_LR
        return cfg.WARMUP_MIN_LR if epoch == 0 else LR * epoch / warm
    if cfg.WARMUP_RECOUNT:
        return main_schedule_lr(cfg, epoch - warm)
    # No recount: the successor's counter was moved to `warm` but its lr stayed at LR, and it then
    # applies its epoch-to-epoch changes for epochs warm+1, warm+2, ... on top of LR.
    if epoch == warm:
        return LR
    if cfg.LR_SCHEDULER == "cosine":
        return LR * (1 + math.cos(math.pi * epoch / MAX_EPOCH)) / (1 + math.cos(math.pi * warm / MAX_EPOCH))
    if cfg.LR_SCHEDULER == "single_step":
        step = single_step_size(cfg)
        return LR * GAMMA ** (epoch // step - warm // step)
    return LR * GAMMA ** sum(1 for m in cfg.STEPSIZE if warm < m <= epoch)


def make(cfg, name="sgd"):
    model = nn.Linear(3, 2)
    cfg.NAME = name
    optimizer = build_optimizer(model, cfg)
    return model, optimizer, build_lr_scheduler(optimizer, cfg)


def run_epochs(optimizer, scheduler, n):
    """The lr in use during each of n epochs, stepping as the engine does."""
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr()[0] == optimizer.param_groups[0]["lr"]
    return lrs


SCHEDULES = [
    dict(LR_SCHEDULER="cosine"),
    dict(LR_SCHEDULER="single_step", STEPSIZE=(4,)),
    dict(LR_SCHEDULER="single_step", STEPSIZE=5),
    dict(LR_SCHEDULER="single_step", STEPSIZE=(2, 5)),  # Dassl uses the last entry
    dict(LR_SCHEDULER="single_step", STEPSIZE=(-1,)),  # -1: step at MAX_EPOCH
    dict(LR_SCHEDULER="multi_step", STEPSIZE=(3, 6, 9)),
]
WARMUPS = [dict(WARMUP_EPOCH=-1)] + [
    dict(WARMUP_EPOCH=w, WARMUP_TYPE=t, WARMUP_RECOUNT=r, WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=2e-5)
    for w in (1, 3) for t in ("constant", "linear") for r in (True, False)
]


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: "-".join(f"{v}" for v in w.values()))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_lr_schedule_matches_dassl_closed_form(schedule, warmup):
    cfg = optim_cfg(**schedule, **warmup)
    _, optimizer, scheduler = make(cfg)
    lrs = run_epochs(optimizer, scheduler, MAX_EPOCH)
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(expected_lr(cfg, epoch), rel=1e-9, abs=0), f"epoch {epoch}"


def test_coop_schedule_spot_values():
    # CoOp vit_b16_ep50: sgd 0.002, cosine over 50 epochs, 1 constant warmup epoch at 1e-5
    cfg = optim_cfg(MAX_EPOCH=50, LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    _, optimizer, scheduler = make(cfg)
    lrs = run_epochs(optimizer, scheduler, 50)
    assert lrs[0] == 1e-5 and lrs[1] == LR
    assert lrs[26] == pytest.approx(LR * (1 + math.cos(math.pi * 25 / 50)) / 2, rel=1e-9)  # = LR / 2
    assert lrs[49] == pytest.approx(LR * (1 + math.cos(math.pi * 48 / 50)) / 2, rel=1e-9)


@pytest.mark.parametrize("schedule", [SCHEDULES[0], SCHEDULES[5]], ids=["cosine", "multi_step"])
@pytest.mark.parametrize("recount", [True, False])
@pytest.mark.parametrize("load_optimizer", [True, False])
def test_state_dict_round_trip_mid_schedule(schedule, recount, load_optimizer):
    cfg = optim_cfg(**schedule, WARMUP_EPOCH=2, WARMUP_TYPE="linear", WARMUP_RECOUNT=recount)
    _, optimizer, scheduler = make(cfg)
    reference = run_epochs(optimizer, scheduler, MAX_EPOCH)

    _, optimizer, scheduler = make(cfg)
    before = run_epochs(optimizer, scheduler, 5)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    assert isinstance(scheduler.state_dict()["successor"], dict)
    assert not any(isinstance(v, torch.optim.Optimizer) for v in scheduler.state_dict().values())

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain data only
    _, optimizer, scheduler = make(cfg)  # a fresh run, as on resume
    if load_optimizer:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    after = run_epochs(optimizer, scheduler, MAX_EPOCH - 5)
    assert before + after == reference


def test_loads_dassl_state_with_pickled_successor():
    # Dassl's warmup state_dict holds the successor scheduler object itself
    cfg = optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    _, optimizer, scheduler = make(cfg)
    reference = run_epochs(optimizer, scheduler, MAX_EPOCH)
    _, optimizer, scheduler = make(cfg)
    before = run_epochs(optimizer, scheduler, 4)
    dassl_style = {k: v for k, v in scheduler.__dict__.items() if k != "optimizer"}
    _, optimizer, scheduler = make(cfg)
    scheduler.load_state_dict(dassl_style)
    assert before + run_epochs(optimizer, scheduler, MAX_EPOCH - 4) == reference


def test_adam_family_gets_eps_and_betas():
    cfg = optim_cfg(EPS=1e-3, ADAM_BETA1=0.8, ADAM_BETA2=0.99, WEIGHT_DECAY=0.01)
    for name, cls in [("adam", torch.optim.Adam), ("amsgrad", torch.optim.Adam), ("adamw", torch.optim.AdamW)]:
        _, optimizer, _ = make(cfg, name)
        assert type(optimizer) is cls
        d = optimizer.defaults
        assert d["eps"] == 1e-3 and d["betas"] == (0.8, 0.99) and d["lr"] == LR and d["weight_decay"] == 0.01
        assert d["amsgrad"] == (name == "amsgrad")


def test_sgd_and_rmsprop_settings():
    cfg = optim_cfg(MOMENTUM=0.8, SGD_DAMPNING=0, SGD_NESTEROV=True, RMSPROP_ALPHA=0.9, WEIGHT_DECAY=5e-4)
    _, sgd, _ = make(cfg, "sgd")
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 5e-4
    _, rms, _ = make(cfg, "rmsprop")
    assert type(rms) is torch.optim.RMSprop and rms.defaults["alpha"] == 0.9 and rms.defaults["momentum"] == 0.8


def test_module_gives_only_trainable_params_and_groups_are_accepted():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    cfg = optim_cfg(NAME="sgd")
    optimizer = build_optimizer(model, cfg)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model[1].parameters()}
    groups = [{"params": model[1].weight.unsqueeze(0).detach().requires_grad_()}]
    assert len(build_optimizer(groups, cfg).param_groups) == 1
    assert len(build_optimizer(model[1].parameters(), cfg).param_groups[0]["params"]) == 2


def test_staged_lr():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 2))
    cfg = optim_cfg(NAME="sgd", STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    base, new = build_optimizer(model, cfg).param_groups
    assert base["lr"] == pytest.approx(LR * 0.1) and new["lr"] == LR
    assert {id(p) for p in new["params"]} == {id(p) for p in model.head.parameters()}


def test_unknown_optimizer_scheduler_and_warmup_messages():
    with pytest.raises(ValueError, match=r"'adamx'.*adam, amsgrad, sgd, rmsprop, adamw"):
        make(optim_cfg(), "adamx")
    optimizer = build_optimizer(nn.Linear(2, 2), optim_cfg(NAME="sgd"))
    with pytest.raises(ValueError, match=r"'poly'.*single_step, multi_step, cosine"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(ValueError, match=r"WARMUP_TYPE='exp'"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="exp"))
    with pytest.raises(TypeError, match="multi_step must be a list"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3))


def test_no_step_order_warning_when_engine_order_is_used():
    cfg = optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="constant")
    _, optimizer, scheduler = make(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_epochs(optimizer, scheduler, 3)
