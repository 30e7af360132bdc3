"""What every CLIP prompt-learning trainer shares: load the frozen CLIP, build the method's model, train
only its learnable module, and evaluate with the image-independent part computed once."""
import contextlib
import re

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import PromptedImageEncoder, PromptedTextEncoder, get_tokenizer, load_clip
from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.engine.optim import build_lr_scheduler, build_optimizer
from vlprompt.engine.trainer import Precision, TrainerBase


class PromptedCLIP(nn.Module):
    """A frozen CLIP plus one method's learnable parts.

    A method implements class_state() -- everything that does not depend on the image (text features,
    vision prompts made from text prompts, ...) -- and logits(images, state). Training calls forward(),
    which recomputes the state for every batch (it carries gradients); evaluation computes it once.
    """

    def __init__(self, clip_model):
        super().__init__()
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedImageEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale

    def class_state(self) -> dict:
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor, state: dict) -> torch.Tensor:
        """Prompted image features [B, d] (a prompt structure implements it; see trainers/compose.py)."""
        raise NotImplementedError

    def logits(self, images: torch.Tensor, state: dict) -> torch.Tensor:
        return self.similarity(self.encode_image(images, state), state["text"])

    def forward(self, images):
        return self.logits(images, self.class_state())

    def similarity(self, image_features, text_features):
        """CLIP logits: logit_scale.exp() * cos(image, text). text: [C, d], or [B, C, d] per image."""
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        scale = self.logit_scale.exp().float()
        if text_features.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", image_features, text_features)
        return scale * image_features @ text_features.t()


# Parts of the official whole-model checkpoints (MaPLe, IVLP, VPT, BMIP, HiCroPL) that were never trained.
OFFICIAL_FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale", "prompt_learner.ZS_image_encoder.")


def map_official_key(key, key_map):
    """An official whole-model checkpoint key -> ours with (regex, replacement) pairs; the first full match wins.
    Unmatched keys of the frozen CLIP (and of the official teachers) are dropped (None); others pass unchanged."""
    for pattern, replacement in key_map:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None if key.startswith(OFFICIAL_FROZEN_PREFIXES) else key


def prompt_vectors(count: int, n: int, width: int) -> nn.ParameterList:
    """`count` independent [n, width] prompts drawn from N(0, 0.02), as the official deep prompts."""
    params = nn.ParameterList()
    for _ in range(count):
        p = torch.empty(n, width)
        nn.init.normal_(p, std=0.02)
        params.append(nn.Parameter(p))
    return params


def layer_minus_one(template: str):
    """Replacement for official keys named by block index i whose prompts we keep at list index i - 1."""
    return lambda m: template.format(int(m.group(1)) - 1)


def check_depth(name: str, depth: int, num_layers: int, minimum: int = 0) -> int:
    if not minimum <= depth <= num_layers:
        raise ValueError(f"{name} is {depth}; it must be between {minimum} and the {num_layers} layers of the tower")
    return depth


