"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in place of the hand-written prompt prefix.

Parameters: prompt_learner.ctx, [n, d_t] (or [n_cls, n, d_t] with CSC). Official behaviours kept:
with CTX_INIT, N_CTX becomes the number of words of CTX_INIT (and CSC is ignored); CLASS_TOKEN_POSITION
end | middle | front. Learnable vectors stay in fp32 even when the frozen CLIP runs in fp16 (the official
code trains fp16 vectors).
"""
import torch
from torch import nn

from vlprompt.clip.text_prompt import ClassPromptTemplate, init_context
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import CLIPPromptTrainer, PromptedCLIP


@register_config_extension
def add_coop_config(cfg):
    cfg.TRAINER.COOP = CfgNode()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # words to initialise the context with
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp, bf16
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle, front


def coop_context(text_encoder, tokenizer, n_ctx, ctx_init="", num_classes_csc=0):
    """(prompt prefix, initial context) as CoOp/CoCoOp make them: with CTX_INIT one vector per *word* of it
    (N_CTX and CSC ignored, as officially); else N(0, 0.02) vectors, per class when num_classes_csc > 0."""
    if ctx_init:
        prefix = ctx_init.replace("_", " ")
        ctx = init_context(text_encoder, tokenizer, len(prefix.split(" ")), prefix)
    else:
        prefix = " ".join(["X"] * n_ctx)
        ctx = init_context(text_encoder, tokenizer, n_ctx, "", (num_classes_csc,) if num_classes_csc else ())
    print(f'Initial context: "{prefix}"')
    print(f"Number of context words (tokens): {ctx.shape[-2]}")
    return prefix, ctx


class CoOpPromptLearner(nn.Module):
    POSITIONS = ("end", "middle", "front")

    def __init__(self, text_encoder, tokenizer, classnames, n_ctx, ctx_init="", csc=False, position="end"):
        super().__init__()
        if position not in self.POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {self.POSITIONS}, got '{position}'")
        prefix, ctx = coop_context(text_encoder, tokenizer, n_ctx, ctx_init, len(classnames) if csc else 0)
        self.ctx = nn.Parameter(ctx)
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, ctx.shape[-2], prefix)
        self.position = position

    def forward(self) -> torch.Tensor:
        """Input embeddings [n_cls, L, d_t] of all class prompts."""
        t = self.template
        if self.position == "end":
            return t.assemble(self.ctx)
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(t.num_classes, -1, -1)
        ctx = ctx.to(t.token_prefix.dtype)
        half = t.n_ctx // 2
        prompts = []
        for i, name_len in enumerate(t.name_lens):
            class_tokens, rest = t.token_suffix[i, :name_len], t.token_suffix[i, name_len:]
            if self.position == "middle":
                parts = [t.token_prefix[i], ctx[i, :half], class_tokens, ctx[i, half:], rest]
            else:  # front
                parts = [t.token_prefix[i], class_tokens, ctx[i], rest]
            prompts.append(torch.cat(parts, dim=0))
        return torch.stack(prompts)


class CoOpModel(PromptedCLIP):
    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(self.text_encoder, tokenizer, classnames, c.N_CTX, c.CTX_INIT,
                                                c.CSC, c.CLASS_TOKEN_POSITION)

    def class_state(self):
        t = self.prompt_learner.template
        return {"text": self.text_encoder(self.prompt_learner(), t.eot_index)}

    def logits(self, images, state):
        return self.similarity(self.image_encoder(images), state["text"])


@TRAINER_REGISTRY.register()
class CoOp(CLIPPromptTrainer):
    config_key = "COOP"

    def build_clip_model(self, clip_model, classnames):
        return CoOpModel(clip_model, self.tokenizer, classnames, self.method_cfg)
