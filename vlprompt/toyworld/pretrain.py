"""Contrastive pretraining of the toy CLIP (open_clip's CLIP, architecture `vlprompt-toy`) on rendered
images and their captions, on a CPU in a few minutes.

Every step draws a fresh batch from the world (never the held-out combinations), so nothing is stored but
the model. A fixed seed fixes the batches, the initialisation and so the loss curve.
"""
import json
import math
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlprompt.clip.encoders import PromptedTextEncoder
from vlprompt.clip.load import TOY_NAME, get_tokenizer, resolve_architecture

from .render import render, sample_scenes
from .world import PRETRAIN_STYLE_PROBS, caption, pretrain_pairs

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@dataclass
class PretrainConfig:
    arch: str = TOY_NAME
    steps: int = 800
    batch_size: int = 256
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    # torch's intra-op threads. One: the same losses on any machine (float sums depend on how work is split),
    # and on a busy 2-core machine OpenMP threads of these small ops wait on each other (measured 1.5-2x
    # slower than one thread). Rendering runs on a second thread meanwhile.
    threads: int = 1


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> CLIP-normalised float [B, 3, H, W] (what ToTensor + Normalize give)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


class Batches:
    """The stream of (images, token ids) batches of a seed, rendered in a background thread (numpy releases
    the GIL) in a fixed order, so it is the same stream whatever the timing."""

    def __init__(self, cfg: PretrainConfig, tokenizer, prefetch=4):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pairs = pretrain_pairs()
        self.token_cache = {}
        self.queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    def tokens(self, captions):
        missing = [c for c in dict.fromkeys(captions) if c not in self.token_cache]
        if missing:
            for c, row in zip(missing, self.tokenizer(missing)):
                self.token_cache[c] = row
        return torch.stack([self.token_cache[c] for c in captions])

    def _produce(self):
        rng = np.random.default_rng(self.cfg.seed)
        try:
            for _ in range(self.cfg.steps):
                scenes = sample_scenes(rng, self.cfg.batch_size, pairs=self.pairs, style_probs=PRETRAIN_STYLE_PROBS)
                images = to_tensor(render(scenes, rng))
                tokens = self.tokens([caption(s, rng) for s in scenes])
                while not self.stop.is_set():
                    try:
                        self.queue.put((images, tokens), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if self.stop.is_set():
                    return
        except BaseException as e:  # surfaces in the consumer
            self.queue.put(e)

    def __iter__(self):
        for _ in range(self.cfg.steps):
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self.stop.set()


def build_model(cfg: PretrainConfig):
    """open_clip's CLIP for the architecture, initialised from the seed, in training mode."""
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(resolve_architecture(cfg.arch), pretrained=None, load_weights=False)
    model.token_embedding.sparse = True  # only the caption words' rows get gradients: SparseAdam
    return model.float().train()


def _optimizers(model, cfg):
    embedding = model.token_embedding.weight
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p is embedding:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sparse = torch.optim.SparseAdam([embedding], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    return [adamw, sparse]


def lr_at(step, cfg):
    """Linear warmup over cfg.warmup steps, then cosine to zero."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def contrastive_loss(image_features, text_features, logit_scale):
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def train(cfg: PretrainConfig, progress=True):
    """Pretrain a toy CLIP; returns (model, per-step losses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, progress):
    model = build_model(cfg)
    text_encoder = PromptedTextEncoder(model)  # exact truncation of the 77-token context to the captions
    optimizers = _optimizers(model, cfg)
    batches = Batches(cfg, get_tokenizer(cfg.arch))
    losses = []
    bar = tqdm(total=cfg.steps, desc="pretraining toy CLIP", disable=not progress, dynamic_ncols=True)
    try:
        for step, (images, tokens) in enumerate(batches):
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, cfg)
            loss = contrastive_loss(model.encode_image(images), text_encoder.encode_tokens(tokens), model.logit_scale)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    finally:
        batches.close()
        bar.close()
    model.token_embedding.sparse = False
    return model.eval(), losses


def _write_atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def loss_curve_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".loss.json")


def pretrain(cfg: PretrainConfig, checkpoint, progress=True):
    """Pretrain and save the weights (an open_clip state dict, loadable by MODEL.BACKBONE.PATH) to
    `checkpoint`, and the loss curve and config next to it (<name>.loss.json); both written atomically.
    Returns the record written to the json."""
    checkpoint = Path(checkpoint)
    start = time.time()
    model, losses = train(cfg, progress=progress)
    record = {"config": asdict(cfg), "seconds": round(time.time() - start, 1), "torch": torch.__version__,
              "open_clip": open_clip.__version__, "losses": losses}
    _write_atomic(checkpoint, lambda p: torch.save(model.state_dict(), p))
    _write_atomic(loss_curve_path(checkpoint), lambda p: p.write_text(json.dumps(record)))
    return record
