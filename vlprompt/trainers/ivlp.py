"""IVLP, independent vision-language prompting (Khattak et al., MaPLe paper's baseline), and language-only
deep prompting (IVLP with PROMPT_DEPTH_VISION 0, as the official language-only config).

Text: `ctx` [n_t, d_t] at the input (layer 0), then one [n_t, d_t] prompt per layer 1..PROMPT_DEPTH_TEXT-1
replacing positions 1..n_t. Vision (when PROMPT_DEPTH_VISION > 0): `visual_ctx` [n_v, d_v] appended at the
input, then one [n_v, d_v] per layer 1..PROMPT_DEPTH_VISION-1 replacing the last n_v positions. No coupling.
The official code keeps the per-layer prompts inside CLIP's blocks (`...resblocks.{i}.VPT_shallow`) and
saves the whole model as `VLPromptLearner`; those keys are mapped on load.
"""
import torch
from torch import nn

from vlprompt.clip.text_prompt import ClassPromptTemplate, deep_prompt_context
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import check_depth, layer_minus_one, prompt_vectors
from .compose import STRUCTURE_REGISTRY, ComposedTrainer, PromptStructure


@register_config_extension
def add_ivlp_config(cfg):
    cfg.TRAINER.IVLP = CfgNode()
    cfg.TRAINER.IVLP.N_CTX_VISION = 2  # context vectors of the vision branch
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2  # context vectors of the language branch
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"  # initialises the language context (when N_CTX_TEXT <= 4)
    cfg.TRAINER.IVLP.PREC = "fp16"
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9  # 0: no vision prompts; 1: input only
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9  # >= 1; 1: input only


def vision_prompts(image_encoder, n_ctx: int, depth: int):
    """(input prompts [n, d_v] or None, per-layer prompts for layers 1..depth-1), N(0, 0.02) as officially."""
    depth = check_depth("PROMPT_DEPTH_VISION", depth, image_encoder.num_layers)
    if depth > 0 and n_ctx < 1:
        raise ValueError("N_CTX_VISION must be >= 1 when PROMPT_DEPTH_VISION > 0")
    if depth == 0:
        return None, nn.ParameterList()
    first = torch.empty(n_ctx, image_encoder.width)
    nn.init.normal_(first, std=0.02)
    return nn.Parameter(first), prompt_vectors(depth - 1, n_ctx, image_encoder.width)


def encode_images(image_encoder, images, learner):
    """Image features with a learner's independent vision prompts (`visual_ctx`, `visual_prompts`)."""
    return image_encoder(images, prompts=learner.visual_ctx, deep_prompts=[None, *learner.visual_prompts])


class IVLPPromptLearner(nn.Module):
    def __init__(self, text_encoder, image_encoder, tokenizer, classnames, c):
        super().__init__()
        depth_t = check_depth("PROMPT_DEPTH_TEXT", c.PROMPT_DEPTH_TEXT, text_encoder.num_layers, minimum=1)
        prefix, ctx = deep_prompt_context(text_encoder, tokenizer, c.N_CTX_TEXT, c.CTX_INIT)
        print(f'Initial text context: "{prefix}"; {c.N_CTX_TEXT} text and {c.N_CTX_VISION} vision context tokens')
        self.ctx = nn.Parameter(ctx)
        self.visual_ctx, self.visual_prompts = vision_prompts(image_encoder, c.N_CTX_VISION, c.PROMPT_DEPTH_VISION)
        self.text_prompts = prompt_vectors(depth_t - 1, c.N_CTX_TEXT, text_encoder.width)
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, c.N_CTX_TEXT, prefix)


@STRUCTURE_REGISTRY.register(name="IVLP")
class IVLPModel(PromptStructure):
    """The IVLP prompt structure (independent deep prompts in both towers)."""

    config_key = "IVLP"
    # official whole-model keys (prompts inside the blocks, VLPromptLearner) -> ours
    official_key_map = (
        (r"prompt_learner\.ctx", "ctx"),
        (r"image_encoder\.VPT", "visual_ctx"),
        (r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", layer_minus_one("visual_prompts.{}")),
        (r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", layer_minus_one("text_prompts.{}")),
        (r"prompt_learner\.(token_prefix|token_suffix)", r"\1"),
    )

    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = IVLPPromptLearner(self.text_encoder, self.image_encoder, tokenizer, classnames, c)

    @staticmethod
    def apply_sizes(node, sizes):
        node.N_CTX_TEXT, node.N_CTX_VISION = sizes.n_text, sizes.n_vision
        node.PROMPT_DEPTH_TEXT, node.PROMPT_DEPTH_VISION = sizes.depth_text, sizes.depth_vision
        node.CTX_INIT = sizes.ctx_init

    def class_state(self):
        pl = self.prompt_learner
        text = self.text_encoder(pl.template.assemble(pl.ctx), pl.template.eot_index,
                                 deep_prompts=[None, *pl.text_prompts])
        return {"text": text}

    def encode_image(self, images, state):
        return encode_images(self.image_encoder, images, self.prompt_learner)


@TRAINER_REGISTRY.register()
class IVLP(ComposedTrainer):
    """IVLP's structure under cross-entropy."""

    structure = "IVLP"
    config_key = "IVLP"
    checkpoint_name = "VLPromptLearner"