class CLIPPromptTrainer(TrainerBase):
    """Subclasses set `config_key` (cfg.TRAINER.<key> holds PREC etc.), `learnable_name` (the attribute of
    the model that trains), `checkpoint_name` (the folder the official code saves it under) and implement
    build_clip_model()."""

    config_key = ""
    learnable_name = "prompt_learner"
    checkpoint_name = "prompt_learner"
    # Official checkpoint keys -> ours, as (regex, replacement string or function of the match); tried in
    # order, first full match wins.
    # Unmatched keys under OFFICIAL_FROZEN_PREFIXES are frozen CLIP weights and are dropped.
    official_key_map = ()
    # Keys (after mapping) that hold no trained values (frozen prompt embeddings) and are dropped on load.
    official_extra_keys = ("token_prefix", "token_suffix")

    @classmethod
    def dataset_defaults(cls, cfg, model_dir=""):
        """Adjust cfg in place for its dataset, after the YAMLs and flags and before the KEY VALUE options (which
        override it). model_dir: the trained run an --eval-only run loads. CoPrompt applies its official table."""

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.config_key]

    def build_clip_model(self, clip_model, classnames) -> PromptedCLIP:
        raise NotImplementedError

    def build_model(self):
        cfg = self.cfg
        self.precision = Precision(self.method_cfg.PREC, self.device)
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH,
                               pretrained=cfg.MODEL.BACKBONE.PRETRAINED)
        clip_size = tuple(getattr(clip_model.visual, "image_size", cfg.INPUT.SIZE))
        if tuple(cfg.INPUT.SIZE) != clip_size:
            raise ValueError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} must equal the CLIP image size {clip_size} "
                             f"of {cfg.MODEL.BACKBONE.NAME}")
        clip_model.to(self.precision.weight_dtype)
        self.tokenizer = get_tokenizer(cfg.MODEL.BACKBONE.NAME)
        print(f"Building custom CLIP ({type(self).__name__})")
        with self._init_rng():
            self.model = self.build_clip_model(clip_model, classnames)
        self.model.text_encoder.grad_checkpointing = cfg.TRAIN.GRAD_CHECKPOINTING
        self.model.image_encoder.grad_checkpointing = cfg.TRAIN.GRAD_CHECKPOINTING
        learnable = getattr(self.model, self.learnable_name, None) if self.learnable_name else None
        for name, p in self.model.named_parameters():
            p.requires_grad_(learnable is not None and name.startswith(self.learnable_name + "."))
        self.model.to(self.device)
        if learnable is None:
            return
        n_params = sum(p.numel() for p in learnable.parameters() if p.requires_grad)
        print(f"Parameters to be updated: {n_params:,} in '{self.learnable_name}'")
        optim = build_optimizer(learnable, cfg.OPTIM)
        sched = build_lr_scheduler(optim, cfg.OPTIM)
        self.register_model(self.checkpoint_name, learnable, optim, sched)
        if cfg.MODEL.INIT_WEIGHTS:  # Dassl's key: start from trained weights (e.g. a checkpoint of another run)
            state = load_checkpoint(cfg.MODEL.INIT_WEIGHTS)
            self.load_trainable_state(self.checkpoint_name, state["state_dict"], cfg.MODEL.INIT_WEIGHTS)
            print(f"Initialised {self.learnable_name} from {cfg.MODEL.INIT_WEIGHTS}")

    @contextlib.contextmanager
    def _init_rng(self):
        """MODEL.INIT_SEED >= 0 seeds the initialisation of the learnable parts on its own (BMIP's key)."""
        seed = self.cfg.MODEL.INIT_SEED
        if seed is None or seed < 0:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def map_checkpoint_key(self, name, key):
        """Our checkpoints pass through; official ones are translated with official_key_map."""
        key = map_official_key(key, self.official_key_map)
        return None if key is None or key in self.official_extra_keys else key

    def model_loss(self, images, labels):
        """(logits, loss) of one training batch: cross-entropy; methods with more loss terms override."""
        logits = self.model(images).float()
        return logits, F.cross_entropy(logits, labels)

    def parse_batch_train(self, batch):
        """The tensors model_loss() takes, labels second (an objective may take more, e.g. a second view)."""
        return self.parse_batch(batch)

    def forward_backward(self, batch):
        inputs = self.parse_batch_train(batch)
        labels = inputs[1]
        with self.precision.autocast():
            logits, loss = self.train_forward(*inputs)  # model_loss, through DDP under torchrun
        self.check_finite(loss)
        self.precision.backward_and_step(loss, self._optims[self.checkpoint_name])
        acc = (logits.argmax(dim=1) == labels).float().mean().item() * 100.0
        return {"loss": loss.item(), "acc": acc}

    def inference_state(self):
        with self.precision.autocast():
            return self.model.class_state()

    def model_inference(self, images, state):
        with self.precision.autocast():
            return self.model.logits(images, state)
