"""BMIP (Lv et al., IJCAI 2025): bi-directional modality interaction prompts.

Both towers have their own deep prompts; at each deep layer a tower's prompt becomes a learned, attention-
driven mix of its own ("local") prompt and the other tower's prompt projected into its width ("foreign"):
    prompt_j = w_j * local_j + (1 - w_j) * foreign_j,   w_j = sigmoid(Linear(1, 1)(a_j))
with a_j the attention the current block gives to prompt position j. As the official code computes it:

- Layer 0: text context `ctx_t`; vision prompt `proj_t(ctx_t)` (MaPLe-style coupling).
- Vision layers i = 1..J-1 (k = i-1): local `compound_prompts_visual[k]`, foreign
  `single_layer_t(compound_prompts_text[k])`. a_j: block i's attention on its current input (the previous
  block's output, prompt positions included), averaged over heads, over the images of the batch and over the
  rows of the non-prompt tokens (CLS + patches), at column j; detached. Weights `vision_mix[k]`.
- Text layers i = 1..J-2 only (the official condition stops one layer before the vision side): local
  `compound_prompts_text[k]`, foreign `single_layer_v(compound_prompts_visual[k])`. a_j: attention ROW 0 (SOS)
  at column j+1, averaged over classes. Under the causal mask row 0 attends only to itself, so a_j = 0 and
  w = sigmoid(bias of `text_mix[k]`): the official behaviour, kept by default.

Options (TRAINER.BMIP): TEXT_SCORE "row0" (official) | "later_tokens" (the paper's reading: the attention the
tokens after the prompt pay to it); VISION_SCORE "batch_mean" (official: predictions then depend slightly on
the test batch) | "per_sample"; CONNECT_METHOD "None" (BMIP) or the paper's Table 5 ablations "add", "atten",
"joint" (see docs/methods.md). SHARE.SHARE_PARAMETER_VISUAL/TEXT False gives per-layer projections.

Only the attention scores of the prompt columns are computed (rows needed for the softmax, no values), not a
second full attention pass. The text side does not depend on the image and is computed once per evaluation;
the vision mix depends on the batch (batch mean) and is computed per batch.
"""
import copy
import math

import torch
from torch import nn

from vlprompt.clip import attention_probs, replace_text_prompts, replace_vision_prompts
from vlprompt.clip.text_prompt import ClassPromptTemplate, clean_classname, init_context
from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .base import check_depth, map_official_key, prompt_vectors
from .compose import STRUCTURE_REGISTRY, ComposedTrainer, PromptStructure

CONNECT_METHODS = ("None", "add", "atten", "joint")
TEXT_SCORES = ("row0", "later_tokens")
VISION_SCORES = ("batch_mean", "per_sample")


@register_config_extension
def add_bmip_config(cfg):
    cfg.TRAINER.BMIP = CfgNode()
    cfg.TRAINER.BMIP.N_CTX = 2
    cfg.TRAINER.BMIP.CTX_INIT = "a photo of a"
    cfg.TRAINER.BMIP.PREC = "fp16"
    cfg.TRAINER.BMIP.PROMPT_DEPTH = 9  # J >= 1
    cfg.TRAINER.BMIP.CONNECT_METHOD = "None"  # None (BMIP) | add | atten | joint (ablations)
    cfg.TRAINER.BMIP.WEIGHT_THRESHOLD = 0.0025  # official key, unused by the official BMIP as well
    cfg.TRAINER.BMIP.TEXT_SCORE = "row0"  # row0 (official) | later_tokens (paper)
    cfg.TRAINER.BMIP.VISION_SCORE = "batch_mean"  # batch_mean (official) | per_sample
    cfg.SHARE = CfgNode()  # official top-level node
    cfg.SHARE.SHARE_PARAMETER_VISUAL = True  # one single_layer_v for all layers (else one per layer)
    cfg.SHARE.SHARE_PARAMETER_TEXT = True  # one single_layer_t for all layers (else one per layer)
    cfg.TEST.NO_TEST_EARLY = False  # official key; True skipped validation (and so model-best) officially


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{value}'")
    return value


def _clones(layer: nn.Module, count: int) -> nn.ModuleList:
    """Copies of one initial layer, as the official _get_clones."""
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(count))


