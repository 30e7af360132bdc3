"""HiCroPL (Zheng et al., ICCV 2025): hierarchical cross-modal prompt learning.

Both towers carry their own prompts at every layer 0..J-1 (J = PROMPT_DEPTH), and knowledge flows between them
through a knowledge mapper, in a direction that depends on depth (k = CROSS_LAYER):
- layers 0..k-1, text -> vision: a layer-specific knowledge proxy (LKP) compresses each text layer's n prompts
  into one token; the vision prompts of ALL layers 0..k-1 (k*n tokens) attend to those k proxies (mapper T->I),
  and the outputs are the vision prompts of layers 0..k-1;
- layers k..J-1, vision -> text: likewise with the vision prompts compressed and the text prompts mapped.
    LKP(q, P)     = ln_2(q + MHA(ln_1(q), ln_1(P), ln_1(P)))                              q: a learnable token
    Mapper(Q, K)  = Q' + FFN(ln_2(Q')),  Q' = W_q Q + MHA(ln_1(W_q Q), ln_1(W_k K), ln_1(W_v K))
Distillation from a frozen teacher: the final image feature is norm(norm(f) + norm(f_T)) with f_T the teacher's
image feature, the final text feature norm(norm(t) + t_T) with t_T fixed class embeddings averaged over
class descriptions; loss = CE + LAMBD * [(1 - mean cos(text, t_T)) + (1 - mean cos(image, f_T))].

MAPPER_MODE (TRAINER.HICROPL):
- "differentiable" (default, the paper's semantics): the mapper and LKPs are functions of the prompt parameters
  applied once per forward; parameters are never written in forward, and mapper, LKPs and proxies train.
- "official": the training dynamics of the official code. Before every training step the mapper outputs are
  written into the prompt parameters (no gradient), the step then trains the written values directly, and the
  mapper, LKPs and proxy tokens never receive a gradient (they keep their initial values).
In both modes an evaluation applies the mapper once to the stored parameters, without writing them: the
numbers do not depend on what ran before (officially every evaluation batch writes the parameters again), and
the first forward of an official checkpoint equals the official model's first forward.

Parameter names follow the official CrossModalPromptLearner, so its checkpoints (saved as VLPromptLearner,
the whole model) load with the frozen parts, the duplicate `ctx` and the teacher dropped.
"""
import copy

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from vlprompt.clip import PromptedImageEncoder, PromptedTextEncoder, load_clip
from vlprompt.clip.text_prompt import ClassPromptTemplate, deep_prompt_context
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import CLIPPromptTrainer, check_depth, map_official_key, prompt_vectors
from .compose import STRUCTURE_REGISTRY, PromptStructure
from .text_targets import cached_text_targets, class_sentences, find_descriptions  # noqa: F401 (find_descriptions: API)
from .zsclip import ensemble_text_features

MAPPER_MODES = ("differentiable", "official")
NUM_HEADS = 8  # of the LKPs and mappers, as officially

@register_config_extension
def add_hicropl_config(cfg):
    cfg.TRAINER.HICROPL = CfgNode()
    cfg.TRAINER.HICROPL.N_CTX = 2  # prompt tokens per layer, both towers
    cfg.TRAINER.HICROPL.CROSS_LAYER = 6  # k: text -> vision for layers < k, vision -> text for the rest
    cfg.TRAINER.HICROPL.CTX_INIT = "a photo of a"  # initialises the layer-0 text prompt when N_CTX <= 4
    cfg.TRAINER.HICROPL.PREC = "fp16"
    cfg.TRAINER.HICROPL.PROMPT_DEPTH = 9  # J >= 1
    cfg.TRAINER.HICROPL.TEACHER_NAME = "ViT-L/14"  # image teacher (official default; the configs use ViT-B/16)
    cfg.TRAINER.HICROPL.TEACHER_PATH = ""  # its weight file, as MODEL.BACKBONE.PATH
    cfg.TRAINER.HICROPL.LAMBD = 10.0  # weight of the distillation terms
    # Class descriptions for the fixed text embeddings: a JSON file {"class name": ["sentence", ...]} or a folder
    # of <name>_prompt.json files named as the official gpt_file/. Empty: gpt_file/ of the working folder when
    # it has this dataset's file (the official place), else an ensemble of CLIP's 80 ImageNet templates.
    cfg.TRAINER.HICROPL.DESCRIPTIONS = ""
    cfg.TRAINER.HICROPL.MAPPER_MODE = "differentiable"  # differentiable | official (see the trainer's docstring)


