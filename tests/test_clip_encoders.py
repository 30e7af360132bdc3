import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    attention_probs,
    load_clip,
    read_state_dict,
)
from vlprompt.clip.text_prompt import ClassPromptTemplate

TEXTS = ["a photo of a dog.", "a photo of a very long and unusual looking golden retriever on grass.", "x"]


def test_no_prompts_equals_open_clip(tiny_clip, tokenizer):
    text_enc, image_enc = PromptedTextEncoder(tiny_clip), PromptedImageEncoder(tiny_clip)
    tokens = tokenizer(TEXTS)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(text_enc.encode_tokens(tokens, truncate=False), tiny_clip.encode_text(tokens),
                                   rtol=0, atol=0)
        torch.testing.assert_close(image_enc(images), tiny_clip.encode_image(images), rtol=0, atol=0)


def test_truncated_text_equals_full_length(tiny_clip, tokenizer):
    text_enc = PromptedTextEncoder(tiny_clip)
    tokens = tokenizer(TEXTS)
    with torch.no_grad():
        full = text_enc.encode_tokens(tokens, truncate=False)
        short = text_enc.encode_tokens(tokens, truncate=True)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


def test_length_groups_run_the_fewest_positions():
    """The split equals the best of every split into at most 4 groups of consecutive lengths (brute force)."""
    import itertools

    from vlprompt.clip.encoders import length_groups

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        lengths = torch.randint(3, 40, (int(torch.randint(1, 60, (1,), generator=gen)),), generator=gen)
        groups = length_groups(lengths, max_groups=4, min_saving=0)
        rows = torch.cat([r for r, _ in groups])
        assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row once
        assert all(int(lengths[r].max()) == length for r, length in groups)
        cost = sum(len(r) * length for r, length in groups)
        values = sorted(set(lengths.tolist()))
        best = min(
            sum(sum(int((lengths == v).sum()) for v in part) * max(part)
                for part in (values[a:b] for a, b in zip((0, *cuts), (*cuts, len(values)))))
            for k in range(min(4, len(values)))
            for cuts in itertools.combinations(range(1, len(values)), k))
        assert cost == best
    # a split that saves under min_saving of the positions is not worth the extra passes
    assert len(length_groups(torch.tensor([10] * 20 + [11]), min_saving=0.1)) == 1
    assert len(length_groups(torch.tensor([5] * 20 + [30]), min_saving=0.1)) == 2


def test_prompts_grouped_by_length_equal_one_pass(tiny_clip, tokenizer):
    """Prompts of different lengths run in length groups give the features and gradients of one full-length pass,
    per-row deep prompts included."""
    text_enc = PromptedTextEncoder(tiny_clip)
    texts = [f"a photo of a {'very ' * (i % 7)}{'golden ' * (i % 3)}dog." for i in range(24)]
    tokens = tokenizer(texts)
    eot = tokens.argmax(-1)
    assert len(set(eot.tolist())) > 4
    embeddings = text_enc.embed(tokens).detach().requires_grad_(True)
    deep = torch.randn(24, 2, text_enc.width, requires_grad=True)
    outs, grads = [], []
    for truncate in (True, False):
        out = text_enc(embeddings, eot, deep_prompts=[None, deep, deep], truncate=truncate)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [embeddings, deep]))
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for grouped, full in zip(*grads):
        assert full.abs().max() > 0
        torch.testing.assert_close(grouped, full, rtol=0, atol=1e-5 * full.abs().max().item())


def _block_inputs(encoder, *args, **kwargs):
    seen = []

    def hook(i, x, block):
        seen.append(x.detach().clone())

    with torch.no_grad():
        out = encoder(*args, hook=hook, **kwargs)
    return seen, out


