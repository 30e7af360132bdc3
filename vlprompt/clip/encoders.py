"""The one prompted text encoder and the one prompted image encoder every method shares.

Both run open_clip's own residual blocks in order. Before block i they:
  1. replace the prompt positions of the hidden state with `deep_prompts[i]` when given (i >= 1; layer 0
     receives its prompts through the input), and
  2. call `hook(i, x, block)`, which may return a new hidden state (BMIP reads attention scores there).
Text prompts sit right after SOS (positions 1..n); vision prompts are appended after [CLS, patches].
With no prompts both encoders equal open_clip's encode_text / encode_image.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

LayerHook = Callable[[int, torch.Tensor, nn.Module], Optional[torch.Tensor]]


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, attn_mask, causal: bool) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x) on a batch-first x [B, L, d], computed on x as laid out."""
    B, L, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(B, L, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    if causal:
        attn_mask = None
    elif attn_mask is not None:
        attn_mask = attn_mask.to(qkv.dtype)
    q, k, v = qkv.unbind(0)  # one stack in the backward pass, where indexing would zero-fill three buffers
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(B, L, d))


def _trains_through(block) -> bool:
    """Blocks whose training pass _block_forward computes itself: open_clip's plain batch-first residual block."""
    return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and isinstance(block.attn, nn.MultiheadAttention) and block.attn.batch_first
            and block.attn.in_proj_weight is not None and block.attn.bias_k is None)


def _block_forward(block, x: torch.Tensor, attn_mask=None, causal: bool = False) -> torch.Tensor:
    """One residual block on a batch-first x [B, L, d].

    Without autograd: the block itself (open_clip's forward; PyTorch's fused inference attention where it
    applies). Under autograd, nn.MultiheadAttention transposes a batch-first input to [L, B, d] before its
    input projection, and on that non-contiguous view PyTorch's matmul runs a batched matmul over the weight
    expanded per position ([L, B, d] x [L, d, 3d]) instead of one matrix product: for ViT-B/16 about a fifth
    of a MaPLe training step's CPU time (README, Performance). So the training pass computes the same block on
    x as laid out: one input projection, scaled_dot_product_attention (causal without a mask tensor for the text
    tower), the output projection; same values within float rounding."""
    if not (torch.is_grad_enabled() and _trains_through(block)):
        return block(x, attn_mask=attn_mask)
    x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), attn_mask, causal))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _run_blocks(transformer, x, replace_prompts, deep_prompts=None, hook=None, attn_mask=None, causal=False,
                grad_checkpointing=False):
    """Run every block of an open_clip Transformer, inserting deep prompts and calling the hook first.

    grad_checkpointing: keep only each block's input for the backward pass and recompute the block's
    activations there (torch.utils.checkpoint), when autograd records this pass."""
    checkpointed = grad_checkpointing and torch.is_grad_enabled()
    for i, block in enumerate(transformer.resblocks):
        if i > 0 and deep_prompts is not None and i < len(deep_prompts) and deep_prompts[i] is not None:
            x = replace_prompts(x, deep_prompts[i])
        if hook is not None:
            out = hook(i, x, block)
            x = out if out is not None else x
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        if checkpointed and x.requires_grad:
            x = checkpoint(_block_forward, block, x, attn_mask, causal, use_reentrant=False)
        else:
            x = _block_forward(block, x, attn_mask, causal)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
    return x


def _expand(prompts: torch.Tensor, batch: int) -> torch.Tensor:
    """[n, d] shared or [B, n, d] per-sample prompts -> [B, n, d]."""
    return prompts.unsqueeze(0).expand(batch, -1, -1) if prompts.dim() == 2 else prompts


