"""CoPrompt (Roy & Etemad, ICLR 2024): consistency-guided prompt learning, an objective over any prompt structure.

- Two residual adapters on the output features, part of the model at training and test time:
  v = 0.1 * A_img(v) + 0.9 * v,  t = 0.2 * A_txt(t) + 0.8 * t  (then normalised; logits as CLIP),
  A = Linear(D, D/4, bias=False) -> ReLU -> Linear(D/4, D, bias=False) -> ReLU (official names adapter_*.fc.*).
- Two augmented views of every training image (DATALOADER.K_TRANSFORMS 2): the prompted model sees the first, the
  frozen image tower WITHOUT prompts (the teacher; no second CLIP) sees the second: p_v = norm(teacher(view 2)).
- Text targets: every class's descriptions (TRAINER.CoPrompt.DESCRIPTIONS, the loader HiCroPL uses; CLIP's 80
  templates when there are none) encoded by the frozen text tower and normalised one by one, [n_desc, C, D];
  each step draws ONE description index (python's random) for all classes: p_t.
- Loss: CE + W * [(1 - mean_c cos(t_c, p_t,c)) + (1 - mean_b cos(v_b, p_v,b))] on the normalised adapted
  features (TRAINER.DISTILL "cosine"; anything else: W * [MSE(t, p_t) + MSE(v, p_v)]).
- The official per-dataset table (PROMPT_DEPTH / N_CTX / W, and 5 epochs for Food101) is applied as dataset
  defaults: after the YAMLs, before the command line's KEY VALUE options, which override it (officially it is
  merged last and cannot be overridden); datasets not in it keep the YAML's values (officially a crash). An
  --eval-only run with --model-dir takes the structure's sizes from that run's config.yaml, so a cross-dataset
  or domain-generalization evaluation rebuilds the trained structure (officially the target's table entry).

Trainers: `CoPrompt` (structure TRAINER.CoPrompt.FOUNDATION: MaPLe (official), IVLP, BMIP or HiCroPL) and
`CoPrompt_BMIP` (FOUNDATION BMIP; there is no official code: this project's reading of BMIP's Table 4, see
docs/methods.md).
"""
import os
import random

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .compose import OBJECTIVE_REGISTRY, ComposedTrainer, Objective, PromptSizes
from .text_targets import cached_text_targets, encode_sentences, load_class_sentences

# DATASET.NAME -> (PROMPT_DEPTH, N_CTX, W), the official constants.py table
DATASET_SETTINGS = {
    "ImageNet": (12, 4, 8.0),
    "Caltech101": (12, 4, 4.0),
    "OxfordPets": (12, 2, 0.1),
    "StanfordCars": (12, 4, 4.0),
    "OxfordFlowers": (9, 4, 8.0),
    "Food101": (9, 4, 0.5),
    "FGVCAircraft": (9, 4, 2.0),
    "SUN397": (12, 4, 8.0),
    "DescribableTextures": (12, 2, 8.0),
    "EuroSAT": (12, 2, 0.1),
    "UCF101": (12, 4, 2.0),
}
DATASET_EPOCHS = {"Food101": 5}
STRUCTURE_KEYS = ("N_CTX", "PROMPT_DEPTH", "CTX_INIT", "FOUNDATION")  # what a trained run's structure needs
IMAGE_ADAPTER_RATIO, TEXT_ADAPTER_RATIO = 0.1, 0.2


@register_config_extension
def add_coprompt_config(cfg):
    cfg.TRAINER.CoPrompt = CfgNode()  # the official node name, mixed case
    c = cfg.TRAINER.CoPrompt
    c.N_CTX = 2
    c.CTX_INIT = "a photo of a"
    c.PREC = "fp16"
    c.PROMPT_DEPTH = 9
    c.FOUNDATION = "MaPLe"  # the prompt structure: MaPLe (official) | IVLP | BMIP | HiCroPL
    # class descriptions, as TRAINER.HICROPL.DESCRIPTIONS: a JSON file or a folder of <dataset>_prompt.json files;
    # "": gpt_file/ of the working folder when it has this dataset's file (the official place), else CLIP's templates
    c.DESCRIPTIONS = ""
    # TRAINER.W and TRAINER.DISTILL, directly under TRAINER as officially, are in vlprompt/config/defaults.py


