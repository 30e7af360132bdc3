"""MaPLe (Khattak et al., CVPR 2023): text prompts coupled into the vision branch.

Parameters (official names): `ctx` [n, d_t]; `proj` Linear(d_t, d_v); `compound_prompts_text.{k}` [n, d_t]
and `compound_prompt_projections.{k}` Linear(d_t, d_v) for k = 0..J-2.
Layer 0: text context `ctx`, vision prompt `proj(ctx)`. Layer i = 1..J-1: text deep prompt
`compound_prompts_text[i-1]`, vision deep prompt `compound_prompt_projections[i-1](compound_prompts_text[i-1])`.
Official behaviours kept: the J-1 projections start as copies of ONE initial layer; CTX_INIT initialises
only when N_CTX <= 4 (with N_CTX 2 and "a photo of a", "of a" stays as fixed text).
The vision prompts depend only on the text prompts, so evaluation computes them once with the class features.
"""
import copy

from torch import nn

from vlprompt.clip.text_prompt import ClassPromptTemplate, deep_prompt_context
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import check_depth, prompt_vectors
from .compose import STRUCTURE_REGISTRY, ComposedTrainer, PromptStructure


@register_config_extension
def add_maple_config(cfg):
    cfg.TRAINER.MAPLE = CfgNode()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # J >= 1; 1 is shallow MaPLe (input prompts only)


class MultiModalPromptLearner(nn.Module):
    def __init__(self, text_encoder, image_encoder, tokenizer, classnames, c):
        super().__init__()
        depth = check_depth("PROMPT_DEPTH", c.PROMPT_DEPTH, min(text_encoder.num_layers, image_encoder.num_layers),
                            minimum=1)
        d_t, d_v = text_encoder.width, image_encoder.width
        prefix, ctx = deep_prompt_context(text_encoder, tokenizer, c.N_CTX, c.CTX_INIT)
        print(f'MaPLe: initial context "{prefix}", {c.N_CTX} context tokens, depth {depth}')
        # creation order as in the official code (ctx, proj, text prompts, projections)
        self.proj = nn.Linear(d_t, d_v)
        self.ctx = nn.Parameter(ctx)
        self.compound_prompts_text = prompt_vectors(depth - 1, c.N_CTX, d_t)
        single_layer = nn.Linear(d_t, d_v)
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(single_layer) for _ in range(depth - 1))
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, c.N_CTX, prefix)

    def forward(self):
        """(text input embeddings, text deep prompts, vision input prompts, vision deep prompts)."""
        text_deep = [None, *self.compound_prompts_text]
        vision_deep = [None] + [proj(p) for proj, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.template.assemble(self.ctx), text_deep, self.proj(self.ctx), vision_deep


@STRUCTURE_REGISTRY.register(name="MaPLe")
class MaPLeModel(PromptStructure):
    """The MaPLe prompt structure (text prompts coupled into the vision tower)."""

    config_key = "MAPLE"
    official_key_map = ((r"prompt_learner\.(.*)", r"\1"),)

    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = MultiModalPromptLearner(self.text_encoder, self.image_encoder, tokenizer, classnames, c)

    def class_state(self):
        embeddings, text_deep, vision_first, vision_deep = self.prompt_learner()
        text = self.text_encoder(embeddings, self.prompt_learner.template.eot_index, deep_prompts=text_deep)
        return {"text": text, "vision_first": vision_first, "vision_deep": vision_deep}

    def encode_image(self, images, state):
        return self.image_encoder(images, prompts=state["vision_first"], deep_prompts=state["vision_deep"])


@TRAINER_REGISTRY.register()
class MaPLe(ComposedTrainer):
    """MaPLe's structure under cross-entropy."""

    structure = "MaPLe"
    config_key = "MAPLE"
    checkpoint_name = "MultiModalPromptLearner"