def replace_text_prompts(x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Overwrite positions 1..n (after SOS) of a text hidden state [B, L, d]."""
    n = prompts.shape[-2]
    return torch.cat([x[:, :1], _expand(prompts, x.shape[0]).to(x.dtype), x[:, 1 + n:]], dim=1)


def replace_vision_prompts(x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Overwrite the last n positions of a vision hidden state [B, L, d]."""
    n = prompts.shape[-2]
    return torch.cat([x[:, :-n], _expand(prompts, x.shape[0]).to(x.dtype)], dim=1)


def attention_probs(block, x: torch.Tensor, rows, cols, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention weights that block `block` gives on input x [B, L, d], averaged over heads.

    Returns [B, len(rows), len(cols)]. Only the query rows asked for are computed (softmax needs whole rows
    of keys), and no values or output projection: much cheaper than a second attention pass.
    """
    attn = block.attn
    h = block.ln_1(x)
    d = h.shape[-1]
    heads = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h[:, rows], w[:d], None if b is None else b[:d])
    k = F.linear(h, w[d:2 * d], None if b is None else b[d:2 * d])
    B, R, _ = q.shape
    q = q.view(B, R, heads, d // heads).transpose(1, 2)
    k = k.view(B, -1, heads, d // heads).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / (d // heads) ** 0.5
    if attn_mask is not None:
        scores = scores + attn_mask[rows].to(scores.dtype)
    return scores.softmax(dim=-1)[..., cols].mean(dim=1)


# The fixed cost of one more pass through a text tower (its per-layer kernel launches, weight reads and Python
# overhead), in prompt positions of work. CPU: a ViT-B/16 text tower's forward and backward pass took ~0.1 s
# more than its ~3 ms per position on this project's 2-core machine (noisy). CUDA: an estimate, not measured
# here: a few ms of launches per pass against ~1-2 us per position.
PASS_COST_POSITIONS = {"cpu": 64, "cuda": 2048}


def pass_cost(device: torch.device) -> int:
    return PASS_COST_POSITIONS.get(device.type, PASS_COST_POSITIONS["cuda"])


def length_groups(lengths: torch.Tensor, max_groups: int = 4, min_saving: float = 0.1, pass_cost: float = 0):
    """Split rows of sequence lengths `lengths` [N] into at most `max_groups` groups of similar length, each run
    up to its own longest row: the split of least cost, where a split costs the positions it runs (sum over
    groups of rows x longest length; a small dynamic programme over the distinct lengths) plus `pass_cost`
    positions per group, the fixed cost of a pass through the tower. So few prompts run in one pass. A single
    group also unless splitting runs at least `min_saving` fewer positions.
    Returns [(row indices, length)] in order of length."""
    values, inverse, counts = torch.unique(lengths.cpu(), return_inverse=True, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    u = len(values)
    # best[k][j]: fewest positions covering the j shortest distinct lengths with k groups; cut[k][j]: last start
    inf = float("inf")
    best = [[inf] * (u + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (u + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for k in range(1, max_groups + 1):
        for j in range(1, u + 1):
            rows = 0
            for i in range(j, 0, -1):  # the group holds distinct lengths i-1 .. j-1, longest values[j-1]
                rows += counts[i - 1]
                cost = best[k - 1][i - 1] + rows * values[j - 1]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i - 1
    k = min(range(1, max_groups + 1), key=lambda g: best[g][u] + g * pass_cost)
    if best[k][u] > (1 - min_saving) * best[1][u]:
        k = 1
    bounds, j = [], u
    while j > 0:
        bounds.append((cut[k][j], j))
        j, k = cut[k][j], k - 1
    inverse = inverse.to(lengths.device)
    groups = []
    for start, end in reversed(bounds):
        rows = ((inverse >= start) & (inverse < end)).nonzero().squeeze(1)
        groups.append((rows, values[end - 1]))
    return groups


def _rows_of(deep_prompts, rows):
    """Deep prompts for a subset of the rows: per-row prompts [N, n, d] are indexed, shared ones [n, d] kept."""
    if deep_prompts is None:
        return None
    return [p[rows] if p is not None and p.dim() == 3 else p for p in deep_prompts]


def check_prompted_clip(clip_model) -> None:
    """Refuse, naming what is missing, a CLIP the prompted encoders cannot serve: they run open_clip's CLIP text
    transformer (causal mask, features at the EOT token) and, for a ViT, read the class token. A non-ViT image
    tower (ResNet, attention pooling) serves methods without vision prompts only (checked when they are given)."""
    problems = []
    if not hasattr(clip_model, "token_embedding"):
        problems.append("its text tower is not open_clip's CLIP text transformer (a CustomTextCLIP, e.g. a Hugging "
                        "Face text model): no token embedding at the top level")
    else:
        pool = getattr(clip_model, "text_pool_type", "argmax")
        if pool != "argmax":
            problems.append(f"its text tower pools at '{pool}', not at the EOT token (pool_type argmax)")
        if getattr(clip_model, "attn_mask", None) is None:
            problems.append("its text tower has no causal attention mask")
    visual = getattr(clip_model, "visual", None)
    if hasattr(visual, "conv1") and hasattr(visual, "class_embedding"):  # open_clip's VisionTransformer
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("its ViT pools with attention (attn_pool), not the class token")
        elif getattr(visual, "pool_type", "tok") != "tok":
            problems.append(f"its ViT pools by '{visual.pool_type}', not the class token (pool_type tok)")
        if getattr(visual, "final_ln_after_pool", False):
            problems.append("its ViT applies the final LayerNorm after pooling (final_ln_after_pool)")
    if problems:
        raise ValueError("This CLIP cannot be served by the prompted encoders: " + "; ".join(problems) + ".")


class PromptedTextEncoder(nn.Module):
    """CLIP's text tower (frozen) taking token embeddings, so methods can put learnable context in them."""

    def __init__(self, clip_model):
        super().__init__()
        check_prompted_clip(clip_model)
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.context_length = clip_model.context_length
        mask = clip_model.attn_mask
        # open_clip's causal mask: attention can then run causal without a mask tensor (see _block_forward)
        self.causal = mask is not None and torch.equal(
            mask.float(), torch.full_like(mask, float("-inf"), dtype=torch.float).triu(1))
        self.grad_checkpointing = False  # recompute block activations in the backward pass (_run_blocks)
        self._groups_of = None  # (eot_index, its version, length_groups of it): see _length_groups

    @property
    def width(self) -> int:
        return self.positional_embedding.shape[-1]

    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    @property
    def dtype(self):
        return self.positional_embedding.dtype

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (no positional embedding) of tokenized text [N, L] -> [N, L, d]."""
        return self.token_embedding(token_ids).to(self.dtype)

    def forward(
        self,
        embeddings: torch.Tensor,
        eot_index: torch.Tensor,
        deep_prompts: Optional[Sequence[Optional[torch.Tensor]]] = None,
        hook: Optional[LayerHook] = None,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Text features [N, embed_dim] from input embeddings [N, L, d] and EOT positions [N].

        truncate: run each prompt only up to its EOT position: prompts are grouped by length (length_groups,
        with the device's fixed cost of a pass) and each group runs up to its own longest EOT. Exact: the
        causal mask keeps every EOT output independent of later positions. With a hook (which may look at the
        whole batch, as BMIP's does) all prompts run together up to the last EOT.
        """
        if not truncate:
            return self._run(embeddings, eot_index, embeddings.shape[1], deep_prompts, hook)
        if hook is not None:
            return self._run(embeddings, eot_index, int(eot_index.max()) + 1, deep_prompts, hook)
        groups = self._length_groups(eot_index)
        if len(groups) == 1:
            return self._run(embeddings, eot_index, groups[0][1], deep_prompts, hook)
        features = [self._run(embeddings[rows], eot_index[rows], length, _rows_of(deep_prompts, rows), hook)
                    for rows, length in groups]
        order = torch.cat([rows for rows, _ in groups])
        return torch.cat(features)[torch.argsort(order)]

    def _length_groups(self, eot_index):
        """length_groups of the EOT positions, kept for the tensor they came from: a template's eot_index is the
        same at every training step and evaluation, and splitting it anew would cost a device sync each time."""
        cached = self._groups_of
        if cached is None or cached[0] is not eot_index or cached[1] != eot_index._version:
            groups = length_groups(eot_index + 1, pass_cost=pass_cost(eot_index.device))
            cached = self._groups_of = (eot_index, eot_index._version, groups)
        return cached[2]

    def _run(self, embeddings, eot_index, length, deep_prompts, hook):
        x = embeddings[:, :length].to(self.dtype) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = _run_blocks(self.transformer, x, replace_text_prompts, deep_prompts, hook, mask, self.causal,
                        self.grad_checkpointing)
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot_index])
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_tokens(self, token_ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Features of plain tokenized text (zero-shot CLIP); equals open_clip's encode_text."""
        return self.forward(self.embed(token_ids), token_ids.argmax(dim=-1), truncate=truncate)


class PromptedImageEncoder(nn.Module):
    """CLIP's ViT image tower (frozen) with optional prompt tokens appended after [CLS, patches]."""

    def __init__(self, clip_model):
        super().__init__()
        visual = clip_model.visual
        self.visual = visual
        self.is_vit = hasattr(visual, "conv1") and hasattr(visual, "class_embedding")
        check_prompted_clip(clip_model)
        self.grad_checkpointing = False  # recompute block activations in the backward pass (_run_blocks)

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def forward(
        self,
        images: torch.Tensor,
        prompts: Optional[torch.Tensor] = None,
        deep_prompts: Optional[Sequence[Optional[torch.Tensor]]] = None,
        hook: Optional[LayerHook] = None,
    ) -> torch.Tensor:
        """Image features [B, embed_dim]. prompts: [n, d_v] shared or [B, n, d_v] per image (layer 0)."""
        v = self.visual
        if not self.is_vit:
            if prompts is not None or deep_prompts is not None or hook is not None:
                raise NotImplementedError(
                    f"Vision prompts need a ViT with a class token; this CLIP's image tower is a "
                    f"{type(v).__name__}, which has no class token and pools with attention (use a ViT backbone, "
                    f"or a method without vision prompts: CoOp, CoCoOp, ZeroshotCLIP)")
            return v(images.to(self.dtype))
        x = v.conv1(images.to(self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        if prompts is not None:  # after the positional embedding, before ln_pre, as the official MaPLe code
            x = torch.cat([x, _expand(prompts, x.shape[0]).to(x.dtype)], dim=1)
        x = v.ln_pre(x)
        x = _run_blocks(v.transformer, x, replace_vision_prompts, deep_prompts, hook,
                        grad_checkpointing=self.grad_checkpointing)
        x = v.ln_post(x[:, 0])
        return x @ v.proj if v.proj is not None else x
