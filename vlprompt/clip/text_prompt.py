"""The class-name prompt every text-prompting method starts from: "{prefix} {classname}." per class, whose
token positions 1..n (right after SOS) take the learnable context."""
import torch
from torch import nn


def clean_classname(name: str) -> str:
    return name.replace("_", " ")


class ClassPromptTemplate(nn.Module):
    """Tokenized prompts for all classes and the frozen embeddings around the context slots.

    prefix: the words the n context positions hold before learning (CTX_INIT, or n copies of "X").
    Only positions 1..n are replaced by learnable vectors; words of the prefix past n stay fixed text
    (MaPLe/BMIP/HiCroPL with N_CTX 2 and "a photo of a": "of a" stays, as in the official code).
    The embeddings are stored only up to the longest EOT: positions after it never reach a text feature.
    """

    def __init__(self, text_encoder, tokenizer, classnames, n_ctx: int, prefix: str):
        super().__init__()
        names = [clean_classname(c) for c in classnames]
        self.n_ctx = n_ctx
        self.prefix = prefix
        self.classnames = names
        tokens = tokenizer([f"{prefix} {name}." for name in names])
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        if n_ctx + 2 > length:
            raise ValueError(f"N_CTX {n_ctx} does not fit the prompt '{prefix} <class>.'")
        with torch.no_grad():
            embedding = text_encoder.embed(tokens[:, :length])
        self.register_buffer("token_ids", tokens[:, :length], persistent=False)
        self.register_buffer("eot_index", eot, persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:].clone(), persistent=False)  # class, ., EOT
        # Class-name token counts, for CoOp's 'middle' and 'front' class-token positions.
        self.name_lens = [len(tokenizer.encode(name)) for name in names]

    @property
    def num_classes(self) -> int:
        return self.token_prefix.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """[SOS, ctx, class tokens...] for every class. ctx: [n, d] shared or [n_cls, n, d] per class."""
        prefix, suffix = self.token_prefix, self.token_suffix
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)


def init_context(text_encoder, tokenizer, n_ctx: int, ctx_init: str, shape_prefix=()) -> torch.Tensor:
    """Context vectors [*shape_prefix, n, d]: the token embeddings of the first n tokens of ctx_init,
    else N(0, 0.02) as the official code draws them."""
    if ctx_init:
        tokens = tokenizer([clean_classname(ctx_init)])
        with torch.no_grad():
            embedding = text_encoder.embed(tokens)
        return embedding[0, 1:1 + n_ctx].float().clone()
    ctx = torch.empty(*shape_prefix, n_ctx, text_encoder.width)
    nn.init.normal_(ctx, std=0.02)
    return ctx


def deep_prompt_context(text_encoder, tokenizer, n_ctx: int, ctx_init: str):
    """(prompt prefix, context [n, d_t]) by the rule of MaPLe, IVLP, BMIP and HiCroPL: CTX_INIT initialises
    the n vectors only when n <= 4 (its first n tokens; the remaining words stay in the prompt as fixed
    text); otherwise N(0, 0.02) vectors behind "X X ... X"."""
    if ctx_init and n_ctx <= 4:
        prefix = clean_classname(ctx_init)
        return prefix, init_context(text_encoder, tokenizer, n_ctx, prefix)
    return " ".join(["X"] * n_ctx), init_context(text_encoder, tokenizer, n_ctx, "")
