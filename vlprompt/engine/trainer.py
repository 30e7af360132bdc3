"""The training loop with Dassl's semantics (TrainerX): epochs, per-epoch lr steps, validation, checkpoints,
evaluation, log lines the official parse_test_res.py reads, tqdm bars and TensorBoard scalars."""
import contextlib
import csv
import datetime
import json
import os
import sys
import time
from collections import Counter, OrderedDict, defaultdict

import torch
from torch import nn
from tqdm import tqdm

from vlprompt.data import DataManager
from vlprompt.utils import stop as stop_request
from vlprompt.utils.logger import write_json_atomic
from vlprompt.utils.registry import Registry

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .evaluator import ClassificationEvaluator

TRAINER_REGISTRY = Registry("trainer")


def resolve_device(name: str, use_cuda: bool = True) -> torch.device:
    """'auto' -> cuda when available (and USE_CUDA), else cpu; 'cpu', 'cuda', 'cuda:N' as given."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if use_cuda and torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE {name} was asked for but CUDA is not available; use DEVICE cpu or auto")
    if name == "cuda" and dist_utils.is_distributed():
        return torch.device("cuda", dist_utils.local_rank())  # torchrun: one GPU per process
    return torch.device(name)


class Precision:
    """fp32 | fp16 (frozen CLIP in half precision, the official default) | amp (fp16 autocast + grad scaler)
    | bf16 (autocast). On a CPU fp16 and amp fall back to fp32 (half_on_cpu=False): half-precision matmuls there
    are slow or missing on most CPUs."""

    CHOICES = ("fp32", "fp16", "amp", "bf16")

    def __init__(self, prec: str, device: torch.device, half_on_cpu: bool = False):
        if prec not in self.CHOICES:
            raise ValueError(f"Unknown precision '{prec}'; choose one of {', '.join(self.CHOICES)}")
        if device.type == "cpu" and prec in ("fp16", "amp") and not half_on_cpu:
            print(f"Precision {prec} is not used on a CPU device: running in fp32")
            prec = "fp32"
        self.name, self.device = prec, device
        self.scaler = torch.amp.GradScaler(device.type) if prec == "amp" else None

    @property
    def weight_dtype(self):
        """dtype of the frozen CLIP weights."""
        return torch.float16 if self.name == "fp16" else torch.float32

    def autocast(self):
        if self.name == "amp":
            return torch.autocast(self.device.type, dtype=torch.float16)
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward_and_step(self, loss, optimizer):
        optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()


class _Meter:
    def __init__(self):
        self.val = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


class _TrainStep(nn.Module):
    """What DistributedDataParallel wraps: only the trainable modules (their gradients are averaged over the
    processes; the frozen CLIP is not part of it and never synchronised). Its forward runs the trainer's
    model_loss(), which reaches the same parameters through the full model."""

    def __init__(self, trainer, modules):
        super().__init__()
        self.trainable = nn.ModuleDict(modules)
        self.__dict__["_trainer"] = trainer  # not a submodule

    def forward(self, *args):
        return self._trainer.model_loss(*args)


class TrainerBase:
    """Subclasses implement build_model() (calling register_model) and forward_backward(batch); a subclass
    whose forward_backward computes its loss through train_forward() (as CLIPPromptTrainer does with
    model_loss) trains with DistributedDataParallel under torchrun."""

    def __init__(self, cfg, dm=None):
        """dm: a DataManager-like object to use instead of building the dataset (vlprompt.predict passes one
        that only names the classes)."""
        self.cfg = cfg
        self.device = resolve_device(cfg.DEVICE, cfg.USE_CUDA)
        self.output_dir = cfg.OUTPUT_DIR
        self.start_epoch = self.epoch = 0
        self.resume_batch = 0  # batches of start_epoch a resume point written mid-epoch (SIGTERM) had done
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self._models, self._optims, self._scheds = OrderedDict(), OrderedDict(), OrderedDict()
        self._writer = None
        self.best_result = -float("inf")
        self.epochs_without_improvement = 0  # validation epochs since the best (TRAIN.EARLY_STOPPING)
        self.stop_early = False
        self.dm = dm if dm is not None else DataManager(cfg)
        self.train_loader_x = self.dm.train_loader_x
        self.val_loader = self.dm.val_loader
        self.test_loader = self.dm.test_loader
        self.num_classes = self.dm.num_classes
        self.lab2cname = self.dm.lab2cname
        self.build_model()
        self._ddp = self._wrap_distributed()
        self.evaluator = ClassificationEvaluator(self.lab2cname, per_class=cfg.TEST.PER_CLASS_RESULT,
                                                 base_new=cfg.DATASET.SUBSAMPLE_CLASSES == "all")

    # ---- models -------------------------------------------------------------------------------------
    def build_model(self):
        raise NotImplementedError

    def _wrap_distributed(self):
        """DistributedDataParallel over the registered trainable modules, when running under torchrun."""
        if not dist_utils.is_distributed():
            return None
        modules = {name: m for name, m in self._models.items()
                   if self._optims[name] is not None and any(p.requires_grad for p in m.parameters())}
        if not modules:
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        print(f"DistributedDataParallel over {', '.join(modules)} on {dist_utils.get_world_size()} processes "
              f"(per-process batch {self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE // dist_utils.get_world_size()})")
        return nn.parallel.DistributedDataParallel(
            _TrainStep(self, modules), device_ids=device_ids, broadcast_buffers=False,
            find_unused_parameters=self.cfg.TRAIN.DDP_FIND_UNUSED_PARAMETERS)

    def train_forward(self, *args):
        """model_loss(*args), through DistributedDataParallel when several processes train."""
        if self._ddp is not None:
            return self._ddp(*args)
        return self.model_loss(*args)

    def register_model(self, name, module, optim=None, sched=None):
        self._models[name], self._optims[name], self._scheds[name] = module, optim, sched

    def get_model_names(self):
        return list(self._models)

    def set_model_mode(self, mode="train"):
        for module in self._models.values():
            module.train(mode == "train")

    def trainable_state_dict(self, name) -> OrderedDict:
        """Only what was trained: the checkpoint is MBs, not the frozen CLIP."""
        module = self._models[name]
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        return OrderedDict((k, v.detach().cpu()) for k, v in module.state_dict().items() if k in trainable)

    def checkpoint_extras(self):
        """Extra training state a resume point keeps (e.g. PromptSRC's running weight average); None: nothing."""
        return None

    def load_checkpoint_extras(self, extras):
        """Restore what checkpoint_extras() returned, when resuming."""

    def map_checkpoint_key(self, name: str, key: str):
        """Hook for trainers to translate official checkpoint keys; None drops the key."""
        return key

    def load_trainable_state(self, name, state_dict, source=""):
        module = self._models[name]
        mapped, origin = {}, {}
        for key, value in state_dict.items():
            new = self.map_checkpoint_key(name, key)
            if new is not None:
                mapped[new], origin[new] = value, key
        own = module.state_dict()
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        missing = [k for k in trainable if k not in mapped]
        unexpected = [origin[k] for k in mapped if k not in own]
        if missing or unexpected:
            raise KeyError(f"Checkpoint {source} does not fit '{name}': missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        for k, v in mapped.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"Checkpoint {source}: '{origin[k]}' has shape {tuple(v.shape)}, the model expects "
                                 f"{tuple(own[k].shape)} for '{name}.{k}' (different N_CTX, classes or backbone?)")
        module.load_state_dict(mapped, strict=False)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save_model(self, epoch, directory, val_result=None, model_name="", finished=False, batches_done=0):
        """Written by the first process only (all hold the same weights); the others wait for the files.
        `finished`: training is over (last epoch or early stop). `batches_done`: a resume point in the middle
        of `epoch`, after that many of its batches."""
        if dist_utils.is_main_process():
            self._save_model(epoch, directory, val_result, model_name, finished, batches_done)
        dist_utils.barrier()

    def _save_model(self, epoch, directory, val_result=None, model_name="", finished=False, batches_done=0):
        # Only a checkpoint training may continue from holds the optimizer, scheduler and RNG state; the one
        # written when training is over and model-best (never a resume point) hold the weights alone, which
        # makes them 2x (SGD) to 3x (Adam) smaller. Dassl keeps the optimizer state in every file.
        resume_point = not finished and model_name != ckpt.BEST_NAME
        for name in self.get_model_names():
            state = {
                "state_dict": self.trainable_state_dict(name),
                "epoch": epoch if batches_done else epoch + 1,  # the epochs completed
                "val_result": val_result,
                "best_result": self.best_result,
                "epochs_without_improvement": self.epochs_without_improvement,
            }
            if resume_point:
                optim, sched = self._optims[name], self._scheds[name]
                state.update(optimizer=optim.state_dict() if optim is not None else None,
                             scheduler=sched.state_dict() if sched is not None else None,
                             rng_state=ckpt.rng_state())
                extras = self.checkpoint_extras()
                if extras is not None:
                    state["extras"] = extras
            elif finished:
                state.update(training_finished=True, max_epoch=self.max_epoch)
            if batches_done:
                state["batches_done"] = batches_done
            ckpt.save_checkpoint(state, os.path.join(directory, name), model_name=model_name)

    def resume_model_if_exist(self, directory) -> int:
        names = self.get_model_names()
        paths = [ckpt.latest_checkpoint(os.path.join(directory, n)) for n in names]
        if not all(paths):
            print("No checkpoint found, train from scratch")
            return 0
        print(f'Found checkpoint at {directory} (will resume training)')
        states = [ckpt.load_checkpoint(path) for path in paths]
        for path, state in zip(paths, states):
            ckpt.refuse_training_past_the_end(path, state, self.max_epoch)
        start_epoch = 0
        for name, path, state in zip(names, paths, states):
            self.load_trainable_state(name, state["state_dict"], path)
            if self._optims[name] is not None and state.get("optimizer"):
                self._optims[name].load_state_dict(state["optimizer"])
            if self._scheds[name] is not None and state.get("scheduler"):
                self._scheds[name].load_state_dict(state["scheduler"])
            if state.get("rng_state"):
                ckpt.set_rng_state(state["rng_state"])
            if state.get("extras") is not None:
                self.load_checkpoint_extras(state["extras"])
            if state.get("best_result") is not None:
                self.best_result = state["best_result"]
            self.epochs_without_improvement = state.get("epochs_without_improvement", 0)
            start_epoch = state["epoch"]
            self.resume_batch = state.get("batches_done", 0)
            print(f'Loaded model weights from "{path}"; previous epoch: {start_epoch}'
                  + (f", then {self.resume_batch} batches of epoch {start_epoch + 1}" if self.resume_batch else ""))
            if state.get("training_finished"):  # last epoch or early stop
                print("Training had finished: nothing left to train")
                start_epoch = self.max_epoch
        return start_epoch

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = ckpt.BEST_NAME if epoch is None or epoch < 0 else ckpt.checkpoint_name(epoch)
        for name in self.get_model_names():
            path = os.path.join(directory, name, model_file)
            state = ckpt.load_checkpoint(path)
            self.load_trainable_state(name, state["state_dict"], path)
            print(f'Loading weights to {name} from "{path}" (epoch = {state.get("epoch")}, '
                  f'val_result = {state.get("val_result")})')

    # ---- training loop -------------------------------------------------------------------------------
    def get_current_lr(self, name=None):
        name = name or self.get_model_names()[0]
        return self._optims[name].param_groups[0]["lr"]

    def update_lr(self):
        for sched in self._scheds.values():
            if sched is not None:
                sched.step()

    def write_scalar(self, tag, value, step):
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def train(self):
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.run_epoch()
            self.after_epoch()
            if self.stop_early:
                break
        self.after_train()

    def before_train(self):
        if self.cfg.RESUME:
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME)
        if dist_utils.is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=os.path.join(self.output_dir, "tensorboard"))
            if self.output_dir:  # the model's classes in label order, for vlprompt.load_model / vlprompt-predict
                write_json_atomic(os.path.join(self.output_dir, "classnames.json"), list(self.dm.dataset.classnames))
        self.time_start = time.time()

    def run_epoch(self):
        self.set_model_mode("train")
        meters = defaultdict(_Meter)
        batch_time, data_time = _Meter(), _Meter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        if hasattr(self.train_loader_x, "set_epoch"):
            self.train_loader_x.set_epoch(self.epoch)  # a new shuffle per epoch with a distributed sampler
        skip = self.resume_batch if self.epoch == self.start_epoch else 0
        if skip:  # resumed from a point in the middle of this epoch: go on with the batches it had not seen
            self.train_loader_x.skip_batches(skip)
        bar = tqdm(self.train_loader_x, desc=f"epoch {self.epoch + 1}/{self.max_epoch}", leave=False,
                   disable=None if dist_utils.is_main_process() else True, dynamic_ncols=True)
        end = time.time()
        for self.batch_idx, batch in enumerate(bar, start=skip):
            data_time.update(time.time() - end)
            last_batch = self.batch_idx + 1 == self.num_batches
            if batch is None:  # every image of the batch was broken and skipped (DATALOADER.SKIP_BROKEN_IMAGES)
                if last_batch:
                    self.update_lr()
                continue
            summary = self.forward_backward(batch)
            if dist_utils.is_distributed():  # log the mean over the processes: the global batch's loss
                values = torch.tensor([float(v) for v in summary.values()], dtype=torch.float64,
                                      device=self.device)
                torch.distributed.all_reduce(values)
                summary = dict(zip(summary, (values / dist_utils.get_world_size()).tolist()))
            if last_batch:
                self.update_lr()  # Dassl steps the schedule after the last batch of each epoch
            batch_time.update(time.time() - end)
            for k, v in summary.items():
                meters[k].update(v)
            bar.set_postfix({k: f"{m.avg:.4f}" for k, m in meters.items()})
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                remaining = (self.num_batches - self.batch_idx - 1) + (
                    self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * remaining)))
                losses = " ".join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in meters.items())
                tqdm.write(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}",
                    file=sys.stdout,
                )
            step = self.epoch * self.num_batches + self.batch_idx
            for k, m in meters.items():
                self.write_scalar("train/" + k, m.val, step)
            self.write_scalar("train/lr", self.get_current_lr(), step)
            if not last_batch and self.stop_requested():
                bar.close()
                self.stop_with_resume_point()
            end = time.time()
        bar.close()
        self._report_skipped()

    def stop_requested(self) -> bool:
        """A SIGTERM arrived (vlprompt.utils.stop); under torchrun, on any of the processes."""
        asked = stop_request.requested() is not None
        if dist_utils.is_distributed():
            flag = torch.tensor([float(asked)], device=self.device)
            torch.distributed.all_reduce(flag)
            asked = flag.item() > 0
        return asked

    def stop_with_resume_point(self):
        """Write a resume point after the current batch (not the last of the epoch: after_epoch handles that)
        and raise TrainingInterrupted (the CLI says how to resume)."""
        done = self.batch_idx + 1
        self.save_model(self.epoch, self.output_dir, batches_done=done, model_name=ckpt.INTERRUPTED_NAME)
        raise stop_request.TrainingInterrupted(
            f"Stopped by {stop_request.requested() or 'a stop request'} after epoch {self.epoch + 1} batch {done} "
            f"of {self.num_batches}; resume point written in {self.output_dir}")

    def _report_skipped(self):
        skipped = self.dm.num_skipped_images
        if skipped:
            print(f"Skipped {skipped} broken images so far (DATALOADER.SKIP_BROKEN_IMAGES True)")

    def after_epoch(self):
        last_epoch = self.epoch + 1 == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")
            if result > self.best_result:
                self.best_result = result
                self.epochs_without_improvement = 0
                self.save_model(self.epoch, self.output_dir, val_result=result, model_name=ckpt.BEST_NAME)
            else:
                self.epochs_without_improvement += 1
            patience = self.cfg.TRAIN.PATIENT_COUNT
            if self.cfg.TRAIN.EARLY_STOPPING and patience > 0 and self.epochs_without_improvement >= patience:
                print(f"Early stopping after epoch {self.epoch + 1}: no better validation accuracy for "
                      f"{patience} epochs (best {self.best_result:.2f})")
                self.stop_early = True
        if meet_checkpoint_freq or last_epoch or self.stop_early:
            self.save_model(self.epoch, self.output_dir, finished=last_epoch or self.stop_early)
        if not (last_epoch or self.stop_early) and self.stop_requested():
            if not meet_checkpoint_freq:
                self.save_model(self.epoch, self.output_dir)
            raise stop_request.TrainingInterrupted(
                f"Stopped by {stop_request.requested() or 'a stop request'} after epoch {self.epoch + 1}; "
                f"resume point written in {self.output_dir}")
        self.evaluate_every()

    # ---- learning curves (TEST.EVAL_EVERY) ------------------------------------------------------------
    def evaluate_every(self):
        """Every TEST.EVAL_EVERY epochs: the test split's metrics, appended to metrics_history.jsonl and logged
        to TensorBoard (curve/*). A model trained on the base classes is evaluated over all classes of the test
        set, built with all class names and the current learned weights (vlprompt.predict.build_for_classes):
        the base samples among the base classes give the base accuracy, the new ones the new accuracy and HM.
        Training does not depend on it: every random state is restored, and nothing else is written."""
        every = self.cfg.TEST.EVAL_EVERY
        if every <= 0 or (self.epoch + 1) % every:
            return
        saved_rng = ckpt.rng_state()
        try:
            record = self._evaluate_curve_point()
        finally:
            ckpt.set_rng_state(saved_rng)
            self.set_model_mode("train")
        if not dist_utils.is_main_process():
            return
        for key, value in record.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    self.write_scalar(f"curve/{key}/{k}", v, self.epoch + 1)
            elif isinstance(value, float):
                self.write_scalar(f"curve/{key}", value, self.epoch + 1)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics_history.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def _evaluate_curve_point(self):
        base_run = self.cfg.DATASET.SUBSAMPLE_CLASSES == "base" and hasattr(self, "build_clip_model")
        if base_run and getattr(self, "_all_classes", None) is None:
            from vlprompt.predict import all_classes_evaluation  # imported late: it imports the trainers

            self._all_classes = all_classes_evaluation(self)
        model, loader = self.model, self.test_loader
        if base_run:
            model, loader = self._all_classes.refresh(self)
        evaluator, saved_base_new = self.evaluator, self.evaluator.base_new
        saved_model, self.model = self.model, model  # model_inference() runs self.model
        self.set_model_mode("eval")
        try:
            evaluator.reset()
            evaluator.base_new = base_run
            self._evaluate_loader(loader, f"eval every {self.cfg.TEST.EVAL_EVERY}")
            results = evaluator.evaluate(verbose=False)
            record = {"epoch": self.epoch + 1, "split": "test", "num_samples": evaluator.details["total"],
                      **{k: float(v) for k, v in results.items()}}
            base_new = evaluator.base_new_results()
            if base_new is not None:  # the top-level numbers are the base run's own: its samples among its classes
                b = base_new["base_to_new"]
                record = {"epoch": self.epoch + 1, "split": "test", "num_samples": base_new["num_base_samples"],
                          "accuracy": b["base"], "ece": b["base_ece"], "nll": b["base_nll"],
                          "base_to_new": b, "open_world": base_new["open_world"]}
            msg = f"eval every {self.cfg.TEST.EVAL_EVERY} epochs, epoch {self.epoch + 1}: accuracy {record['accuracy']:.2f}%"
            if base_new is not None:
                msg += f"; from all classes: new {b['new']:.2f}%, HM {b['hm']:.2f}%"
            print(msg)
            return record
        finally:
            self.model = saved_model
            evaluator.reset()
            evaluator.base_new = saved_base_new

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        print(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - self.time_start))}")
        if self._writer is not None:
            self._writer.close()

    # ---- evaluation ----------------------------------------------------------------------------------
    def forward_backward(self, batch):
        raise NotImplementedError

    def check_finite(self, loss):
        """Stop before a NaN/inf loss updates anything; the checkpoints written so far stay as they are.
        With several processes, a non-finite loss on any of them stops all of them."""
        bad = not torch.isfinite(loss).all()
        if dist_utils.is_distributed():
            flag = torch.tensor([float(bad)], device=loss.device)
            torch.distributed.all_reduce(flag)
            bad = flag.item() > 0
        if bad:
            step = self.epoch * self.num_batches + self.batch_idx + 1
            raise FloatingPointError(
                f"Loss is {loss.item()} at epoch {self.epoch + 1}, batch {self.batch_idx + 1} (step {step}) with "
                f"precision {getattr(getattr(self, 'precision', None), 'name', '?')}; training stopped before the "
                f"update, and the last checkpoint in {self.output_dir} is kept. Try a lower OPTIM.LR or PREC fp32.")

    def parse_batch(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def inference_state(self):
        """Whatever does not depend on the image, computed once per evaluation (see PromptedCLIP)."""
        return None

    def model_inference(self, images, state):
        raise NotImplementedError

    @torch.no_grad()
    def test(self, split=None):
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        loader = self.val_loader if split == "val" and self.val_loader is not None else self.test_loader
        if split == "val" and self.val_loader is None:
            split = "test"
        print(f"Evaluate on the *{split}* set")
        keep = split != "val" and (self.cfg.TEST.SAVE_LOGITS or self.cfg.TEST.SAVE_PREDICTIONS)
        kept = self._evaluate_loader(loader, f"eval {split}", keep)
        self._report_skipped()
        results = self.evaluator.evaluate(verbose=dist_utils.is_main_process())
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        if self.output_dir and dist_utils.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            self._write_metrics(split, results)
            if keep:
                kept = {"impath": kept["impath"], "label": torch.cat(kept["label"]).long(),
                        "logits": torch.cat(kept["logits"])}
                if self.cfg.TEST.SAVE_LOGITS:
                    path = os.path.join(self.output_dir, "logits.pt")
                    torch.save(kept, path + ".tmp")
                    os.replace(path + ".tmp", path)
                if self.cfg.TEST.SAVE_PREDICTIONS:
                    self._write_predictions(kept)
        return list(results.values())[0]

    def _evaluate_loader(self, loader, desc, keep=False):
        """The model over `loader` into self.evaluator, the image-independent state computed once; with several
        processes the results are gathered. Returns the logits, labels and image paths when `keep`."""
        kept = {"logits": [], "label": [], "impath": []}
        indices = []
        state = self.inference_state()
        for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                          disable=None if dist_utils.is_main_process() else True):
            if batch is None:
                continue
            images, labels = self.parse_batch(batch)
            logits = self.model_inference(images, state).float()
            self.evaluator.process(logits, labels)
            indices.append(torch.as_tensor(batch["index"]).view(-1))
            if keep:
                kept["logits"].append(logits.cpu())
                kept["label"].append(labels.cpu())
                kept["impath"].extend(batch["impath"])
        if dist_utils.is_distributed():
            kept = self._gather_evaluation(indices, kept, keep)
        return kept

    def _gather_evaluation(self, indices, kept, keep):
        """Every process's per-sample predictions (and kept logits), in dataset order with the duplicates that
        the distributed sampler pads with removed: the metrics are those of one process on the whole set."""
        local = {"index": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
                 "eval": self.evaluator.state(), "kept": kept if keep else None}
        parts = dist_utils.all_gather_object(local)
        index = torch.cat([p["index"] for p in parts])
        order = torch.argsort(index, stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        select = order[first]
        self.evaluator.load_state([p["eval"] for p in parts], select)
        if not keep:
            return kept
        impaths = [path for p in parts for path in p["kept"]["impath"]]
        return {"impath": [impaths[i] for i in select.tolist()],
                "label": [torch.cat([torch.cat(p["kept"]["label"]) for p in parts if p["kept"]["label"]])[select]],
                "logits": [torch.cat([torch.cat(p["kept"]["logits"]) for p in parts
                                      if p["kept"]["logits"]])[select]]}

    def _write_metrics(self, split, results):
        ev = self.evaluator
        metrics = dict(results, split=split, num_samples=ev.details["total"], correct=ev.details["correct"],
                       classes=[self.lab2cname.get(c, str(c)) for c in ev.details["classes"]],
                       num_classes_evaluated=len(ev.details["classes"]),
                       dataset=self.cfg.DATASET.NAME, subsample_classes=self.cfg.DATASET.SUBSAMPLE_CLASSES,
                       num_shots=self.cfg.DATASET.NUM_SHOTS, seed=self.cfg.SEED,
                       trainer=self.cfg.TRAINER.NAME, epoch=self.epoch + 1)
        if self.cfg.DATASET.NUM_SHOTS > 0:  # the shots a class really had (fewer where it has fewer images)
            shots = Counter(item.label for item in self.dm.dataset.train_x).values()
            metrics["shots_used"] = {"min": min(shots), "max": max(shots)}
        if "per_class_accuracy" in ev.details:
            metrics["per_class_accuracy"] = ev.details["per_class_accuracy"]
        base_new = ev.base_new_results()
        if base_new is not None:
            metrics.update(base_new)
        confusion = ev.confusion_matrix()
        if confusion is not None:
            metrics["confusion_matrix"] = confusion
        name = "metrics.json" if split == "test" else f"metrics_{split}.json"
        write_json_atomic(os.path.join(self.output_dir, name), metrics)

    def _write_predictions(self, kept, top=5):
        """predictions.csv: image path, label, and the top classes with their softmax scores."""
        probs = kept["logits"].softmax(dim=1)
        scores, classes = probs.topk(min(top, probs.shape[1]), dim=1)
        path = os.path.join(self.output_dir, "predictions.csv")
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.writer(f)
            k = classes.shape[1]
            writer.writerow(["impath", "label", "classname"] + [f"top{i + 1}{s}" for i in range(k)
                                                                 for s in ("", "_score")])
            for impath, label, cls, sc in zip(kept["impath"], kept["label"].tolist(), classes.tolist(),
                                              scores.tolist()):
                row = [impath, label, self.lab2cname.get(label, str(label))]
                for c, p in zip(cls, sc):
                    row += [self.lab2cname.get(c, str(c)), f"{p:.6f}"]
                writer.writerow(row)
        os.replace(path + ".tmp", path)
