"""Speed of vlprompt's shared paths against the naive (official) ones, and the cost of training each method,
measured side by side in one run on whatever device is present.

  python tools/benchmark.py [--device D] [--classes N [N ...]] [--quick] [--grad-checkpointing] [--json FILE]

Uses a ViT-B/16-sized CLIP with random weights (timings do not depend on the values). Each pair is timed
interleaved (A, B, A, B, ...) and reported as the median ratio with its range, because these CPUs slow down
under sustained load: absolute times are printed but only the ratios are comparable across runs.

Training: CoOp, IVLP, MaPLe, BMIP and HiCroPL (in both mapper modes) are built as `train.py` builds them (the
registered trainer class from the official config, with a class list of N names, for each N of --classes)
and step on random images with random labels at the configs' batch sizes, interleaved with a re-creation of
the official training step on the same parameters (see "the official training step, re-created" below):
the speedup (official step time / ours) and both peak memories per class count; at the largest count also
images/s and the size of the checkpoint the trainer writes against the whole-model checkpoint the official
code writes. --grad-checkpointing adds each trainer's step with TRAIN.GRAD_CHECKPOINTING on.
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from unittest import mock

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, REPO)
sys.path.insert(0, TOOLS)

import vlprompt.trainers  # noqa: E402  registers the trainers and their config keys
from vlprompt.clip import get_tokenizer, load_clip  # noqa: E402
from vlprompt.clip.encoders import length_groups, pass_cost  # noqa: E402
from vlprompt.clip.text_prompt import ClassPromptTemplate  # noqa: E402
from vlprompt.config import get_cfg_default  # noqa: E402
from vlprompt.data.base import DatasetBase, Datum  # noqa: E402
from vlprompt.datasets import DATASET_REGISTRY  # noqa: E402
from vlprompt.engine import checkpoint as ckpt  # noqa: E402
from vlprompt.engine.trainer import TRAINER_REGISTRY  # noqa: E402
from vlprompt.trainers.coop import CoOpModel  # noqa: E402
from sweep import config_file  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)

def class_names(n):
    """ImageNet's class names (open_clip's list, as CLIP's zero-shot evaluation uses them), then numbered
    made-up ones beyond 1000."""
    return list(IMAGENET_CLASSNAMES[:n]) + [f"made-up class {i}" for i in range(len(IMAGENET_CLASSNAMES), n)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns, repeats, device, memory=None):
    """Time each function once per round, rounds repeated; the first round warms up and is dropped. With `memory`
    (a PeakMemory), each call's peak memory too: then (times, peaks in MB) per function."""
    times, peaks = {name: [] for name in fns}, {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            if memory is not None:
                memory.start()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - start)
                if memory is not None:
                    peaks[name].append(memory.peak_mb())
    return times if memory is None else (times, peaks)


def ratio_summary(slow, fast):
    ratios = sorted(s / f for s, f in zip(slow, fast))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
            "slow_s": statistics.median(slow), "fast_s": statistics.median(fast)}


# ---- training: the trainers as train.py builds them ------------------------------------------------------

# The methods timed, with their official base-to-new configs (tools/sweep.py); batch sizes, precision and
# method settings are read from them.
TRAINER_CONFIGS = {name: config_file(name) for name in ("CoOp", "IVLP", "MaPLe", "BMIP", "HiCroPL")}
# HiCroPL is timed once per mapper mode (table row: TRAINER.HICROPL.MAPPER_MODE), against one official step
MODE_ROWS = {"HiCroPL": {"HiCroPL": "differentiable", "HiCroPL-official": "official"}}
QUICK_TRAINERS = ("IVLP", "MaPLe", "BMIP", "HiCroPL")  # the deep-prompting methods, whose speed is in question
# Weight dtype of the official checkpoints for each PREC: the official code keeps CLIP (and the prompts) in
# fp16 with PREC fp16 and in fp32 otherwise.
OFFICIAL_WEIGHT_DTYPE = {"fp16": torch.float16, "fp32": torch.float32, "amp": torch.float32,
                         "bf16": torch.float32}
CLASS_LIST_DATASET = "BenchmarkClassList"
CLASSNAMES_FILE = "classnames.json"
DESCRIPTIONS_FILE = "descriptions.json"
MB = 2 ** 20


class ClassListDataset(DatasetBase):
    """Only a class list, read from <DATASET.ROOT>/classnames.json: one placeholder item per class, so that the
    trainers build through their DataManager with these classes. No image is ever read: the benchmark hands
    random tensors to forward_backward()."""

    def __init__(self, cfg):
        with open(os.path.join(cfg.DATASET.ROOT, CLASSNAMES_FILE)) as f:
            names = json.load(f)
        items = [Datum(label=label, classname=name) for label, name in enumerate(names)]
        super().__init__(train_x=items, test=items)


if CLASS_LIST_DATASET not in DATASET_REGISTRY:  # the tests may load this file more than once
    DATASET_REGISTRY.register(ClassListDataset, name=CLASS_LIST_DATASET)


