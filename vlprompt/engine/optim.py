"""Optimizers and learning-rate schedules with Dassl's semantics (names and values from cfg.OPTIM).

The scheduler is stepped once per epoch, after the epoch: the lr of epoch e is the lr after e steps.
"""
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR

SUPPORTED_OPTIMIZERS = ("adam", "amsgrad", "sgd", "rmsprop", "adamw")
SUPPORTED_SCHEDULERS = ("single_step", "multi_step", "cosine")
SUPPORTED_WARMUPS = ("constant", "linear")


def _trainable(params):
    return [p for p in params if p.requires_grad]


def _staged_param_groups(model, optim_cfg):
    """Dassl's STAGED_LR: top-level children named in NEW_LAYERS train at LR, the rest at LR * BASE_LR_MULT."""
    if not isinstance(model, nn.Module):
        raise TypeError("OPTIM.STAGED_LR needs an nn.Module, not an iterable of parameters")
    model = model.module if isinstance(model, nn.DataParallel) else model
    new_layers = optim_cfg.NEW_LAYERS
    new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
    base_params, new_params = [], []
    for name, child in model.named_children():
        (new_params if name in new_layers else base_params).extend(_trainable(child.parameters()))
    return [{"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT}, {"params": new_params}]


def build_optimizer(model_or_params, optim_cfg, param_groups=None):
    """Build the optimizer named by ``optim_cfg.NAME``.

    ``model_or_params``: an nn.Module (its parameters that require grad), or an iterable of parameters or
    param-group dicts. ``param_groups``, when given, is used instead (as in Dassl; STAGED_LR is then ignored).
    """
    name = optim_cfg.NAME
    if name not in SUPPORTED_OPTIMIZERS:
        raise ValueError(f"Unknown optimizer OPTIM.NAME={name!r}; supported: {', '.join(SUPPORTED_OPTIMIZERS)}")

    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(model_or_params, optim_cfg)
        elif isinstance(model_or_params, nn.Module):
            param_groups = _trainable(model_or_params.parameters())
        else:
            param_groups = list(model_or_params)

    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name in ("adam", "amsgrad"):
        # OPTIM.EPS is HiCroPL's key (it sets 1e-3); the default 1e-8 is torch's own
        return torch.optim.Adam(
            param_groups, lr=lr, weight_decay=wd, betas=betas, eps=optim_cfg.EPS, amsgrad=name == "amsgrad"
        )
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd, betas=betas, eps=optim_cfg.EPS)
    if name == "sgd":
        return torch.optim.SGD(
            param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
            dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV,
        )
    return torch.optim.RMSprop(
        param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd, alpha=optim_cfg.RMSPROP_ALPHA
    )


class WarmupScheduler(LRScheduler):
    """Warmup lrs for ``warmup_epoch`` epochs, then ``successor`` takes over (Dassl's warmup wrappers).

    As in Dassl, the first epoch after warmup runs at the successor's initial lr (the base LR), and from
    then on only the successor is stepped; this scheduler's own ``last_epoch`` stays at ``warmup_epoch``.
    """

    def __init__(self, optimizer, successor, warmup_epoch):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer)

    def warmup_lrs(self):
        raise NotImplementedError

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return list(self.successor.get_last_lr())
        return self.warmup_lrs()

    def step(self, epoch=None):
        if self.last_epoch < self.warmup_epoch:
            super().step(epoch)
        else:
            self.successor.step(epoch)
            self._last_lr = list(self.successor.get_last_lr())

    def state_dict(self):
        # The successor is stored by its state, not as an object (that would pickle the optimizer too)
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        successor = state.pop("successor")
        if isinstance(successor, LRScheduler):  # Dassl's own checkpoints pickle the successor object
            successor = {k: v for k, v in successor.__dict__.items() if k != "optimizer"}
        self.successor.load_state_dict(successor)
        self.__dict__.update(state)
        # The successors compute each lr from the current one, so the optimizer must hold the saved lrs
        # even if its own state was not loaded
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


class ConstantWarmupScheduler(WarmupScheduler):
    """Warmup at a constant lr (OPTIM.WARMUP_CONS_LR)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def warmup_lrs(self):
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(WarmupScheduler):
    """Warmup at OPTIM.WARMUP_MIN_LR for epoch 0, then base_lr * epoch / warmup_epoch (Dassl's ramp)."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def warmup_lrs(self):
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer, optim_cfg):
    """Build the per-epoch lr schedule named by ``optim_cfg.LR_SCHEDULER``, wrapped in a warmup if
    ``WARMUP_EPOCH > 0``."""
    kind = optim_cfg.LR_SCHEDULER
    stepsize, gamma, max_epoch = optim_cfg.STEPSIZE, optim_cfg.GAMMA, optim_cfg.MAX_EPOCH
    if kind not in SUPPORTED_SCHEDULERS:
        raise ValueError(
            f"Unknown OPTIM.LR_SCHEDULER={kind!r}; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
        )

    if kind == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]  # Dassl takes the last entry
        if not isinstance(stepsize, int):
            raise TypeError(f"OPTIM.STEPSIZE for single_step must be an int, got {stepsize!r}")
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif kind == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(f"OPTIM.STEPSIZE for multi_step must be a list, got {stepsize!r}")
        scheduler = MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    else:
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            # Dassl only moves the successor's epoch counter: its lr is not recomputed, so after warmup it
            # continues from the base LR with its epoch-to-epoch ratios at epochs WARMUP_EPOCH+1, ...
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        warmup = optim_cfg.WARMUP_TYPE
        if warmup == "constant":
            scheduler = ConstantWarmupScheduler(
                optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR
            )
        elif warmup == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ValueError(
                f"Unknown OPTIM.WARMUP_TYPE={warmup!r}; supported: {', '.join(SUPPORTED_WARMUPS)}"
            )
    return scheduler
