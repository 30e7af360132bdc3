"""Zero-shot CLIP with CoOp's hand-written template per dataset (ZeroshotCLIP), or an ensemble of
templates (ZeroshotCLIP2, as CoOp's zsclip.py). Nothing trains; run it with --eval-only."""
import torch
import torch.nn.functional as F

from vlprompt.clip.text_prompt import clean_classname
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import CLIPPromptTrainer, PromptedCLIP

# CoOp's per-dataset templates (keyed by DATASET.NAME).
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."
# The 7 ImageNet templates CoOp's ZeroshotCLIP2 ensembles (plus the dataset's own template).
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


@register_config_extension
def add_zsclip_config(cfg):
    cfg.TRAINER.ZSCLIP = CfgNode()
    cfg.TRAINER.ZSCLIP.PREC = "fp16"


def ensemble_text_features(text_encoder, tokenizer, sentences_per_class, chunk: int = 1000) -> torch.Tensor:
    """Normalised class features [C, d]: per class, the mean of its sentences' normalised features,
    renormalised (CLIP's prompt ensembling; one sentence: its normalised feature)."""
    flat = [s for sentences in sentences_per_class for s in sentences]
    with torch.no_grad():
        feats = torch.cat([F.normalize(text_encoder.encode_tokens(tokenizer(flat[i:i + chunk])).float(), dim=-1)
                           for i in range(0, len(flat), chunk)])
    means, start = [], 0
    for sentences in sentences_per_class:
        means.append(feats[start:start + len(sentences)].mean(dim=0))
        start += len(sentences)
    return F.normalize(torch.stack(means), dim=-1)


def template_text_features(text_encoder, tokenizer, classnames, templates) -> torch.Tensor:
    """Normalised class features of hand-written templates, ensembled over the templates."""
    names = [clean_classname(c) for c in classnames]
    return ensemble_text_features(text_encoder, tokenizer, [[t.format(n) for t in templates] for n in names])


class ZeroshotModel(PromptedCLIP):
    """Fixed class text features from templates."""

    def __init__(self, clip_model, tokenizer, classnames, templates):
        super().__init__(clip_model)
        text = template_text_features(self.text_encoder, tokenizer, classnames, templates)
        self.register_buffer("text_features", text, persistent=False)

    def class_state(self):
        return {"text": self.text_features}

    def logits(self, images, state):
        return self.similarity(self.image_encoder(images), state["text"])


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(CLIPPromptTrainer):
    config_key = "ZSCLIP"
    learnable_name = None

    def templates(self):
        return [CUSTOM_TEMPLATES.get(self.cfg.DATASET.NAME, DEFAULT_TEMPLATE)]

    def build_clip_model(self, clip_model, classnames):
        templates = self.templates()
        print(f"Prompt templates: {templates}")
        return ZeroshotModel(clip_model, self.tokenizer, classnames, templates)

    def train(self):
        raise RuntimeError(f"{self.cfg.TRAINER.NAME} has nothing to train: run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Template ensemble: CoOp's 7 selected ImageNet templates, plus the dataset's own one (not for ImageNet)."""

    def templates(self):
        if self.cfg.DATASET.NAME == "ImageNet":
            return list(IMAGENET_TEMPLATES_SELECT)
        return IMAGENET_TEMPLATES_SELECT + super().templates()