@contextlib.contextmanager
def trainers_use_copies_of(clip_model):
    """The trainers load their CLIP with pretrained weights, which a benchmark does not need (and this machine
    may not have): hand them copies of one randomly initialised model instead, which is also faster than
    initialising a new one for each trainer."""
    with mock.patch.object(vlprompt.trainers.base, "load_clip", lambda *args, **kw: copy.deepcopy(clip_model)):
        yield


def trainer_cfg(name, backbone, device, workdir):
    cfg = get_cfg_default()
    cfg.merge_from_file(TRAINER_CONFIGS[name])
    cfg.merge_from_list([
        "TRAINER.NAME", name, "MODEL.BACKBONE.NAME", backbone, "DEVICE", str(device),
        "DATASET.NAME", CLASS_LIST_DATASET, "DATASET.ROOT", workdir, "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", os.path.join(workdir, name), "VERBOSE", False,
    ])
    if name == "HiCroPL":
        # The config's image teacher is ViT-B/16, the backbone itself (reused, not loaded again). Its fixed class
        # embeddings come from one sentence per class rather than CLIP's 80 templates: a one-off setup cost, not
        # part of a training step, and 80,000 sentences for 1000 classes take long on a CPU.
        cfg.merge_from_list(["TRAINER.HICROPL.TEACHER_NAME", backbone,
                             "TRAINER.HICROPL.DESCRIPTIONS", os.path.join(workdir, DESCRIPTIONS_FILE)])
    return cfg


def write_class_list(workdir, classnames):
    with open(os.path.join(workdir, CLASSNAMES_FILE), "w") as f:
        json.dump(classnames, f)
    with open(os.path.join(workdir, DESCRIPTIONS_FILE), "w") as f:
        json.dump({name: [f"a photo of a {name}."] for name in classnames}, f)


class PeakMemory:
    """How far memory rose over a stretch of code, at its peak. CUDA: torch.cuda.max_memory_allocated above
    what was allocated at the start (the model excluded). CPU: how far the process's peak resident memory
    (VmHWM, reset through /proc/self/clear_refs) rose above its resident memory at the start."""

    def __init__(self, device):
        self.device = device
        self.what = ("CUDA max allocated increase" if device.type == "cuda" else "CPU peak RSS increase")

    @staticmethod
    def _status_kb(field):
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # hand freed memory back, so the baseline is real
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.start_kb = self._status_kb("VmRSS")

    def peak_mb(self):
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start_bytes) / MB
        return (self._status_kb("VmHWM") - self.start_kb) * 1024 / MB


# What the official save_model writes for each method: CoOp registers its prompt learner, the others their whole
# model (frozen CLIP included, without CLIP's token embedding table, which their text encoders do not hold);
# HiCroPL's model also holds its teacher image tower (ZS_image_encoder).
OFFICIAL_SAVED_MODULES = {"CoOp": "prompt learner", "IVLP": "whole model", "MaPLe": "whole model",
                          "BMIP": "whole model",
                          "HiCroPL": "whole model + teacher image tower"}
# Moment tensors per learned parameter in the optimizer state the official files keep.
OPTIMIZER_MOMENTS = {"sgd": 1, "adam": 2, "adamw": 2}


def official_checkpoint_bytes(name, trainer, clip_model):
    """Bytes of the tensors in the checkpoint the official code writes for this trainer's config: the saved
    modules (OFFICIAL_SAVED_MODULES), the per-class frozen prompt embeddings its prompt learner keeps as buffers
    (token_prefix/suffix: classes x (context length - N_CTX) x text width) and the optimizer's moments for the
    learned parameters, all in the weight dtype of the official PREC. Pickle overhead (under 0.1%) aside."""
    clip_state = clip_model.state_dict()
    frozen = sum(v.numel() for k, v in clip_state.items() if k != "token_embedding.weight")
    teacher = sum(v.numel() for v in clip_model.visual.state_dict().values())
    learned = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    template = next(m for m in trainer.model.modules() if isinstance(m, ClassPromptTemplate))
    context_length, width = clip_state["positional_embedding"].shape[0], clip_state["token_embedding.weight"].shape[1]
    prompt_buffers = template.num_classes * (context_length - template.n_ctx) * width
    optim = trainer.cfg.OPTIM
    moments = 0 if optim.NAME == "sgd" and not optim.MOMENTUM else OPTIMIZER_MOMENTS[optim.NAME]
    saved = OFFICIAL_SAVED_MODULES[name]
    elements = (learned * (1 + moments) + prompt_buffers + (frozen if "whole model" in saved else 0)
                + (teacher if "teacher" in saved else 0))
    dtype = OFFICIAL_WEIGHT_DTYPE[trainer.method_cfg.PREC]
    return elements * dtype.itemsize, dtype


def checkpoint_sizes(trainer, directory):
    """Paths and bytes of the two checkpoints the trainer writes: the one at the end of training (the weights
    alone; it stays on disk) and a resume point (with the optimizer, scheduler and RNG state; written only every
    TRAIN.CHECKPOINT_FREQ epochs when asked for)."""
    sizes = {}
    for kind, finished in (("final", True), ("resume", False)):
        trainer.save_model(0, os.path.join(directory, kind), finished=finished)
        path = os.path.join(directory, kind, trainer.checkpoint_name, ckpt.checkpoint_name(1))
        sizes[kind] = (path, os.path.getsize(path))
    return sizes