class KnowledgeProxy(nn.Module):
    """LKP: attention pooling of one query token over a layer's prompts (the official AttentionPooling)."""

    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, NUM_HEADS)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, query: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """query [1, d], prompts [n, d] -> [1, d]."""
        kv = self.ln_1(prompts)
        query = query + self.attn(self.ln_1(query), kv, kv, need_weights=False)[0]
        return self.ln_2(query)


class KnowledgeMapper(nn.Module):
    """Cross-attention of queries of one width onto keys of another, then an FFN (the official
    CrossPromptAttention)."""

    def __init__(self, width: int, key_width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, NUM_HEADS)
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(key_width, width)
        self.linear_v = nn.Linear(key_width, width)
        self.ln_1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential()
        self.ffn.add_module("c_fc", nn.Linear(width, 4 * width))
        self.ffn.add_module("gelu", QuickGELU())
        self.ffn.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """queries [m, width], keys [k, key_width] -> [m, width]."""
        q = self.linear_q(queries)
        q = q + self.attn(self.ln_1(q), self.ln_1(self.linear_k(keys)), self.ln_1(self.linear_v(keys)),
                          need_weights=False)[0]
        return q + self.ffn(self.ln_2(q))


def _repeated(first: torch.Tensor, count: int) -> nn.ParameterList:
    """`count` parameters starting from the same values: the official code wraps ONE tensor `count` times
    (shared storage on a CPU, separate copies once moved to a GPU); here they are independent copies."""
    return nn.ParameterList(nn.Parameter(first.clone()) for _ in range(count))


class CrossModalPromptLearner(nn.Module):
    def __init__(self, text_encoder, image_encoder, tokenizer, classnames, c):
        super().__init__()
        self.mode = c.MAPPER_MODE
        if self.mode not in MAPPER_MODES:
            raise ValueError(f"TRAINER.HICROPL.MAPPER_MODE must be one of {', '.join(MAPPER_MODES)}, "
                             f"got '{self.mode}'")
        depth = check_depth("PROMPT_DEPTH", c.PROMPT_DEPTH, min(text_encoder.num_layers, image_encoder.num_layers),
                            minimum=1)
        k = c.CROSS_LAYER
        if not 0 <= k <= depth:  # the official code needs 1..J-1; 0 and J (one direction only) work here
            raise ValueError(f"CROSS_LAYER is {k}; it must be between 0 and PROMPT_DEPTH ({depth})")
        n, d_t, d_v = c.N_CTX, text_encoder.width, image_encoder.width
        for width in (d_t, d_v):
            if width % NUM_HEADS:
                raise ValueError(f"HiCroPL's mappers use {NUM_HEADS} heads; a tower width of {width} is not divisible")
        self.depth, self.cross_layer, self.n_ctx = depth, k, n
        prefix, ctx = deep_prompt_context(text_encoder, tokenizer, n, c.CTX_INIT)
        print(f'HiCroPL: initial text context "{prefix}", {n} context tokens per layer, depth {depth}, '
              f"text -> vision for layers < {k}, vision -> text after; mapper mode {self.mode}")
        # the official creation order: prompts, mappers, LKPs, proxy tokens
        self.cross_prompts_text = nn.ParameterList([nn.Parameter(ctx), *prompt_vectors(depth - 1, n, d_t)])
        self.cross_prompts_visual = _repeated(torch.empty(n, d_v).normal_(std=0.02), depth)
        self.text2visual_net = KnowledgeMapper(d_v, d_t)
        self.visual2text_net = KnowledgeMapper(d_t, d_v)
        first_text_lkp, first_visual_lkp = KnowledgeProxy(d_t), KnowledgeProxy(d_v)
        # LKPs of one modality start as copies of one module, as the official _get_clones
        self.attn_pooling_text_nets = nn.ModuleList(copy.deepcopy(first_text_lkp) for _ in range(k))
        self.attn_pooling_visual_nets = nn.ModuleList(copy.deepcopy(first_visual_lkp) for _ in range(depth - k))
        self.text_proxy_token = _repeated(torch.randn(1, d_t), k)
        self.visual_proxy_token = _repeated(torch.randn(1, d_v), depth - k)
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, n, prefix)

    def mapped_prompts(self):
        """The mapper's outputs: (vision prompts of layers 0..k-1 [k, n, d_v] or None,
        text prompts of layers k..J-1 [J-k, n, d_t] or None)."""
        k, n = self.cross_layer, self.n_ctx
        vision = text = None
        if k > 0:  # text -> vision
            proxies = torch.cat([lkp(q, p) for lkp, q, p in
                                 zip(self.attn_pooling_text_nets, self.text_proxy_token, self.cross_prompts_text)])
            queries = torch.cat(list(self.cross_prompts_visual[:k]))
            vision = self.text2visual_net(queries, proxies).view(k, n, -1)
        if k < self.depth:  # vision -> text
            proxies = torch.cat([lkp(q, p) for lkp, q, p in
                                 zip(self.attn_pooling_visual_nets, self.visual_proxy_token, self.cross_prompts_visual[k:])])
            queries = torch.cat(list(self.cross_prompts_text[k:]))
            text = self.visual2text_net(queries, proxies).view(self.depth - k, n, -1)
        return vision, text

    def layer_prompts(self):
        """(text prompts, vision prompts) of layers 0..J-1 as the encoders use them."""
        k = self.cross_layer
        text, vision = list(self.cross_prompts_text), list(self.cross_prompts_visual)
        if self.mode == "official" and self.training:
            return text, vision  # the parameters hold the mapper outputs, written by write_mapped_prompts()
        mapped_vision, mapped_text = self.mapped_prompts()
        if mapped_vision is not None:
            vision[:k] = list(mapped_vision)
        if mapped_text is not None:
            text[k:] = list(mapped_text)
        return text, vision

    @torch.no_grad()
    def write_mapped_prompts(self):
        """Official mode, before each training step: the mapper outputs become the prompt parameters."""
        mapped_vision, mapped_text = self.mapped_prompts()
        if mapped_vision is not None:
            for p, value in zip(self.cross_prompts_visual[:self.cross_layer], mapped_vision):
                p.copy_(value)
        if mapped_text is not None:
            for p, value in zip(self.cross_prompts_text[self.cross_layer:], mapped_text):
                p.copy_(value)


