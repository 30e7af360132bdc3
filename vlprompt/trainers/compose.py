"""Methods compose: a prompt STRUCTURE (how each layer's prompts are made) trained under an OBJECTIVE (the loss,
and what it needs beyond the structure).

- A structure is a PromptStructure (a PromptedCLIP) registered in STRUCTURE_REGISTRY (IVLP, MaPLe, BMIP,
  HiCroPL). It reads its own node cfg.TRAINER.<config_key>, makes the text features (class_state()["text"]) and
  the prompted image features (encode_image(images, state)), and knows the official checkpoint keys of its
  parameters.
- An objective is registered in OBJECTIVE_REGISTRY (CE here; PromptSRC, CoPrompt in their files). It is built
  on a structure's model, may add buffers (frozen targets) and trainable heads to it, and computes the loss, the
  class state and the logits. Its teachers are the frozen towers of the same CLIP run without prompts: there is
  never a second copy of CLIP.
- A trainer is a named pair (ComposedTrainer subclass): `IVLP`, `MaPLe`, `BMIP` are (structure, CE);
  `PromptSRC` and `CoPrompt` take their structure from TRAINER.<NODE>.FOUNDATION; `PromptSRC_BMIP` and
  `CoPrompt_BMIP` are those with FOUNDATION BMIP. A new structure or objective is one registered class.

When the trainer's own node is not the structure's (PromptSRC over MaPLe, ...), the structure's node is copied
and its prompt sizes (context length, depth, CTX_INIT) are set from the trainer's node; its other keys (BMIP's
TEXT_SCORE, VISION_SCORE, SHARE.*, ...) keep their meaning and values.
"""
import re

import torch.nn.functional as F

from vlprompt.utils.registry import Registry

from .base import CLIPPromptTrainer, PromptedCLIP, map_official_key

STRUCTURE_REGISTRY = Registry("prompt structure")
OBJECTIVE_REGISTRY = Registry("objective")


class PromptSizes:
    """The prompt sizes a trainer's node gives a structure it does not own: context tokens and depth per tower
    (a single-depth structure such as MaPLe or BMIP reads n_text and depth), and CTX_INIT."""

    def __init__(self, n_text, n_vision, depth_text, depth_vision, depth, ctx_init):
        self.n_text, self.n_vision = n_text, n_vision
        self.depth_text, self.depth_vision, self.depth = depth_text, depth_vision, depth
        self.ctx_init = ctx_init


class PromptStructure(PromptedCLIP):
    """The base of a registered structure. Its defaults fit a structure built from its node alone with one context
    length and one depth (MaPLe); others override them."""

    config_key = ""
    official_key_map = ()  # (regex, replacement) pairs for official whole-model checkpoint keys

    @classmethod
    def from_config(cls, clip_model, tokenizer, classnames, node, cfg):
        return cls(clip_model, tokenizer, classnames, node)

    @staticmethod
    def apply_sizes(node, sizes):
        """Set the node's prompt sizes from another trainer's node (PromptSizes)."""
        node.N_CTX, node.PROMPT_DEPTH, node.CTX_INIT = sizes.n_text, sizes.depth, sizes.ctx_init

    @classmethod
    def official_key(cls, key, node):
        return map_official_key(key, cls.official_key_map)


class Objective:
    """Cross-entropy on the structure's logits; the base of every objective.

    Hooks (all optional to override): attach() adds what the objective needs to the model; parse_batch() picks
    the batch tensors the loss takes; loss() gives (logits, loss); class_state()/logits() are what evaluation
    computes; after_epoch() runs after each training epoch; extra_state()/load_extra_state() travel in resume
    points. official_dropped_keys: patterns of official checkpoint keys that hold the objective's frozen
    teachers."""

    official_dropped_keys = ()

    def __init__(self, trainer):
        self.trainer, self.cfg = trainer, trainer.cfg

    def attach(self, model, classnames):
        """Add what the objective needs to a model built for `classnames` (called for every build: the trained
        model, and the models vlprompt.predict builds for other class lists)."""

    def parse_batch(self, batch):
        return self.trainer.parse_batch(batch)

    def class_state(self, model):
        return model.class_state()

    def logits(self, model, images, state):
        return model.logits(images, state)

    def loss(self, model, images, labels):
        logits = self.logits(model, images, self.class_state(model)).float()
        return logits, F.cross_entropy(logits, labels)

    def after_epoch(self, epoch):
        pass

    def extra_state(self):
        return None

    def load_extra_state(self, state):
        pass