def similarity_attention(foreign: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The official BITP 'atten' aggregation: local + softmax(foreign @ local^T) @ foreign."""
    weights = torch.softmax(foreign @ local.transpose(-2, -1), dim=-1)
    return local + weights @ foreign


class BMIPPromptLearner(nn.Module):
    def __init__(self, text_encoder, image_encoder, tokenizer, classnames, c, share_visual, share_text):
        super().__init__()
        # "None" on a command line reaches the config as Python None
        connect = "None" if c.CONNECT_METHOD is None else c.CONNECT_METHOD
        self.connect = _choice("TRAINER.BMIP.CONNECT_METHOD", connect, CONNECT_METHODS)
        self.text_score = _choice("TRAINER.BMIP.TEXT_SCORE", c.TEXT_SCORE, TEXT_SCORES)
        self.vision_score = _choice("TRAINER.BMIP.VISION_SCORE", c.VISION_SCORE, VISION_SCORES)
        depth = check_depth("PROMPT_DEPTH", c.PROMPT_DEPTH, min(text_encoder.num_layers, image_encoder.num_layers),
                            minimum=1)
        n, d_t, d_v = c.N_CTX, text_encoder.width, image_encoder.width
        self.depth, self.n_ctx = depth, n
        # joint concatenates both prompts: 2n positions per deep layer (official: CTX_INIT only if 2n <= 4)
        slots = 2 * n if self.connect == "joint" else n
        use_init = bool(c.CTX_INIT) and slots <= 4
        prefix = clean_classname(c.CTX_INIT) if use_init else " ".join(["X"] * slots)
        if len(tokenizer.encode(prefix)) < slots:
            raise ValueError(f"CTX_INIT '{prefix}' has fewer than the {slots} tokens the prompts replace")
        print(f'BMIP: initial context "{prefix}", {n} context tokens, depth {depth}, aggregation {self.connect}')
        self.ctx_t = nn.Parameter(init_context(text_encoder, tokenizer, n, prefix if use_init else ""))
        self.proj_t = nn.Linear(d_t, d_v)
        deep = depth - 1
        if share_visual:  # official: every layer starts from the same N(0, 0.02) draw
            first = torch.empty(n, d_v)
            nn.init.normal_(first, std=0.02)
            self.compound_prompts_visual = nn.ParameterList(nn.Parameter(first.clone()) for _ in range(deep))
            self.single_layer_v = nn.Linear(d_v, d_t)
        else:  # official: uniform init as VPT's (patch size 16 in the official formula)
            bound = math.sqrt(6.0 / (3 * 16 + d_v))
            self.compound_prompts_visual = nn.ParameterList(
                nn.Parameter(torch.empty(n, d_v).uniform_(-bound, bound)) for _ in range(deep))
            self.compound_prompt_projections_v = _clones(nn.Linear(d_v, d_t), deep)
        self.compound_prompts_text = prompt_vectors(deep, n, d_t)
        if share_text:
            self.single_layer_t = nn.Linear(d_t, d_v)
        else:
            self.compound_prompt_projections_t = _clones(nn.Linear(d_t, d_v), deep)
        if self.connect == "None":
            # the per-block Linear(1, 1) weights that are used: vision layers 1..J-1, text layers 1..J-2
            self.vision_mix = nn.ModuleList(nn.Linear(1, 1) for _ in range(deep))
            self.text_mix = nn.ModuleList(nn.Linear(1, 1) for _ in range(max(depth - 2, 0)))
        else:
            # the ablations (official BITP) also aggregate the layer-0 vision prompt with a vision context
            self.ctx_v = nn.Parameter(torch.empty(n, d_v).normal_(std=0.02))
        self.share_visual, self.share_text = share_visual, share_text
        self.template = ClassPromptTemplate(text_encoder, tokenizer, classnames, n, prefix)

    def foreign_vision(self, k):
        """Text prompt k projected into the vision width."""
        proj = self.single_layer_t if self.share_text else self.compound_prompt_projections_t[k]
        return proj(self.compound_prompts_text[k])

    def foreign_text(self, k):
        """Vision prompt k projected into the text width."""
        proj = self.single_layer_v if self.share_visual else self.compound_prompt_projections_v[k]
        return proj(self.compound_prompts_visual[k])

    def aggregate(self, local, foreign, weights=None):
        """One deep layer's prompt from its local and foreign prompts ([n, d]); weights [..., n] for BMIP."""
        if self.connect == "None":
            w = weights.unsqueeze(-1)
            return w * local + (1 - w) * foreign
        if self.connect == "add":
            return local + foreign
        if self.connect == "atten":
            return similarity_attention(foreign, local)
        return torch.cat([foreign, local], dim=0)  # joint: foreign first, as the official stack().view()

    def first_vision_prompt(self):
        coupled = self.proj_t(self.ctx_t)
        return coupled if self.connect == "None" else self.aggregate(self.ctx_v, coupled)

    @staticmethod
    def mix_weights(linear: nn.Linear, scores: torch.Tensor) -> torch.Tensor:
        """w = sigmoid(Linear(1, 1)(score)) for every score."""
        return torch.sigmoid(linear(scores.unsqueeze(-1)).squeeze(-1))


# Official entries that never reach the logits (ctx_v, proj_v, the exchange layers, token buffers).
_UNUSED_OFFICIAL = ("ctx_v", "proj_v.", "exchange_layer_v.", "exchange_layer_t.", "compound_exchange_v.",
                    "compound_exchange_t.", "token_prefix", "token_suffix")


@STRUCTURE_REGISTRY.register(name="BMIP")
class BMIPModel(PromptStructure):
    """The BMIP prompt structure (attention-weighted bi-directional mixing of the two towers' prompts)."""

    config_key = "BMIP"

    def __init__(self, clip_model, tokenizer, classnames, c, share_visual=True, share_text=True):
        super().__init__(clip_model)
        self.prompt_learner = BMIPPromptLearner(self.text_encoder, self.image_encoder, tokenizer, classnames, c,
                                                share_visual, share_text)

    @classmethod
    def from_config(cls, clip_model, tokenizer, classnames, node, cfg):
        share = cfg.SHARE
        return cls(clip_model, tokenizer, classnames, node, share.SHARE_PARAMETER_VISUAL, share.SHARE_PARAMETER_TEXT)

    @staticmethod
    def official_key(key, node):
        """Official whole-model keys -> ours. The per-block Linear(1, 1) weights live in CLIP's blocks there;
        only the used ones (vision blocks 1..J-1, text blocks 1..J-2) are kept."""
        depth = node.PROMPT_DEPTH
        parts = key.split(".")
        if key.startswith("prompt_learner."):
            rest = key[len("prompt_learner."):]
            return None if rest.startswith(_UNUSED_OFFICIAL) else rest
        for tower, linear, last in (("image_encoder", "learnable_linear1", depth - 1),
                                    ("text_encoder", "learnable_linear2", depth - 2)):
            if key.startswith(f"{tower}.transformer.resblocks.") and parts[-2] == linear:
                block = int(parts[3])
                mix = "vision_mix" if tower == "image_encoder" else "text_mix"
                return f"{mix}.{block - 1}.{parts[-1]}" if 1 <= block <= last else None
        return map_official_key(key, ())

    def text_hook(self, layer, x, block):
        pl = self.prompt_learner
        if not 1 <= layer <= pl.depth - 2:  # official: text prompts stop at layer J-2
            return None
        k = layer - 1
        local, foreign = pl.compound_prompts_text[k], pl.foreign_text(k)
        weights = None
        if pl.connect == "None":
            n = pl.n_ctx
            rows = slice(0, 1) if pl.text_score == "row0" else slice(1 + n, x.shape[1])
            mask = self.text_encoder.attn_mask[:x.shape[1], :x.shape[1]]
            scores = attention_probs(block, x, rows, slice(1, 1 + n), mask).detach()  # [C, rows, n]
            weights = pl.mix_weights(pl.text_mix[k], scores.float().mean(dim=(0, 1)))
        return replace_text_prompts(x, pl.aggregate(local, foreign, weights))

    def vision_hook(self, state):
        pl = self.prompt_learner

        def hook(layer, x, block):
            if not 1 <= layer <= pl.depth - 1:
                return None
            k = layer - 1
            local, foreign = pl.compound_prompts_visual[k], state["vision_foreign"][k]
            weights = None
            if pl.connect == "None":
                n = local.shape[0]
                length = x.shape[1]
                scores = attention_probs(block, x, slice(0, length - n), slice(length - n, length)).detach()
                scores = scores.float().mean(dim=1)  # over the rows of CLS + patches: [B, n]
                if pl.vision_score == "batch_mean":
                    scores = scores.mean(dim=0)  # over the images of the batch, as officially
                weights = pl.mix_weights(pl.vision_mix[k], scores)
            return replace_vision_prompts(x, pl.aggregate(local, foreign, weights))

        return hook

    def class_state(self):
        pl = self.prompt_learner
        embeddings = pl.template.assemble(pl.ctx_t)
        if pl.connect == "None" and (pl.text_score == "later_tokens" or not self.text_encoder.causal):
            # the scores depend on the hidden state: the hook reads them over the whole batch
            text = self.text_encoder(embeddings, pl.template.eot_index, hook=self.text_hook)
        else:
            # Official row 0 under the causal mask: SOS attends only to itself, so every prompt column scores
            # exactly 0 (text_hook computes the same) and the text prompts do not depend on the hidden state:
            # plain deep prompts, which lets the text tower run its truncated, length-grouped path.
            scores = embeddings.new_zeros(pl.n_ctx, dtype=torch.float)
            deep = [None] + [pl.aggregate(pl.compound_prompts_text[k], pl.foreign_text(k),
                                          pl.mix_weights(pl.text_mix[k], scores) if pl.connect == "None" else None)
                             for k in range(max(pl.depth - 2, 0))]  # text layers 1..J-2, as text_hook
            text = self.text_encoder(embeddings, pl.template.eot_index, deep_prompts=deep)
        vision_foreign = [pl.foreign_vision(k) for k in range(pl.depth - 1)]
        return {"text": text, "vision_first": pl.first_vision_prompt(), "vision_foreign": vision_foreign}

    def encode_image(self, images, state):
        return self.image_encoder(images, prompts=state["vision_first"], hook=self.vision_hook(state))


@TRAINER_REGISTRY.register()
class BMIP(ComposedTrainer):
    """BMIP's structure under cross-entropy."""

    structure = "BMIP"
    config_key = "BMIP"
    checkpoint_name = "MultiModalPromptLearner"
