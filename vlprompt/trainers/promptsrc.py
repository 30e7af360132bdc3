"""PromptSRC (Khattak et al., ICCV 2023): self-regulating prompts, an objective over any prompt structure.

Loss of one step (C classes, B images), with f the normalised prompted features and z the prompted logits:
    CE(z, y) + TEXT_LOSS_WEIGHT * mean|f_t - g_t| + IMAGE_LOSS_WEIGHT * mean|f_i - g_i|
             + sum softmax(z0) * (log_softmax(z0) - log_softmax(z)) / (B * C)
- g_t: per class, the mean of the frozen CLIP's UNNORMALISED text features over a template set (PromptSRC's 60
  templates: the first 60 of CLIP's 80 ImageNet templates), normalised in the loss; computed once and cached.
- g_i: the frozen image tower WITHOUT prompts on the same augmented image, normalised.
- z0 = logit_scale.exp() * g_i @ g_t^T, the frozen CLIP's logits (no gradient). The KL is divided by B*C, as
  officially (F.kl_div with reduction "sum" over the number of logits).
The frozen CLIP is loaded once: the unprompted towers of the same model are the teacher (the official code
holds three CLIPs).

Gaussian prompt aggregation (GPA): epoch e (1..MAX_EPOCH) gets the weight N(e; GPA_MEAN, GPA_STD), normalised
to sum 1; after each epoch the running sum += w_e * (learned parameters); after the last epoch the model takes
the sum, so the last-epoch checkpoint and the final evaluation use the aggregated weights (evaluations before
that, e.g. per-epoch validation, use the current ones, as officially). Here only the learned parameters are
aggregated, in fp32 (officially the whole state dict, frozen CLIP included, in fp16), and the running sum is
kept in resume points, so --resume reproduces an uninterrupted run (officially it is lost).

Trainers: `PromptSRC` (structure TRAINER.PROMPTSRC.FOUNDATION: IVLP (official), MaPLe, BMIP or HiCroPL) and
`PromptSRC_BMIP` (the BMIP repository's trainer: BMIP's structure, CLIP's 80 templates).
"""
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from vlprompt.config import CfgNode, register_config_extension
from vlprompt.engine.trainer import TRAINER_REGISTRY

from .compose import OBJECTIVE_REGISTRY, ComposedTrainer, Objective, PromptSizes
from .text_targets import cached_text_targets, encode_sentences

# PromptSRC's 60 templates are the first 60 of CLIP's 80 (in another order; the mean does not depend on it).
TEMPLATE_SETS = {"promptsrc60": OPENAI_IMAGENET_TEMPLATES[:60], "clip80": OPENAI_IMAGENET_TEMPLATES}


@register_config_extension
def add_promptsrc_config(cfg):
    cfg.TRAINER.PROMPTSRC = CfgNode()
    c = cfg.TRAINER.PROMPTSRC
    c.N_CTX_VISION = 4
    c.N_CTX_TEXT = 4  # also the context length of single-depth foundations (MaPLe, BMIP)
    c.CTX_INIT = "a photo of a"
    c.PREC = "fp16"
    c.PROMPT_DEPTH_VISION = 9  # IVLP foundation
    c.PROMPT_DEPTH_TEXT = 9  # IVLP foundation
    c.PROMPT_DEPTH = 9  # MaPLe, BMIP and HiCroPL foundations (the BMIP repository's key)
    c.N_CTX = 4  # the BMIP repository's key; unused there and here
    c.CONNECT_METHOD = "None"  # the BMIP repository's key; BMIP's own TRAINER.BMIP.CONNECT_METHOD is read
    c.TEXT_LOSS_WEIGHT = 25  # ints, as the official defaults (the YAMLs give ints)
    c.IMAGE_LOSS_WEIGHT = 10
    c.GPA_MEAN = 15
    c.GPA_STD = 1
    c.FOUNDATION = "IVLP"  # the prompt structure: IVLP (official) | MaPLe | BMIP | HiCroPL
    c.TEXT_TEMPLATES = ""  # "": the trainer's own (PromptSRC: promptsrc60, PromptSRC_BMIP: clip80)


def gpa_weights(mean: float, std: float, epochs: int) -> torch.Tensor:
    """Normalised Gaussian weights of epochs 1..epochs (float64). Computed as a softmax of the log-density, which
    equals the official normalised pdf and cannot underflow to 0/0 far from the mean."""
    if std <= 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD is {std}; it must be > 0")
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-0.5 * ((e - mean) / std) ** 2, dim=0)


class GaussianPromptAggregation:
    """The running weighted sum of the learned parameters over epochs (GPA)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights
        self.sum = None  # {name: fp32 tensor}

    def accumulate(self, params: dict, epoch: int):
        """Add epoch `epoch`'s (0-based) weights."""
        w = float(self.weights[epoch])
        with torch.no_grad():
            if self.sum is None:
                self.sum = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
            for n, p in params.items():
                self.sum[n].add_(p.detach().float(), alpha=w)

    def apply(self, params: dict):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.sum[n].to(p.dtype))