OBJECTIVE_REGISTRY.register(Objective, name="CE")


class ComposedTrainer(CLIPPromptTrainer):
    """A trainer that is a (structure, objective) pair. Subclasses set `structure` (a STRUCTURE_REGISTRY name)
    or `foundation_key` (the key of their node that names it), `objective`, `config_key`, `checkpoint_name`, and,
    when their node is not the structure's, prompt_sizes()."""

    structure = ""
    foundation_key = ""
    objective = "CE"
    official_dropped_keys = ()  # patterns of official checkpoint keys that hold nothing this trainer trains

    @property
    def structure_class(self):
        name = self.method_cfg[self.foundation_key] if self.foundation_key else self.structure
        if name not in STRUCTURE_REGISTRY:
            key = f"TRAINER.{self.config_key}.{self.foundation_key}" if self.foundation_key else "the structure"
            raise ValueError(f"{key} is '{name}'; choose one of {', '.join(STRUCTURE_REGISTRY.names())}")
        return STRUCTURE_REGISTRY.get(name)

    def prompt_sizes(self) -> PromptSizes:
        raise NotImplementedError(f"{type(self).__name__} runs only on its own structure's keys")

    def structure_cfg(self):
        """The node the structure is built from: its own, or a copy with the trainer's prompt sizes."""
        structure = self.structure_class
        if structure.config_key == self.config_key:
            return self.method_cfg
        node = self.cfg.TRAINER[structure.config_key].clone()
        node.defrost()
        structure.apply_sizes(node, self.prompt_sizes())
        node.PREC = self.method_cfg.PREC
        node.freeze()
        return node

    def build_clip_model(self, clip_model, classnames):
        if getattr(self, "structure_node", None) is None:
            self.structure_node = self.structure_cfg()
        model = self.structure_class.from_config(clip_model, self.tokenizer, classnames, self.structure_node,
                                                 self.cfg)
        if getattr(self, "objective_impl", None) is None:  # one objective per run: it holds training state (GPA)
            self.objective_impl = OBJECTIVE_REGISTRY.get(self.objective)(self)
        self.objective_impl.attach(model, classnames)
        return model

    def map_checkpoint_key(self, name, key):
        """Ours pass through; official whole-model keys go through the structure's map, after the trainer's and
        the objective's entries that hold nothing we train (teachers, unused duplicates) are dropped."""
        for pattern in self.official_dropped_keys + self.objective_impl.official_dropped_keys:
            if re.fullmatch(pattern, key):
                return None
        key = self.structure_class.official_key(key, self.structure_node)
        return None if key is None or key in self.official_extra_keys else key

    def parse_batch_train(self, batch):
        return self.objective_impl.parse_batch(batch)

    def model_loss(self, *inputs):
        return self.objective_impl.loss(self.model, *inputs)

    def inference_state(self):
        with self.precision.autocast():
            return self.objective_impl.class_state(self.model)

    def model_inference(self, images, state):
        with self.precision.autocast():
            return self.objective_impl.logits(self.model, images, state)

    def after_epoch(self):
        self.objective_impl.after_epoch(self.epoch)
        super().after_epoch()

    def checkpoint_extras(self):
        return self.objective_impl.extra_state()

    def load_checkpoint_extras(self, state):
        self.objective_impl.load_extra_state(state)