def fuse(features: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """norm(norm(features) + teacher), teacher already normalised."""
    return F.normalize(F.normalize(features.float(), dim=-1) + teacher, dim=-1)


@STRUCTURE_REGISTRY.register(name="HiCroPL")
class HiCroPLPrompts(PromptStructure):
    """HiCroPL's prompt structure alone (prompts at every layer, knowledge mapper and proxies), without its
    teacher fusion and distillation: the foundation other objectives (PromptSRC, CoPrompt) can run over. Under
    another objective the mapper is differentiable (MAPPER_MODE official writes parameters from HiCroPL's own
    training step only)."""

    config_key = "HICROPL"

    def __init__(self, clip_model, tokenizer, classnames, c):
        super().__init__(clip_model)
        self.prompt_learner = CrossModalPromptLearner(self.text_encoder, self.image_encoder, tokenizer, classnames, c)

    @staticmethod
    def apply_sizes(node, sizes):
        PromptStructure.apply_sizes(node, sizes)
        node.CROSS_LAYER = min(node.CROSS_LAYER, sizes.depth)

    @staticmethod
    def official_key(key, node):
        key = map_official_key(key, HiCroPL.official_key_map)
        return None if key == "ctx" else key  # officially the same parameter as cross_prompts_text.0

    def class_state(self):
        pl = self.prompt_learner
        text, vision = pl.layer_prompts()
        features = self.text_encoder(pl.template.assemble(text[0]), pl.template.eot_index,
                                     deep_prompts=[None, *text[1:]])
        return {"text": features, "vision_first": vision[0], "vision_deep": [None, *vision[1:]]}

    def encode_image(self, images, state):
        return self.image_encoder(images, prompts=state["vision_first"], deep_prompts=state["vision_deep"])


class HiCroPLModel(HiCroPLPrompts):
    """HiCroPL's structure with its teacher fusion at training and test time and its distillation loss."""

    def __init__(self, clip_model, tokenizer, classnames, c, teacher_text, teacher_image_encoder=None):
        """teacher_text: the fixed normalised class embeddings [C, embed]; teacher_image_encoder: a frozen
        image tower of another CLIP, or None to use this CLIP's own tower without prompts."""
        super().__init__(clip_model, tokenizer, classnames, c)
        self.teacher_image_encoder = teacher_image_encoder
        self.register_buffer("teacher_text", teacher_text.float(), persistent=False)

    def class_state(self):
        state = super().class_state()
        state["text"] = fuse(state["text"], self.teacher_text)
        return state

    def teacher_image_features(self, images):
        encoder = self.teacher_image_encoder if self.teacher_image_encoder is not None else self.image_encoder
        with torch.no_grad():
            return F.normalize(encoder(images).float(), dim=-1)

    def image_features(self, images, state):
        """(fused image features, teacher image features), both normalised."""
        teacher = self.teacher_image_features(images)
        return fuse(self.encode_image(images, state), teacher), teacher

    def logits(self, images, state):
        return self.similarity(self.image_features(images, state)[0], state["text"])

    def loss(self, images, labels, lambd: float):
        """(logits, CE + lambd * distillation) of one training batch."""
        state = self.class_state()
        image, teacher_image = self.image_features(images, state)
        logits = self.similarity(image, state["text"])
        text_term = 1.0 - F.cosine_similarity(state["text"], self.teacher_text, dim=-1, eps=1e-7).mean()
        image_term = 1.0 - F.cosine_similarity(image, teacher_image, dim=-1, eps=1e-7).mean()
        return logits, F.cross_entropy(logits, labels) + lambd * (text_term + image_term)


def teacher_text_features(text_encoder, tokenizer, classnames, descriptions_file, dataset_name) -> torch.Tensor:
    """The fixed class embeddings, cached on disk per dataset, class list, sentences and text-tower weights."""
    sentences = class_sentences(classnames, descriptions_file)
    return cached_text_targets(
        "hicropl_text", dataset_name, text_encoder, {"classes": list(classnames), "sentences": sentences},
        lambda: ensemble_text_features(text_encoder, tokenizer, sentences), "HiCroPL: fixed class embeddings")


@TRAINER_REGISTRY.register()
class HiCroPL(CLIPPromptTrainer):
    """HiCroPL; the computation, MAPPER_MODE and the official differences are in this module's docstring."""

    config_key = "HICROPL"
    checkpoint_name = "VLPromptLearner"
    # the teacher (prompt_learner.ZS_image_encoder.*) stays unmatched and is dropped with the frozen CLIP
    official_key_map = ((r"prompt_learner\.(?!ZS_image_encoder\.)(.*)", r"\1"),)
    # `ctx` is the same parameter as cross_prompts_text.0 in the official state_dict
    official_extra_keys = ("token_prefix", "token_suffix", "ctx")

    def build_clip_model(self, clip_model, classnames):
        c, cfg = self.method_cfg, self.cfg
        descriptions = find_descriptions(c.DESCRIPTIONS, cfg.DATASET.NAME)
        if descriptions is None:
            print("HiCroPL: no class descriptions (TRAINER.HICROPL.DESCRIPTIONS); the fixed text embeddings are an "
                  "ensemble of CLIP's 80 ImageNet templates")
        else:
            print(f"HiCroPL: fixed text embeddings from the class descriptions in {descriptions}")
        # as officially, the fixed text embeddings come from the backbone CLIP, the image teacher from TEACHER_NAME
        text = teacher_text_features(PromptedTextEncoder(clip_model), self.tokenizer, classnames, descriptions,
                                     cfg.DATASET.NAME)
        return HiCroPLModel(clip_model, self.tokenizer, classnames, c, text, self.teacher_image_encoder(clip_model))

    def teacher_image_encoder(self, clip_model):
        """None when the teacher is the backbone itself (its frozen tower is reused), else the teacher's tower."""
        c, backbone = self.method_cfg, self.cfg.MODEL.BACKBONE
        if c.TEACHER_NAME == backbone.NAME and c.TEACHER_PATH in ("", backbone.PATH):
            print(f"HiCroPL: image teacher {c.TEACHER_NAME} is the backbone; its frozen image tower is reused")
            return None
        print(f"HiCroPL: loading the image teacher {c.TEACHER_NAME}")
        try:
            teacher = load_clip(c.TEACHER_NAME, c.TEACHER_PATH)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"TRAINER.HICROPL.TEACHER_NAME {c.TEACHER_NAME}: {e}") from e
        encoder = PromptedImageEncoder(teacher).to(self.precision.weight_dtype)
        own_dim = clip_model.visual.output_dim
        if encoder.output_dim != own_dim:
            raise ValueError(f"the teacher {c.TEACHER_NAME} has {encoder.output_dim}-d image features, the backbone "
                             f"{backbone.NAME} {own_dim}-d; they are added, so choose a teacher of the same size")
        return encoder.requires_grad_(False)

    def model_loss(self, images, labels):
        if self.model.prompt_learner.mode == "official":
            self.model.prompt_learner.write_mapped_prompts()
        return self.model.loss(images, labels, self.method_cfg.LAMBD)