# ---- the official training step, re-created --------------------------------------------------------------
# What the official code computes in one training step, on the trainer's own parameters and frozen CLIP, so
# that only the computation differs: every class prompt at all 77 positions at every step (no truncation, no
# length groups), hidden states sequence-first as OpenAI's CLIP keeps them ([L, N, d], made by a permute
# without a copy, as the official encoders do), each layer's prompts put in by a torch.cat of [prefix, prompts
# expanded to the batch and permuted, suffix], the same open_clip blocks with their attention set to
# sequence-first (OpenAI's ResidualAttentionBlock: x + attn(ln_1(x)), then x + mlp(ln_2(x))), BMIP's weights
# from a second attention pass with need_weights=True, HiCroPL's mapper written into the prompts (no gradient)
# before the step. The same precision context, loss and optimizer step as the trainer's.

@contextlib.contextmanager
def sequence_first_attention(module):
    """Every nn.MultiheadAttention in `module` takes [L, N, d] while inside, as in OpenAI's CLIP."""
    attentions = [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    saved = [a.batch_first for a in attentions]
    for a in attentions:
        a.batch_first = False
    try:
        yield
    finally:
        for a, batch_first in zip(attentions, saved):
            a.batch_first = batch_first


class FullLengthPrompts:
    """A template's class prompts at all 77 positions, as the official prompt learners keep them
    (token_prefix: SOS; token_suffix: everything after the n context slots, up to position 77)."""

    def __init__(self, template, text_encoder, tokenizer):
        tokens = tokenizer([f"{template.prefix} {name}." for name in template.classnames])
        tokens = tokens.to(template.token_prefix.device)
        with torch.no_grad():
            embedding = text_encoder.embed(tokens)
        self.prefix, self.suffix = embedding[:, :1], embedding[:, 1 + template.n_ctx:]
        self.eot_index = tokens.argmax(dim=-1)

    def assemble(self, ctx):
        ctx = ctx.unsqueeze(0).expand(self.prefix.shape[0], -1, -1) if ctx.dim() == 2 else ctx
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)


def _layer_prompts(prompts, batch):
    """[n, d] prompts -> [n, batch, d], sequence-first: prompts.expand(batch, -1, -1).permute(1, 0, 2)."""
    return prompts.expand(batch, -1, -1).permute(1, 0, 2)


def official_text_features(encoder, embeddings, eot_index, deep_prompts=(), hook=None):
    """The official text encoder: [C, 77, d] input embeddings -> [C, embed_dim] features."""
    x = (embeddings + encoder.positional_embedding.to(embeddings.dtype)).permute(1, 0, 2)
    for i, block in enumerate(encoder.transformer.resblocks):
        if 0 < i < len(deep_prompts) and deep_prompts[i] is not None:
            n = deep_prompts[i].shape[0]
            x = torch.cat([x[:1], _layer_prompts(deep_prompts[i], x.shape[1]).to(x.dtype), x[1 + n:]], dim=0)
        if hook is not None:
            x = hook(i, x, block)
        x = block(x, attn_mask=encoder.attn_mask)
    x = encoder.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0], device=x.device), eot_index] @ encoder.text_projection


