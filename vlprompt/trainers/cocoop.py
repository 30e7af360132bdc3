"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a meta-net of the image feature.

Parameters: prompt_learner.ctx [n, d_t] and prompt_learner.meta_net (linear1 -> relu -> linear2,
embed_dim -> embed_dim // 16 -> d_t), as the official code names them. The meta-net reads the normalised
image feature of the frozen CLIP; ctx_i = ctx + meta_net(f_i); every image gets its own text features,
so only the frozen prompt pieces can be shared across an evaluation, not the class embeddings.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.text_prompt import ClassPromptTemplate
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import CLIPPromptTrainer, PromptedCLIP
from .coop import coop_context


@register_config_extension
def add_cocoop_config(cfg):
    cfg.TRAINER.COCOOP = CfgNode()
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, amp, bf16


class CoCoOpPromptLearner(nn.Module):
    def __init__(self, text_encoder, tokenizer, classnames, n_ctx, ctx_init, vis_dim):
        super().__init__()
        prefix, ctx = coop_context(text_encoder, tokenizer, n_ctx, ctx_init)
        self.ctx = nn.Parameter(ctx)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, text_encoder.width)),
        ]))
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, ctx.shape[-2], prefix)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context [B, n, d_t] from normalised image features [B, embed_dim]."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)


class CoCoOpModel(PromptedCLIP):
    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = CoCoOpPromptLearner(self.text_encoder, tokenizer, classnames, c.N_CTX, c.CTX_INIT,
                                                  self.image_encoder.output_dim)

    def class_state(self):
        return {}  # the class embeddings depend on the image

    def logits(self, images, state):
        image_features = F.normalize(self.image_encoder(images).float(), dim=-1)
        contexts = self.prompt_learner(image_features)
        template = self.prompt_learner.template
        text = torch.stack([self.text_encoder(template.assemble(ctx), template.eot_index) for ctx in contexts])
        return self.similarity(image_features, text)


@TRAINER_REGISTRY.register()
class CoCoOp(CLIPPromptTrainer):
    config_key = "COCOOP"

    def build_clip_model(self, clip_model, classnames):
        return CoCoOpModel(clip_model, self.tokenizer, classnames, self.method_cfg)
