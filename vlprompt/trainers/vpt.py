"""VPT: deep vision prompts only, against fixed text features of "a photo of a {}." (as the official
multimodal-prompt-learning VPT trainer). `visual_ctx` [n_v, d_v] is appended at the input and one
[n_v, d_v] prompt per layer 1..PROMPT_DEPTH_VISION-1 replaces the last n_v positions.
The official code saves the whole model as `prompt_learner`, with the prompts inside CLIP's blocks.
"""
from torch import nn

from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import CLIPPromptTrainer, PromptedCLIP, layer_minus_one
from .ivlp import encode_images, vision_prompts
from .zsclip import template_text_features


@register_config_extension
def add_vpt_config(cfg):
    cfg.TRAINER.VPT = CfgNode()
    cfg.TRAINER.VPT.N_CTX_VISION = 2
    cfg.TRAINER.VPT.CTX_INIT = "a photo of a"  # read by the official config only; the text side is fixed
    cfg.TRAINER.VPT.PREC = "fp16"
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1  # >= 1; 1: prompts at the input only (shallow VPT)


FIXED_TEMPLATE = "a photo of a {}."


class VPTPromptLearner(nn.Module):
    def __init__(self, image_encoder, c):
        super().__init__()
        if c.PROMPT_DEPTH_VISION < 1:
            raise ValueError("VPT needs PROMPT_DEPTH_VISION >= 1")
        self.visual_ctx, self.visual_prompts = vision_prompts(image_encoder, c.N_CTX_VISION, c.PROMPT_DEPTH_VISION)


class VPTModel(PromptedCLIP):
    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = VPTPromptLearner(self.image_encoder, c)
        text = template_text_features(self.text_encoder, tokenizer, classnames, [FIXED_TEMPLATE])
        self.register_buffer("text_features", text, persistent=False)

    def class_state(self):
        return {"text": self.text_features}

    def logits(self, images, state):
        return self.similarity(encode_images(self.image_encoder, images, self.prompt_learner), state["text"])


@TRAINER_REGISTRY.register()
class VPT(CLIPPromptTrainer):
    config_key = "VPT"
    official_key_map = (
        (r"image_encoder\.VPT", "visual_ctx"),
        (r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", layer_minus_one("visual_prompts.{}")),
    )

    def build_clip_model(self, clip_model, classnames):
        return VPTModel(clip_model, self.tokenizer, classnames, self.method_cfg)