class Adapter(nn.Module):
    def __init__(self, width: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(width // reduction, width, bias=False), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.fc(x)


@OBJECTIVE_REGISTRY.register(name="CoPrompt")
class CoPromptObjective(Objective):
    official_dropped_keys = (r"model_distill\..*",)  # the official teacher, a whole second CLIP

    def __init__(self, trainer):
        super().__init__(trainer)
        self.weight, self.cosine = self.cfg.TRAINER.W, self.cfg.TRAINER.DISTILL == "cosine"

    def attach(self, model, classnames):
        cfg, c = self.cfg, self.trainer.method_cfg
        # the adapters train with the prompts: they live in the prompt learner (one optimizer, one checkpoint)
        embed_dim = model.image_encoder.output_dim  # the text features have it too (they are multiplied)
        model.prompt_learner.adapter_image = Adapter(embed_dim)
        model.prompt_learner.adapter_text = Adapter(embed_dim)
        sentences = load_class_sentences(c.DESCRIPTIONS, cfg.DATASET.NAME, classnames, "TRAINER.CoPrompt.DESCRIPTIONS",
                                         "CoPrompt", equal_counts=True)
        encoder, tokenizer = model.text_encoder, self.trainer.tokenizer
        targets = cached_text_targets(
            "coprompt_text", cfg.DATASET.NAME, encoder, {"classes": list(classnames), "sentences": sentences},
            lambda: F.normalize(torch.stack(encode_sentences(encoder, tokenizer, sentences), dim=1), dim=-1),
            "CoPrompt: text targets")
        model.register_buffer("description_targets", targets.float(), persistent=False)  # [n_desc, C, D]
        print(f"CoPrompt: {targets.shape[0]} descriptions per class, W {self.weight}, "
              f"{'cosine' if self.cosine else 'MSE'} consistency")

    def parse_batch(self, batch):
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError("CoPrompt trains on two augmented views of each image: set DATALOADER.K_TRANSFORMS 2 "
                             "(as configs/trainers/CoPrompt/coprompt.yaml does)")
        device = self.trainer.device
        return views[0].to(device), batch["label"].to(device), views[1].to(device)

    @staticmethod
    def adapted(features, adapter, ratio):
        features = features.float()
        return ratio * adapter(features) + (1 - ratio) * features

    def class_state(self, model):
        state = model.class_state()
        state["text"] = self.adapted(state["text"], model.prompt_learner.adapter_text, TEXT_ADAPTER_RATIO)
        return state

    def image_features(self, model, images, state):
        return self.adapted(model.encode_image(images, state), model.prompt_learner.adapter_image,
                            IMAGE_ADAPTER_RATIO)

    def logits(self, model, images, state):
        return model.similarity(self.image_features(model, images, state), state["text"])

    def terms(self, model, images, teacher_images, index):
        """(logits, text consistency, image consistency), unweighted, with description `index`."""
        state = self.class_state(model)
        text = F.normalize(state["text"], dim=-1)
        image = F.normalize(self.image_features(model, images, state), dim=-1)
        logits = model.similarity(image, text)
        with torch.no_grad():
            target_text = F.normalize(model.description_targets[index], dim=-1)
            target_image = F.normalize(model.image_encoder(teacher_images).float(), dim=-1)
        if self.cosine:
            text_term = 1 - F.cosine_similarity(text, target_text, dim=1, eps=1e-7).mean()
            image_term = 1 - F.cosine_similarity(image, target_image, dim=1, eps=1e-7).mean()
        else:
            text_term, image_term = F.mse_loss(text, target_text), F.mse_loss(image, target_image)
        return logits, text_term, image_term

    def loss(self, model, images, labels, teacher_images):
        index = random.randint(0, model.description_targets.shape[0] - 1)  # one for all classes, as officially
        logits, text_term, image_term = self.terms(model, images, teacher_images, index)
        return logits, F.cross_entropy(logits, labels) + self.weight * (text_term + image_term)


def _trained_structure(model_dir):
    """TRAINER.CoPrompt of the training run in model_dir (its config.yaml), or None."""
    path = os.path.join(model_dir, "config.yaml") if model_dir else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        trained = yaml.safe_load(f) or {}
    return (trained.get("TRAINER") or {}).get("CoPrompt")


@TRAINER_REGISTRY.register()
class CoPrompt(ComposedTrainer):
    """CoPrompt's objective over TRAINER.CoPrompt.FOUNDATION (MaPLe by default, as officially)."""

    config_key = "CoPrompt"
    checkpoint_name = "MultiModalPromptLearner"
    foundation_key = "FOUNDATION"
    objective = "CoPrompt"

    def prompt_sizes(self):
        c = self.method_cfg
        return PromptSizes(n_text=c.N_CTX, n_vision=c.N_CTX, depth_text=c.PROMPT_DEPTH, depth_vision=c.PROMPT_DEPTH,
                           depth=c.PROMPT_DEPTH, ctx_init=c.CTX_INIT)

    @classmethod
    def dataset_defaults(cls, cfg, model_dir=""):
        node = cfg.TRAINER.CoPrompt
        trained = _trained_structure(model_dir)
        if trained:
            for key in STRUCTURE_KEYS:
                if key in trained:
                    node[key] = trained[key]
            print(f"CoPrompt: the structure of the run in {model_dir} (N_CTX {node.N_CTX}, PROMPT_DEPTH "
                  f"{node.PROMPT_DEPTH}, FOUNDATION {node.FOUNDATION})")
            return
        if cfg.DATASET.NAME not in DATASET_SETTINGS:
            print(f"CoPrompt: no per-dataset settings for {cfg.DATASET.NAME}; the config's N_CTX, PROMPT_DEPTH and "
                  "W are used")
            return
        node.PROMPT_DEPTH, node.N_CTX, cfg.TRAINER.W = DATASET_SETTINGS[cfg.DATASET.NAME]
        if cfg.DATASET.NAME in DATASET_EPOCHS:
            cfg.OPTIM.MAX_EPOCH = DATASET_EPOCHS[cfg.DATASET.NAME]
        print(f"CoPrompt: {cfg.DATASET.NAME}'s settings: PROMPT_DEPTH {node.PROMPT_DEPTH}, N_CTX {node.N_CTX}, "
              f"W {cfg.TRAINER.W}" + (f", MAX_EPOCH {cfg.OPTIM.MAX_EPOCH}" if cfg.DATASET.NAME in DATASET_EPOCHS
                                      else ""))


@TRAINER_REGISTRY.register()
class CoPrompt_BMIP(CoPrompt):  # noqa: N801  (named as PromptSRC_BMIP)
    """CoPrompt's objective over BMIP's structure (FOUNDATION is ignored): this project's reading of BMIP's
    Table 4 "CoPrompt+BMIP", which has no public code. N_CTX / PROMPT_DEPTH / CTX_INIT come from
    TRAINER.CoPrompt (and its dataset table), BMIP's other keys from TRAINER.BMIP and SHARE."""

    foundation_key = ""
    structure = "BMIP"