@pytest.mark.parametrize("layer", [1, 5, 11])
def test_text_deep_prompt_replaces_only_its_positions(tiny_clip, tokenizer, layer):
    enc = PromptedTextEncoder(tiny_clip)
    n = 3
    template = ClassPromptTemplate(enc, tokenizer, ["dog", "golden retriever"], n, "X X X")
    emb = template.assemble(torch.randn(n, enc.width))
    prompt = torch.randn(n, enc.width)
    deep = [None] * enc.num_layers
    deep[layer] = prompt
    base_inputs, base_out = _block_inputs(enc, emb, template.eot_index)
    inputs, out = _block_inputs(enc, emb, template.eot_index, deep_prompts=deep)
    for i in range(layer):
        torch.testing.assert_close(inputs[i], base_inputs[i], rtol=0, atol=0)
    x = inputs[layer]
    torch.testing.assert_close(x[:, 1:1 + n], prompt.expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(x[:, :1], base_inputs[layer][:, :1], rtol=0, atol=0)
    torch.testing.assert_close(x[:, 1 + n:], base_inputs[layer][:, 1 + n:], rtol=0, atol=0)
    # causal mask: SOS never sees the prompts, later tokens do
    torch.testing.assert_close(inputs[-1][:, 0], base_inputs[-1][:, 0], rtol=0, atol=0)
    assert not torch.allclose(out, base_out)


@pytest.mark.parametrize("layer", [1, 6, 11])
def test_vision_prompts_appended_and_replaced(tiny_clip, layer):
    enc = PromptedImageEncoder(tiny_clip)
    n = 2
    images = torch.randn(2, 3, 224, 224)
    first = torch.randn(n, enc.width)
    prompt = torch.randn(n, enc.width)
    deep = [None] * enc.num_layers
    deep[layer] = prompt
    base_inputs, base_out = _block_inputs(enc, images, prompts=first)
    inputs, out = _block_inputs(enc, images, prompts=first, deep_prompts=deep)
    tokens = 1 + (224 // 16) ** 2
    assert inputs[0].shape == (2, tokens + n, enc.width)
    # layer 0: prompts go in after the positional embedding, before ln_pre
    v = tiny_clip.visual
    with torch.no_grad():
        expected0 = v.ln_pre(torch.cat([_patch_tokens(v, images), first.expand(2, -1, -1)], dim=1))
    torch.testing.assert_close(inputs[0], expected0, rtol=1e-6, atol=1e-6)
    for i in range(layer):
        torch.testing.assert_close(inputs[i], base_inputs[i], rtol=0, atol=0)
    torch.testing.assert_close(inputs[layer][:, -n:], prompt.expand(2, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(inputs[layer][:, :-n], base_inputs[layer][:, :-n], rtol=0, atol=0)
    assert not torch.allclose(out, base_out)


def _patch_tokens(v, images):
    x = v.conv1(images).flatten(2).transpose(1, 2)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + v.positional_embedding


def test_per_image_prompts_match_shared(tiny_clip):
    enc = PromptedImageEncoder(tiny_clip)
    images = torch.randn(2, 3, 224, 224)
    p = torch.randn(3, enc.width)
    with torch.no_grad():
        torch.testing.assert_close(enc(images, prompts=p), enc(images, prompts=p.expand(2, -1, -1)))


def test_attention_probs_equal_multihead_attention_weights(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[3]
    x = torch.randn(2, 20, block.ln_1.normalized_shape[0])
    with torch.no_grad():
        h = block.ln_1(x)
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)
        rows, cols = slice(0, 17), slice(17, 20)
        ours = attention_probs(block, x, rows, cols)
    torch.testing.assert_close(ours, weights[:, rows, cols], rtol=1e-5, atol=1e-6)


def test_attention_probs_with_causal_mask(tiny_clip):
    block = tiny_clip.transformer.resblocks[0]
    x = torch.randn(2, 10, block.ln_1.normalized_shape[0])
    mask = tiny_clip.attn_mask[:10, :10]
    with torch.no_grad():
        h = block.ln_1(x)
        _, weights = block.attn(h, h, h, need_weights=True, attn_mask=mask)
        ours = attention_probs(block, x, slice(0, 10), slice(1, 3), mask)
    torch.testing.assert_close(ours, weights[:, :, 1:3], rtol=1e-5, atol=1e-6)
    assert torch.all(ours[:, 0] == 0)  # row 0 (SOS) attends only to itself


def test_weights_file_round_trip(tmp_path, tiny_clip, tokenizer):
    """OpenAI-style state dict (plain), open_clip checkpoint ({'state_dict': module.*}) and a JIT archive."""
    sd = {k: v.clone() + 0.01 for k, v in tiny_clip.state_dict().items()}
    plain = tmp_path / "openai_state_dict.pt"
    torch.save(sd, plain)
    wrapped = tmp_path / "open_clip_ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, wrapped)
    tokens = tokenizer(TEXTS)
    with torch.no_grad():
        ref = load_clip("vlprompt-tiny")
        ref.load_state_dict(sd)
        expected = ref.encode_text(tokens)
        for path in (plain, wrapped):
            m = load_clip("vlprompt-tiny", path=str(path))
            torch.testing.assert_close(m.encode_text(tokens), expected)
        traced = torch.jit.trace(ref.visual, torch.randn(1, 3, 224, 224))
        jit_path = tmp_path / "visual_jit.pt"
        traced.save(str(jit_path))
        jit_sd = read_state_dict(jit_path)
        torch.testing.assert_close(jit_sd["proj"], sd["visual.proj"])


def test_missing_weights_error_names_paths_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_clip("ViT-B/16")
    msg = str(err.value)
    assert "ViT-B-16.pt" in msg and ".cache/clip" in msg and "MODEL.BACKBONE.PATH" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("ViT-B/16", path=str(tmp_path / "nope.pt"))


def test_wrong_weights_for_architecture(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="do not fit architecture") as err:
        load_clip("vlprompt-tiny", path=str(path))
    assert "visual.proj (3, 3) vs (64, 32)" in str(err.value)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="Unknown CLIP backbone 'ViT-X/99'"):
        load_clip("ViT-X/99")


def test_tiny_model_is_deterministic_and_small(tiny_clip):
    other = load_clip("vlprompt-tiny")
    for (k, a), b in zip(tiny_clip.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    n = sum(p.numel() for p in tiny_clip.parameters())
    assert n < 5_000_000
    assert len(tiny_clip.visual.transformer.resblocks) == 12 and len(tiny_clip.transformer.resblocks) == 12
    assert tiny_clip.context_length == 77


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_training_block_pass_equals_open_clip_block(tiny_clip, tower):
    """Under autograd the encoders compute open_clip's residual block themselves (on the batch-first layout);
    values and gradients equal open_clip's own forward of the block."""
    from vlprompt.clip.encoders import _block_forward

    transformer = tiny_clip.transformer if tower == "text" else tiny_clip.visual.transformer
    mask = tiny_clip.attn_mask[:9, :9] if tower == "text" else None
    torch.manual_seed(0)
    x = torch.randn(3, 9, transformer.width, requires_grad=True)
    for block in transformer.resblocks[:3]:
        ours = _block_forward(block, x, mask, causal=tower == "text")
        reference = block(x, attn_mask=mask)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(ours)
        grad_ours, = torch.autograd.grad((ours * weights).sum(), x)
        grad_ref, = torch.autograd.grad((reference * weights).sum(), x)
        torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-5, atol=1e-5)
        # with an explicit (non-causal) mask tensor too
        blocked = torch.zeros(9, 9).masked_fill(torch.rand(9, 9) < 0.3, float("-inf")).fill_diagonal_(0)
        torch.testing.assert_close(_block_forward(block, x, blocked), block(x, attn_mask=blocked),
                                   rtol=1e-5, atol=1e-5)


def test_encoders_under_autograd_equal_inference(tiny_clip, tokenizer):
    """Features with gradients recorded (the encoders' own block pass) equal those without (open_clip's blocks),
    and the text tower knows open_clip's mask is causal."""
    text_enc, image_enc = PromptedTextEncoder(tiny_clip), PromptedImageEncoder(tiny_clip)
    assert text_enc.causal
    tokens = tokenizer(TEXTS)
    images = torch.randn(2, 3, 224, 224)
    prompts = torch.randn(2, image_enc.width, requires_grad=True)
    with torch.no_grad():
        text_ref, image_ref = text_enc.encode_tokens(tokens), image_enc(images, prompts=prompts)
    torch.testing.assert_close(text_enc.encode_tokens(tokens), text_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image_enc(images, prompts=prompts), image_ref, rtol=1e-5, atol=1e-5)


def test_length_groups_pass_cost_keeps_few_prompts_in_one_pass():
    """A fixed cost per pass: the split minimises positions + pass_cost x groups (brute force), so a few prompts
    run in one pass while many prompts of spread lengths still split."""
    import itertools

    from vlprompt.clip.encoders import PASS_COST_POSITIONS, length_groups

    few = torch.tensor([6, 7, 7, 8, 9, 12, 14, 9, 8, 7])  # 10 class prompts
    assert len(length_groups(few, pass_cost=0, min_saving=0)) > 1
    assert len(length_groups(few, pass_cost=PASS_COST_POSITIONS["cpu"])) == 1
    many = torch.tensor([6] * 400 + [10] * 300 + [16] * 200 + [30] * 100)
    assert len(length_groups(many, pass_cost=PASS_COST_POSITIONS["cpu"])) == 4
    assert len(length_groups(many, pass_cost=PASS_COST_POSITIONS["cuda"])) == 3
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        lengths = torch.randint(3, 20, (int(torch.randint(1, 80, (1,), generator=gen)),), generator=gen)
        cost_per_pass = float(torch.randint(0, 200, (1,), generator=gen))
        groups = length_groups(lengths, pass_cost=cost_per_pass, min_saving=0)
        cost = sum(len(r) * length for r, length in groups) + cost_per_pass * len(groups)
        values = sorted(set(lengths.tolist()))
        best = min(
            sum(sum(int((lengths == v).sum()) for v in part) * max(part)
                for part in (values[a:b] for a, b in zip((0, *cuts), (*cuts, len(values))))) + cost_per_pass * (k + 1)
            for k in range(min(4, len(values)))
            for cuts in itertools.combinations(range(1, len(values)), k))
        assert cost == best