def official_image_features(encoder, images, prompts=None, deep_prompts=(), hook=None):
    """The official image encoder: prompts appended after the positional embedding, replaced at the end of the
    sequence at each deep layer."""
    v = encoder.visual
    x = v.conv1(images.to(encoder.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    if prompts is not None:
        x = torch.cat([x, prompts.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
    x = v.ln_pre(x).permute(1, 0, 2)
    for i, block in enumerate(v.transformer.resblocks):
        if 0 < i < len(deep_prompts) and deep_prompts[i] is not None:
            n = deep_prompts[i].shape[0]
            x = torch.cat([x[:-n], _layer_prompts(deep_prompts[i], x.shape[1]).to(x.dtype)], dim=0)
        if hook is not None:
            x = hook(i, x, block)
        x = block(x)
    x = v.ln_post(x.permute(1, 0, 2)[:, 0])
    return x @ v.proj


def official_attention_weights(block, x, attn_mask=None):
    """A second attention pass of the block on sequence-first x, for its head-averaged weights [N, L, L]."""
    h = block.ln_1(x)
    mask = None if attn_mask is None else attn_mask.to(h.dtype)
    return block.attn(h, h, h, need_weights=True, attn_mask=mask)[1]


def official_logits_and_loss(name, trainer, images, labels, full):
    """(logits, loss) of one official training step of trainer `name` (the official computation above)."""
    model = trainer.model
    pl = model.prompt_learner
    text_enc, image_enc = model.text_encoder, model.image_encoder
    if name == "CoOp":
        text = official_text_features(text_enc, full.assemble(pl.ctx), full.eot_index)
        image = official_image_features(image_enc, images)
    elif name == "IVLP":
        text = official_text_features(text_enc, full.assemble(pl.ctx), full.eot_index, [None, *pl.text_prompts])
        image = official_image_features(image_enc, images, pl.visual_ctx, [None, *pl.visual_prompts])
    elif name == "MaPLe":
        _, text_deep, vision_first, vision_deep = pl()
        text = official_text_features(text_enc, full.assemble(pl.ctx), full.eot_index, text_deep)
        image = official_image_features(image_enc, images, vision_first, vision_deep)
    elif name == "BMIP":
        text, image = official_bmip_features(model, images, full)
    elif name.startswith("HiCroPL"):
        return official_hicropl_logits_and_loss(trainer, images, labels, full)
    else:
        raise ValueError(f"no official step re-created for {name}")
    logits = model.similarity(image, text)
    return logits, torch.nn.functional.cross_entropy(logits, labels)


def official_bmip_features(model, images, full):
    pl = model.prompt_learner
    n = pl.n_ctx

    def text_hook(i, x, block):
        if not 1 <= i <= pl.depth - 2:
            return x
        k = i - 1
        weights = official_attention_weights(block, x, model.text_encoder.attn_mask).detach()
        mix = pl.mix_weights(pl.text_mix[k], weights[:, 0, 1:1 + n].float().mean(dim=0))  # row 0, over classes
        prompt = pl.aggregate(pl.compound_prompts_text[k], pl.foreign_text(k), mix)
        return torch.cat([x[:1], _layer_prompts(prompt, x.shape[1]).to(x.dtype), x[1 + n:]], dim=0)

    foreign = [pl.foreign_vision(k) for k in range(pl.depth - 1)]

    def vision_hook(i, x, block):
        if not 1 <= i <= pl.depth - 1:
            return x
        k = i - 1
        weights = official_attention_weights(block, x).detach()  # [B, L, L]
        scores = weights[:, :-n, -n:].float().mean(dim=(0, 1))  # over the CLS + patch rows and the batch
        prompt = pl.aggregate(pl.compound_prompts_visual[k], foreign[k], pl.mix_weights(pl.vision_mix[k], scores))
        return torch.cat([x[:-n], _layer_prompts(prompt, x.shape[1]).to(x.dtype)], dim=0)

    text = official_text_features(model.text_encoder, full.assemble(pl.ctx_t), full.eot_index, hook=text_hook)
    image = official_image_features(model.image_encoder, images, pl.first_vision_prompt(), hook=vision_hook)
    return text, image


def official_hicropl_logits_and_loss(trainer, images, labels, full):
    """The official HiCroPL step: the mapper's outputs written into the prompts (no gradient), both towers with
    the written prompts, the teacher's image features, the distillation loss."""
    model, lambd = trainer.model, trainer.method_cfg.LAMBD
    pl = model.prompt_learner
    pl.write_mapped_prompts()
    text_prompts, vision_prompts = list(pl.cross_prompts_text), list(pl.cross_prompts_visual)
    text = official_text_features(model.text_encoder, full.assemble(text_prompts[0]), full.eot_index,
                                  [None, *text_prompts[1:]])
    teacher_encoder = model.teacher_image_encoder
    teacher_encoder = model.image_encoder if teacher_encoder is None else teacher_encoder
    with torch.no_grad():
        teacher_image = F.normalize(official_image_features(teacher_encoder, images).float(), dim=-1)
    image = official_image_features(model.image_encoder, images, vision_prompts[0], [None, *vision_prompts[1:]])
    text = F.normalize(F.normalize(text.float(), dim=-1) + model.teacher_text, dim=-1)
    image = F.normalize(F.normalize(image.float(), dim=-1) + teacher_image, dim=-1)
    logits = model.similarity(image, text)
    text_term = 1.0 - F.cosine_similarity(text, model.teacher_text, dim=-1, eps=1e-7).mean()
    image_term = 1.0 - F.cosine_similarity(image, teacher_image, dim=-1, eps=1e-7).mean()
    return logits, F.cross_entropy(logits, labels) + lambd * (text_term + image_term)


def official_training_step(name, trainer, batch, full):
    """One training step as the official code computes it (see above), on the trainer's parameters."""
    images, labels = trainer.parse_batch(batch)
    with trainer.precision.autocast(), sequence_first_attention(trainer.model):  # the teacher tower included
        _, loss = official_logits_and_loss(name, trainer, images, labels, full)
    trainer.precision.backward_and_step(loss, trainer._optims[trainer.checkpoint_name])


def timed_steps(fns, repeats, device):
    """interleaved() for training steps, with each call's peak memory: (times, peaks in MB) per function."""
    memory = PeakMemory(device)
    times, peaks = interleaved(fns, repeats, device, memory)
    return times, peaks, memory.what


@contextlib.contextmanager
def grad_checkpointing(trainer):
    """The trainer's model with TRAIN.GRAD_CHECKPOINTING on while inside."""
    encoders = (trainer.model.text_encoder, trainer.model.image_encoder)
    for encoder in encoders:
        encoder.grad_checkpointing = True
    try:
        yield
    finally:
        for encoder in encoders:
            encoder.grad_checkpointing = False


def checkpointed_step(trainer, batch):
    with grad_checkpointing(trainer):
        trainer.forward_backward(batch)


def build_trainers(name, clip_model, args, device, workdir):
    """{table row: trainer} for one method: HiCroPL once per mapper mode (MODE_ROWS), the others once."""
    trainers = {}
    for row_name, mode in MODE_ROWS.get(name, {name: None}).items():
        cfg = trainer_cfg(name, args.backbone, device, workdir)
        if mode is not None:
            cfg.merge_from_list(["TRAINER.HICROPL.MAPPER_MODE", mode])
        with trainers_use_copies_of(clip_model), contextlib.redirect_stdout(io.StringIO()):  # build messages
            trainers[row_name] = TRAINER_REGISTRY.get(name)(cfg)
        trainers[row_name].set_model_mode("train")
    return trainers


def benchmark_trainer(name, clip_model, args, classnames, device, workdir, details):
    """Rows for one method at one class count: its training step timed interleaved with the official step
    (re-created above, on the parameters of the last trainer built: for HiCroPL the official mapper mode), both
    with their peak memory; with --grad-checkpointing also its step with TRAIN.GRAD_CHECKPOINTING on;
    details: the checkpoint sizes as well."""
    trainers = build_trainers(name, clip_model, args, device, workdir)
    first = next(iter(trainers.values()))
    official_batch = first.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    batch_size = args.train_batch_size or official_batch
    batch = {"img": torch.randn(batch_size, 3, *first.cfg.INPUT.SIZE),
             "label": torch.randint(0, len(classnames), (batch_size,))}
    fns = {}
    if not args.no_official:
        official = list(trainers.values())[-1]
        full = FullLengthPrompts(prompt_template(official), official.model.text_encoder, official.tokenizer)
        fns["official"] = lambda: official_training_step(name, official, batch, full)
    for row_name, trainer in trainers.items():
        fns[row_name] = lambda trainer=trainer: trainer.forward_backward(batch)
        if args.grad_checkpointing:
            fns[row_name + " checkpointed"] = lambda trainer=trainer: checkpointed_step(trainer, batch)
    times, peaks, memory_what = timed_steps(fns, args.train_steps, device)
    rows = {}
    for row_name, trainer in trainers.items():
        step = times[row_name]
        row = {"classes": len(classnames), "official_batch_size": official_batch, "batch_size": batch_size,
               "steps": len(step), "step_s": statistics.median(step), "step_s_min": min(step),
               "step_s_max": max(step), "images_per_s": batch_size / statistics.median(step),
               "peak_memory_mb": max(peaks[row_name]), "peak_memory_measure": memory_what}
        if "official" in times:
            row["speedup"] = ratio_summary(times["official"], step)
            row["official_peak_memory_mb"] = max(peaks["official"])
            row["peak_memory_ratio"] = row["peak_memory_mb"] / row["official_peak_memory_mb"]
        if args.grad_checkpointing:
            checkpointed = row_name + " checkpointed"
            row["grad_checkpointing"] = {
                "slowdown": ratio_summary(times[checkpointed], step),  # median of checkpointed / plain step
                "peak_memory_mb": max(peaks[checkpointed]),
                "peak_memory_saved": 1 - max(peaks[checkpointed]) / row["peak_memory_mb"]}
        if details:
            row.update(checkpoint_details(name, trainer, clip_model, os.path.join(workdir, row_name)))
        rows[row_name] = row
    del trainers, fns
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def checkpoint_details(name, trainer, clip_model, directory):
    with contextlib.redirect_stdout(io.StringIO()):
        sizes = checkpoint_sizes(trainer, directory)
    official_bytes, official_dtype = official_checkpoint_bytes(name, trainer, clip_model)
    learned = [p for p in trainer.model.parameters() if p.requires_grad]
    row = {"checkpoint_path": sizes["final"][0], "checkpoint_bytes": sizes["final"][1],
           "resume_checkpoint_path": sizes["resume"][0], "resume_checkpoint_bytes": sizes["resume"][1],
           "official_checkpoint_bytes": official_bytes,
           "official_checkpoint_dtype": str(official_dtype).replace("torch.", ""),
           "official_checkpoint_holds": OFFICIAL_SAVED_MODULES[name],
           "checkpoint_fraction": sizes["final"][1] / official_bytes,
           "resume_checkpoint_fraction": sizes["resume"][1] / official_bytes,
           "learned_parameters": sum(p.numel() for p in learned),
           "learned_parameter_bytes": sum(p.numel() * p.element_size() for p in learned)}
    # the parameters alone in the official weight dtype: a floor for any checkpoint that keeps them all
    row["learned_parameter_fraction"] = row["learned_parameters"] * official_dtype.itemsize / official_bytes
    return row


def prompt_template(trainer):
    return next(m for m in trainer.model.modules() if isinstance(m, ClassPromptTemplate))


def print_speedup_table(results, device):
    """The official step time / ours per class count, and the peak memory at the largest count."""
    training = results["training"]
    counts = list(training)
    largest = training[counts[-1]]
    first = next(iter(largest.values()))
    print(f"\n| trainer (batch, {device}) | " + " | ".join(f"{c} classes" for c in counts)
          + f" | peak memory at {counts[-1]} classes, official / vlprompt MB* (ratio) |")
    print("| --- |" + " --- |" * (len(counts) + 1))
    for name in largest:
        cells = []
        for c in counts:
            row = training[c][name]
            s = row.get("speedup")
            cells.append(f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" if s else "not measured")
        row = largest[name]
        memory = (f"{row['official_peak_memory_mb']:.0f} / {row['peak_memory_mb']:.0f} ({row['peak_memory_ratio']:.2f})"
                  if "official_peak_memory_mb" in row else f"- / {row['peak_memory_mb']:.0f}")
        print(f"| {name} ({row['batch_size']}) | " + " | ".join(cells) + f" | {memory} |")
    print(f"Speedup: the official training step's time / vlprompt's, median (range) over {first['steps']} interleaved "
          "rounds after a warm-up; the official step is re-created in tools/benchmark.py on the same parameters "
          "(77 positions per prompt, sequence-first blocks, per-layer prompt concatenation). HiCroPL: the default "
          "(differentiable) mapper mode, which also trains the mapper (33 M values for ViT-B/16); HiCroPL-official: "
          "the official mode, against the same official step.\n"
          f"* {first['peak_memory_measure']} over one step; MB = 2^20 bytes.")
    checkpointed = [(c, name, row) for c in counts for name, row in training[c].items() if "grad_checkpointing" in row]
    if checkpointed:
        print("\n| trainer (classes, batch) | step time with / without TRAIN.GRAD_CHECKPOINTING (median, range) "
              "| peak memory without / with MB* | saved |")
        print("| --- | --- | --- | --- |")
        for c, name, row in checkpointed:
            g = row["grad_checkpointing"]
            s = g["slowdown"]
            print(f"| {name} ({c}, {row['batch_size']}) | {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) "
                  f"| {row['peak_memory_mb']:.0f} / {g['peak_memory_mb']:.0f} | {100 * g['peak_memory_saved']:.0f}% |")
    print(flush=True)


def print_training_table(training, num_classes, device):
    rows = {name: row for name, row in training.items() if "checkpoint_bytes" in row}
    first = next(iter(rows.values()))
    print(f"\n| trainer ({num_classes} classes, {device}) | batch (official) | step time (median, range) "
          f"| images/s | peak memory MB* | checkpoint MB (resume point MB) | official file MB (holds) "
          f"| checkpoint / official (resume point; learned parameters alone) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['batch_size']} ({row['official_batch_size']}) "
              f"| {row['step_s']:.2f} s ({row['step_s_min']:.2f}-{row['step_s_max']:.2f}) "
              f"| {row['images_per_s']:.2f} | {row['peak_memory_mb']:.0f} "
              f"| {row['checkpoint_bytes'] / MB:.2f} ({row['resume_checkpoint_bytes'] / MB:.2f}) "
              f"| {row['official_checkpoint_bytes'] / MB:.1f} ({row['official_checkpoint_holds']}) "
              f"| {100 * row['checkpoint_fraction']:.2f}% ({100 * row['resume_checkpoint_fraction']:.2f}%; "
              f"{100 * row['learned_parameter_fraction']:.2f}%) |")
    print(f"* {first['peak_memory_measure']} over one step; MB = 2^20 bytes. Steps: forward, loss, backward, "
          "optimizer step "
          f"on random images ({first['steps']} timed after 1 warm-up).\n"
          "Checkpoint: the file a finished run keeps (the learned parameters in fp32); a resume point, written "
          "every TRAIN.CHECKPOINT_FREQ epochs when asked for, adds the optimizer's state (SGD one momentum, Adam "
          "two moments per parameter). Official file: the tensors the official save_model writes with the same "
          f"config, in {first['official_checkpoint_dtype']} (the official PREC): the modules it saves, the "
          "per-class frozen prompt embeddings (token_prefix/suffix) and the optimizer's moments. Learned "
          "parameters alone: their size in the official dtype, the floor for any file that keeps them.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000],
                   help="class counts of the training sweep (1000: ImageNet trained on all classes)")
    p.add_argument("--text-classes", type=int, default=0,
                   help="classes of the text-encoder and evaluation measurements (0: the largest of --classes)")
    p.add_argument("--batch-size", type=int, default=100, help="test batch size (the official default is 100)")
    p.add_argument("--eval-images", type=int, default=50000,
                   help="size of the evaluation the per-image costs are given for (ImageNet's 50,000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trainers", default="",
                   help="comma-separated trainers to time (default: all of TRAINER_CONFIGS; --quick: "
                        "those of QUICK_TRAINERS)")
    p.add_argument("--train-steps", type=int, default=3,
                   help="timed training steps per trainer and path, interleaved (after 1 warm-up round)")
    p.add_argument("--train-batch-size", type=int, default=0,
                   help="training batch size for every trainer (0: each official config's)")
    p.add_argument("--backbone", default="ViT-B-16-quickgelu", help="architecture (random weights)")
    p.add_argument("--checkpoint-dir", default="",
                   help="keep the trainers' checkpoints in this folder (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true",
                   help="training only: IVLP, MaPLe, BMIP and HiCroPL at 10 and 100 classes, batches of 2, one "
                        "timed round after a warm-up (about 3 minutes on 2 idle CPU cores)")
    p.add_argument("--no-official", action="store_true",
                   help="do not time the re-created official step (e.g. for 1000 classes with --grad-checkpointing)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="also time each trainer's step with TRAIN.GRAD_CHECKPOINTING on, with its peak memory")
    p.add_argument("--training-only", action="store_true",
                   help="skip the text-encoder and evaluation measurements (e.g. to time one trainer on its own)")
    p.add_argument("--json", default="", help="also write the results to this JSON file (after each section)")
    args = p.parse_args(argv)
    if args.quick:
        # The official step at 100 classes (77 positions for each prompt) takes ~10 s on 2 CPU cores: one timed
        # round per trainer keeps the run to a few minutes; the full run gives ranges.
        args.classes, args.training_only = [10, 100], True
        args.train_batch_size, args.train_steps = 2, 1
        args.trainers = args.trainers or ",".join(QUICK_TRAINERS)
        print(f"--quick: training only, {args.trainers.replace(',', ', ')} at 10 and 100 classes, batches of 2 "
              "instead of the official batch sizes, one timed round after a warm-up round")
    args.classes = sorted(set(args.classes))
    args.text_classes = args.text_classes or args.classes[-1]
    args.trainers = args.trainers or ",".join(TRAINER_CONFIGS)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    trainer_names = [t for t in args.trainers.split(",") if t]
    unknown = [t for t in trainer_names if t not in TRAINER_CONFIGS]
    if unknown:
        p.error(f"--trainers: no official config known for {', '.join(unknown)}; choose from "
                f"{', '.join(TRAINER_CONFIGS)}")

    print(f"Building a randomly initialised {args.backbone} on {device} ...")
    cpu_clip = load_clip(args.backbone, random_weights=True)  # the trainers get copies of it
    results = {"device": str(device), "classes": args.classes, "text_classes": args.text_classes,
               "backbone": args.backbone, "quick": args.quick, "torch_threads": torch.get_num_threads()}
    if not args.training_only:
        results.update(measure_text_and_evaluation(cpu_clip, args, device))
        print_speed_table(results, args, device)
        write_json(results, args.json)  # each section is kept as soon as it is measured
    if trainer_names:
        measure_training(cpu_clip, trainer_names, args, device, results)
        write_json(results, args.json)
    return results


def write_json(results, path):
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {path}")


def measure_text_and_evaluation(cpu_clip, args, device):
    clip_model = copy.deepcopy(cpu_clip).to(device)
    tokenizer = get_tokenizer("ViT-B/16")
    cfg = get_cfg_default().TRAINER.COOP  # CoOp's defaults: 16 learnable context tokens
    model = CoOpModel(clip_model, tokenizer, class_names(args.text_classes), cfg).to(device).eval()
    template = model.prompt_learner.template
    full_tokens = tokenizer([f"{template.prefix} {n}." for n in template.classnames]).to(device)
    results = {}

    # 1. Text encoder: full 77 positions vs truncated to the longest EOT, for CoOp's 16-token context
    #    prompts and for zero-shot CLIP's "a photo of a {}." prompts.
    enc = model.text_encoder
    zeroshot_tokens = tokenizer([f"a photo of a {n}." for n in template.classnames]).to(device)
    text_rows = {}
    for label, tokens in (("CoOp prompts", full_tokens), ("zero-shot prompts", zeroshot_tokens)):
        with torch.no_grad():
            full = enc.encode_tokens(tokens, truncate=False)
            short = enc.encode_tokens(tokens, truncate=True)
            times = interleaved({
                "full": lambda: enc.encode_tokens(tokens, truncate=False),
                "truncated": lambda: enc.encode_tokens(tokens, truncate=True),
            }, args.repeats, device)
        row = ratio_summary(times["full"], times["truncated"])
        groups = length_groups(tokens.argmax(-1) + 1, pass_cost=pass_cost(device))  # as the encoder splits them
        row["positions"] = [tokens.shape[1], int(tokens.argmax(-1).max()) + 1]
        row["mean_positions_run"] = sum(len(rows) * length for rows, length in groups) / len(tokens)
        row["length_groups"] = len(groups)
        row["max_abs_diff"] = float((full - short).abs().max())
        text_rows[label] = row
    results["text_truncation"] = text_rows
    results["text_truncation_speedup"] = text_rows["CoOp prompts"]["median"]

    # 2. Evaluation: text features recomputed per test batch at all 77 positions (the official behaviour) vs
    #    truncated and computed once per evaluation (vlprompt); the middle path (truncated, per batch) isolates
    #    the caching. Measured as its parts, interleaved: the full-length text pass, class_state() (our text
    #    side) and one test batch's image side; per-image costs for --eval-images images follow from them.
    batch = torch.randn(args.batch_size, 3, 224, 224, device=device)
    with torch.no_grad():
        state = model.class_state()
        times = interleaved({"text_full": lambda: enc.encode_tokens(full_tokens, truncate=False),
                             "text": model.class_state, "batch": lambda: model.logits(batch, state)},
                            args.repeats, device)
    rounds = list(zip(times["text_full"], times["text"], times["batch"]))
    official = [(full + b) / args.batch_size for full, _, b in rounds]
    per_batch = [(t + b) / args.batch_size for _, t, b in rounds]
    cached = [b / args.batch_size + t / args.eval_images for _, t, b in rounds]
    ev = ratio_summary(official, cached)
    cache_only = ratio_summary(per_batch, cached)
    ev.update(text_full_s=statistics.median(times["text_full"]), text_s=statistics.median(times["text"]),
              batch_s=statistics.median(times["batch"]), batch_size=args.batch_size, eval_images=args.eval_images,
              cache_only=cache_only)
    results["eval_cache"] = ev
    results["eval_cache_speedup"] = ev["median"]
    del model, clip_model, batch, state
    gc.collect()
    return results


def print_speed_table(results, args, device):
    text_rows, ev = results["text_truncation"], results["eval_cache"]
    cache_only = ev["cache_only"]
    print()
    print(f"| measurement ({args.text_classes} classes, {device}) | naive | vlprompt | speedup (median, range) |")
    print("| --- | --- | --- | --- |")
    for label, text in text_rows.items():
        print(f"| text encoder, {label}: {text['positions'][0]} positions vs up to each prompt's EOT (longest "
              f"{text['positions'][1]}; {text['mean_positions_run']:.1f} run on average in {text['length_groups']} "
              f"length groups) "
              f"| {text['slow_s']:.3f} s | {text['fast_s']:.3f} s "
              f"| {text['median']:.2f}x ({text['min']:.2f}-{text['max']:.2f}) |")
    print(f"| evaluation per image ({args.eval_images:,} images, batches of {args.batch_size}): full-length "
          f"text per batch (official) vs truncated once | {1000 * ev['slow_s']:.1f} ms | {1000 * ev['fast_s']:.1f} ms "
          f"| {ev['median']:.2f}x ({ev['min']:.2f}-{ev['max']:.2f}) |")
    print(f"| of which the caching alone: truncated text per batch vs once | {1000 * cache_only['slow_s']:.1f} ms "
          f"| {1000 * cache_only['fast_s']:.1f} ms | {cache_only['median']:.2f}x "
          f"({cache_only['min']:.2f}-{cache_only['max']:.2f}) |")
    print(f"(one text pass over {args.text_classes} classes: {ev['text_full_s']:.2f} s full length, "
          f"{ev['text_s']:.2f} s "
          f"truncated; one test batch of images: {ev['batch_s']:.2f} s)")
    worst = max(t["max_abs_diff"] for t in text_rows.values())
    print(f"\nTruncated text features differ from full-length ones by at most {worst:.2e}.", flush=True)


def measure_training(cpu_clip, trainer_names, args, device, results):
    """3. Training: each trainer built from its official config, stepped on random images against the official
    step, for each class count; `results` gains each class count's rows (and is written to --json) as soon as
    they are measured."""
    training = results["training"] = {}
    workdir = args.checkpoint_dir or tempfile.mkdtemp(prefix="vlprompt-benchmark-")
    os.makedirs(workdir, exist_ok=True)
    saved_cache = os.environ.get("VLPROMPT_CACHE")
    os.environ["VLPROMPT_CACHE"] = os.path.join(workdir, "cache")  # HiCroPL's class embeddings: not the user's cache
    try:
        for count in args.classes:
            classnames = class_names(count)
            write_class_list(workdir, classnames)
            rows = training[str(count)] = {}
            for name in trainer_names:
                print(f"Training {name}, {count} classes ...", flush=True)
                rows.update(benchmark_trainer(name, cpu_clip, args, classnames, device, workdir,
                                              details=count == args.classes[-1]))
            summarise_training(results)
            print_speedup_table(results, device)
            write_json(results, args.json)
        print_training_table(training[str(args.classes[-1])], args.classes[-1], device)
    finally:
        if saved_cache is None:
            os.environ.pop("VLPROMPT_CACHE", None)
        else:
            os.environ["VLPROMPT_CACHE"] = saved_cache
        if not args.checkpoint_dir:
            shutil.rmtree(workdir, ignore_errors=True)
            for row in training.get(str(args.classes[-1]), {}).values():
                row["checkpoint_path"] = row["resume_checkpoint_path"] = None  # removed with the temporary folder
    return results


def summarise_training(results):
    """The JSON's summary keys: {row: {"<classes>": value}} for the speedups and peak memory ratios against the
    official step; {row: value} at the largest class count for the rest."""
    training = results["training"]
    results["train_step_speedup"], results["train_peak_memory_ratio"] = {}, {}
    for count, rows in training.items():
        for name, row in rows.items():
            if "speedup" in row:
                results["train_step_speedup"].setdefault(name, {})[count] = row["speedup"]["median"]
                results["train_peak_memory_ratio"].setdefault(name, {})[count] = row["peak_memory_ratio"]
    largest = training[list(training)[-1]]
    for key, field in (("train_images_per_s", "images_per_s"), ("train_step_s", "step_s"),
                       ("peak_memory_mb", "peak_memory_mb"), ("checkpoint_fraction", "checkpoint_fraction")):
        results[key] = {name: row[field] for name, row in largest.items() if field in row}


if __name__ == "__main__":
    main()