@OBJECTIVE_REGISTRY.register(name="PromptSRC")
class PromptSRCObjective(Objective):
    # the official image teacher, a second image tower saved inside the prompt learner
    official_dropped_keys = (r"prompt_learner\.ZS_image_encoder\..*",)

    def __init__(self, trainer):
        super().__init__(trainer)
        c = trainer.method_cfg
        self.weights = (c.TEXT_LOSS_WEIGHT, c.IMAGE_LOSS_WEIGHT)
        self.gpa = GaussianPromptAggregation(gpa_weights(c.GPA_MEAN, c.GPA_STD, self.cfg.OPTIM.MAX_EPOCH))

    def attach(self, model, classnames):
        c = self.trainer.method_cfg
        templates = TEMPLATE_SETS[self.template_set(c)]
        sentences = [[t(name.replace("_", " ")) for t in templates] for name in classnames]
        tokenizer, encoder = self.trainer.tokenizer, model.text_encoder
        targets = cached_text_targets(
            "promptsrc_text", self.cfg.DATASET.NAME, encoder, {"classes": list(classnames), "sentences": sentences},
            lambda: torch.stack([f.mean(dim=0) for f in encode_sentences(encoder, tokenizer, sentences)]),
            "PromptSRC: text targets")
        print(f"PromptSRC: text targets from {len(templates)} templates; loss weights text {self.weights[0]}, "
              f"image {self.weights[1]}; GPA mean {c.GPA_MEAN}, std {c.GPA_STD}")
        model.register_buffer("text_targets", targets.float(), persistent=False)  # unnormalised, [C, d]

    def template_set(self, c):
        name = c.TEXT_TEMPLATES or self.trainer.default_templates
        if name not in TEMPLATE_SETS:
            raise ValueError(f"TRAINER.PROMPTSRC.TEXT_TEMPLATES is '{name}'; choose one of {', '.join(TEMPLATE_SETS)}")
        return name

    def terms(self, model, images):
        """(prompted logits, text L1, image L1, KL), each unweighted."""
        state = model.class_state()
        text, image = state["text"], model.encode_image(images, state)
        logits = model.similarity(image, text)
        with torch.no_grad():
            frozen_image = F.normalize(model.image_encoder(images).float(), dim=-1)
            frozen_text = F.normalize(model.text_targets, dim=-1)
            frozen_logits = model.logit_scale.exp().float() * frozen_image @ frozen_text.t()
        text_l1 = F.l1_loss(F.normalize(text.float(), dim=-1), frozen_text)
        image_l1 = F.l1_loss(F.normalize(image.float(), dim=-1), frozen_image)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum",
                      log_target=True) / logits.numel()
        return logits, text_l1, image_l1, kl

    def loss(self, model, images, labels):
        logits, text_l1, image_l1, kl = self.terms(model, images)
        loss = F.cross_entropy(logits, labels) + self.weights[0] * text_l1 + self.weights[1] * image_l1 + kl
        return logits, loss

    def learned(self):
        return {n: p for n, p in self.trainer.model.named_parameters() if p.requires_grad}

    def after_epoch(self, epoch):
        params = self.learned()
        self.gpa.accumulate(params, epoch)
        if epoch + 1 == self.trainer.max_epoch:
            self.gpa.apply(params)
            print(f"PromptSRC: the model takes the Gaussian-weighted average of the {epoch + 1} epochs' prompts (GPA)")

    def extra_state(self):
        return {"gpa_sum": self.gpa.sum}

    def load_extra_state(self, state):
        self.gpa.sum = state["gpa_sum"]


@TRAINER_REGISTRY.register()
class PromptSRC(ComposedTrainer):
    """PromptSRC's objective over TRAINER.PROMPTSRC.FOUNDATION (IVLP by default, as officially)."""

    config_key = "PROMPTSRC"
    checkpoint_name = "VLPromptLearner"
    foundation_key = "FOUNDATION"
    objective = "PromptSRC"
    default_templates = "promptsrc60"

    def prompt_sizes(self):
        c = self.method_cfg
        return PromptSizes(n_text=c.N_CTX_TEXT, n_vision=c.N_CTX_VISION, depth_text=c.PROMPT_DEPTH_TEXT,
                           depth_vision=c.PROMPT_DEPTH_VISION, depth=c.PROMPT_DEPTH, ctx_init=c.CTX_INIT)


@TRAINER_REGISTRY.register()
class PromptSRC_BMIP(PromptSRC):  # noqa: N801  (the BMIP repository's trainer name)
    """The BMIP repository's PromptSRC+BMIP: PromptSRC with FOUNDATION BMIP and CLIP's 80 templates (depth from
    TRAINER.PROMPTSRC.PROMPT_DEPTH, n from N_CTX_TEXT). FOUNDATION is ignored."""

    foundation_key = ""
    structure = "BMIP"
    default_templates = "clip80"
    official_dropped_keys = (r"prompt_learner\.ctx",)  # officially a duplicate of ctx_t that is never used

