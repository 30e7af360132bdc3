"""BMIP against an independent step-by-step recomputation on open_clip's own blocks."""
import os

import pytest
import torch
import torch.nn.functional as F

from vlprompt import cli
from vlprompt.config import get_cfg_default
from vlprompt.trainers.bmip import BMIPModel

from conftest import REPO

CLASSES = ["dog", "golden retriever", "car", "red wine", "aircraft carrier"]


def bmip_cfg(**kw):
    c = get_cfg_default().TRAINER.BMIP.clone()
    for k, v in kw.items():
        c[k] = v
    return c


def make_model(tiny_clip, tokenizer, seed=0, share_visual=True, share_text=True, **kw):
    torch.manual_seed(seed)
    model = BMIPModel(tiny_clip, tokenizer, CLASSES, bmip_cfg(**kw), share_visual, share_text)
    with torch.no_grad():  # give the mixing layers distinct, non-trivial values
        for lin in list(getattr(model.prompt_learner, "vision_mix", [])) + list(
                getattr(model.prompt_learner, "text_mix", [])):
            lin.weight.uniform_(5.0, 40.0)
            lin.bias.uniform_(-1.0, 1.0)
    return model


def heads_mean_attention(block, x, attn_mask=None):
    """Attention weights of block on x from nn.MultiheadAttention itself, averaged over heads: [B, L, L]."""
    h = block.ln_1(x)
    return block.attn(h, h, h, need_weights=True, average_attn_weights=True, attn_mask=attn_mask)[1]


def reference_forward(clip, pl, tokens, images, text_row="row0", vision="batch_mean"):
    """BMIP as the official code computes it, written out on the plain open_clip model (77 positions)."""
    n, depth = pl.n_ctx, pl.depth
    foreign_t = [pl.single_layer_v(p) for p in pl.compound_prompts_visual]
    foreign_v = [pl.single_layer_t(p) for p in pl.compound_prompts_text]
    mask = clip.attn_mask
    x = clip.token_embedding(tokens).clone()
    x[:, 1:1 + n] = pl.ctx_t
    x = x + clip.positional_embedding
    text_prompts = {}
    for i, blk in enumerate(clip.transformer.resblocks):
        if 1 <= i <= depth - 2:
            att = heads_mean_attention(blk, x, mask).mean(dim=0)  # over classes: [L, L]
            if text_row == "row0":
                score = att[0, 1:1 + n]
            else:
                eot = int(tokens.argmax(-1).max())
                score = att[1 + n:eot + 1, 1:1 + n].mean(dim=0)
            w = torch.sigmoid(pl.text_mix[i - 1].weight[0, 0] * score.detach() + pl.text_mix[i - 1].bias[0])
            prompt = w[:, None] * pl.compound_prompts_text[i - 1] + (1 - w[:, None]) * foreign_t[i - 1]
            text_prompts[i] = prompt
            x = torch.cat([x[:, :1], prompt.expand(len(x), -1, -1), x[:, 1 + n:]], dim=1)
        x = blk(x, attn_mask=mask)
    text = clip.ln_final(x[torch.arange(len(x)), tokens.argmax(-1)]) @ clip.text_projection

    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(torch.cat([x, pl.proj_t(pl.ctx_t).expand(len(x), -1, -1)], 1))
    vision_prompts = {}
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i <= depth - 1:
            L = x.shape[1]
            att = heads_mean_attention(blk, x)  # [B, L, L]
            if vision == "batch_mean":
                att = att.mean(dim=0, keepdim=True)
            score = att[:, :L - n, L - n:].mean(dim=1).detach()  # [1 or B, n]
            w = torch.sigmoid(pl.vision_mix[i - 1].weight[0, 0] * score + pl.vision_mix[i - 1].bias[0])
            prompt = w[..., None] * pl.compound_prompts_visual[i - 1] + (1 - w[..., None]) * foreign_v[i - 1]
            vision_prompts[i] = prompt
            x = torch.cat([x[:, :L - n], prompt.expand(len(x), -1, -1)], dim=1)
        x = blk(x)
    image = v.ln_post(x[:, 0]) @ v.proj
    logits = clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return logits, text_prompts, vision_prompts


def capture(tower):
    seen = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
               for i, b in enumerate(tower.transformer.resblocks)]
    return seen, handles


@pytest.mark.parametrize("text_row,vision", [("row0", "batch_mean"), ("later_tokens", "per_sample")])
def test_forward_equals_step_by_step_recomputation(tiny_clip, tokenizer, text_row, vision):
    model = make_model(tiny_clip, tokenizer, TEXT_SCORE=text_row, VISION_SCORE=vision)
    pl = model.prompt_learner
    tokens = tokenizer([f"a photo of a {c}." for c in CLASSES])
    images = torch.randn(3, 3, 224, 224)
    text_in, h1 = capture(model.text_encoder)
    vis_in, h2 = capture(model.image_encoder.visual)
    with torch.no_grad():
        ours = model(images)
        ref, text_prompts, vision_prompts = reference_forward(tiny_clip, pl, tokens, images, text_row, vision)
    for h in h1 + h2:
        h.remove()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    n = pl.n_ctx
    assert sorted(text_prompts) == list(range(1, 8)) and sorted(vision_prompts) == list(range(1, 9))
    for i, p in text_prompts.items():
        torch.testing.assert_close(text_in[i][:, 1:1 + n], p.expand(5, -1, -1), rtol=1e-5, atol=1e-5)
    for i, p in vision_prompts.items():
        torch.testing.assert_close(vis_in[i][:, -n:], p.expand(3, -1, -1), rtol=1e-5, atol=1e-5)
    # text layer J-1 = 8 is not replaced (official): its prompt positions are block 7's output
    block7 = tiny_clip.transformer.resblocks[7]
    with torch.no_grad():
        out7 = block7(text_in[7], attn_mask=tiny_clip.attn_mask[:text_in[7].shape[1], :text_in[7].shape[1]])
    torch.testing.assert_close(text_in[8], out7, rtol=1e-5, atol=1e-5)


def test_row0_text_weights_are_sigmoid_of_bias(tiny_clip, tokenizer):
    model = make_model(tiny_clip, tokenizer)
    pl = model.prompt_learner
    text_in, handles = capture(model.text_encoder)
    with torch.no_grad():
        model.class_state()
    for h in handles:
        h.remove()
    for k, lin in enumerate(pl.text_mix):
        w = torch.sigmoid(lin.bias)
        expected = w * pl.compound_prompts_text[k] + (1 - w) * pl.foreign_text(k)
        torch.testing.assert_close(text_in[k + 1][0, 1:3], expected.detach(), rtol=1e-6, atol=1e-6)


def test_gradients_reach_every_used_part(tiny_clip, tokenizer):
    model = make_model(tiny_clip, tokenizer)
    pl = model.prompt_learner
    loss = F.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([0, 3]))
    loss.backward()
    nonzero = lambda p: p.grad is not None and p.grad.abs().sum() > 0  # noqa: E731
    for name in ("ctx_t", "proj_t.weight", "single_layer_t.weight", "single_layer_v.weight"):
        assert nonzero(pl.get_parameter(name)), name
    assert all(nonzero(p) for p in pl.compound_prompts_text) and all(nonzero(p) for p in pl.compound_prompts_visual)
    assert all(nonzero(lin.weight) and nonzero(lin.bias) for lin in pl.vision_mix)
    assert all(nonzero(lin.bias) for lin in pl.text_mix)
    # row 0 scores are always 0: the text weights' slopes get a zero gradient, as in the official code
    assert all(lin.weight.grad.abs().sum() == 0 for lin in pl.text_mix)


def test_batch_mean_depends_on_batch_and_per_sample_does_not(tiny_clip, tokenizer):
    images = torch.randn(4, 3, 224, 224)
    for mode, dependent in (("batch_mean", True), ("per_sample", False)):
        model = make_model(tiny_clip, tokenizer, VISION_SCORE=mode)
        with torch.no_grad():
            state = model.class_state()
            together = model.logits(images, state)
            alone = torch.cat([model.logits(images[i:i + 1], state) for i in range(4)])
        assert (not torch.allclose(together, alone, atol=1e-6)) == dependent, mode


def test_unshared_projections_and_init(tiny_clip, tokenizer):
    model = make_model(tiny_clip, tokenizer, share_visual=False, share_text=False)
    pl = model.prompt_learner
    assert len(pl.compound_prompt_projections_t) == 8 and len(pl.compound_prompt_projections_v) == 8
    assert torch.equal(pl.compound_prompt_projections_t[0].weight, pl.compound_prompt_projections_t[5].weight)
    bound = (6.0 / (3 * 16 + 64)) ** 0.5
    assert all(p.abs().max() <= bound for p in pl.compound_prompts_visual)
    assert not torch.equal(pl.compound_prompts_visual[0], pl.compound_prompts_visual[1])
    shared = make_model(tiny_clip, tokenizer).prompt_learner
    assert all(torch.equal(p, shared.compound_prompts_visual[0]) for p in shared.compound_prompts_visual)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def _vision_layer_inputs(model, images):
    seen, handles = capture(model.image_encoder.visual)
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    return seen


def test_ablations(tiny_clip, tokenizer):
    images = torch.randn(2, 3, 224, 224)
    base = make_model(tiny_clip, tokenizer)
    with torch.no_grad():
        base_logits = base(images)
    for method in ("add", "atten", "joint"):
        model = make_model(tiny_clip, tokenizer, CONNECT_METHOD=method)
        pl = model.prompt_learner
        seen = _vision_layer_inputs(model, images)
        local, foreign = pl.compound_prompts_visual[2], pl.foreign_vision(2)
        if method == "add":
            expected = local + foreign
        elif method == "atten":
            expected = local + torch.softmax(foreign @ local.t(), dim=1) @ foreign
        else:
            expected = torch.cat([foreign, local])
        got = seen[3][:, -len(expected):]
        torch.testing.assert_close(got, expected.detach().expand(2, -1, -1), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            logits = model(images)
        assert logits.shape == base_logits.shape and not torch.allclose(logits, base_logits)
    joint = make_model(tiny_clip, tokenizer, CONNECT_METHOD="joint").prompt_learner
    assert joint.template.prefix == "a photo of a"  # 2n = 4 <= 4: CTX_INIT as officially


# ---- CLI: training with best-val selection, ablations, official checkpoints ---------------------------
DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
BMIP_CFG = os.path.join(REPO, "configs/trainers/BMIP/BMIP_ctx2_dp9_lr2.yaml")
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4",
        "TEST.SAVE_LOGITS", "True"]


def run(data_root, out, *extra):
    return cli.main(["--root", data_root, "--seed", "1", "--trainer", "BMIP", "--dataset-config-file", DATASET_CFG,
                     "--config-file", BMIP_CFG, "--output-dir", str(out), *extra, *FAST])


def test_cli_trains_with_best_val_and_early_stopping(tmp_path):
    data = str(tmp_path / "data")
    out = tmp_path / "run"
    assert run(data, out, "OPTIM.MAX_EPOCH", "6", "OPTIM.LR", "0.0", "OPTIM.WARMUP_EPOCH", "0",
               "TRAIN.PATIENT_COUNT", "2") == 0
    log = (out / "log.txt").read_text()
    # lr 0: validation never improves after epoch 1, so training stops after epoch 3
    assert "Early stopping after epoch 3" in log and "epoch [4/6]" not in log
    assert "Deploy the model with the best val performance" in log
    best = torch.load(out / "MultiModalPromptLearner/model-best.pth.tar", weights_only=False)
    assert best["epoch"] == 1
    for method in ("add", "atten", "joint"):
        assert run(data, tmp_path / method, "OPTIM.MAX_EPOCH", "1", "TRAINER.BMIP.CONNECT_METHOD", method) == 0


def test_official_checkpoint_reloads_to_identical_logits(tmp_path, tiny_clip):
    data = str(tmp_path / "data")
    ours = tmp_path / "ours"
    assert run(data, ours, "OPTIM.MAX_EPOCH", "1") == 0
    trained = torch.load(ours / "MultiModalPromptLearner/model.pth.tar-1", weights_only=False)["state_dict"]
    whole = {}
    for k, v in trained.items():
        if k.startswith(("vision_mix", "text_mix")):
            tower, linear = ("image", "learnable_linear1") if k.startswith("vision") else ("text", "learnable_linear2")
            _, idx, leaf = k.split(".")
            whole[f"{tower}_encoder.transformer.resblocks.{int(idx) + 1}.{linear}.{leaf}"] = v
        else:
            whole["prompt_learner." + k] = v
    # what else the official whole-model checkpoint holds: frozen CLIP, unused parameters and linears
    whole.update({"image_encoder." + k: v for k, v in tiny_clip.visual.state_dict().items()})
    whole.update({"text_encoder.transformer." + k: v for k, v in tiny_clip.transformer.state_dict().items()})
    for i in range(12):
        for tower in ("image", "text"):
            for linear in ("learnable_linear1", "learnable_linear2"):
                for leaf in ("weight", "bias"):
                    whole.setdefault(f"{tower}_encoder.transformer.resblocks.{i}.{linear}.{leaf}", torch.randn(1, 1)
                                     if leaf == "weight" else torch.randn(1))
    whole.update({"prompt_learner.ctx_v": torch.randn(77, 64), "prompt_learner.proj_v.weight": torch.randn(48, 64),
                  "prompt_learner.proj_v.bias": torch.randn(48),
                  "prompt_learner.exchange_layer_v.weight": torch.randn(64, 128),
                  "prompt_learner.exchange_layer_t.weight": torch.randn(48, 96),
                  "prompt_learner.token_prefix": torch.zeros(10, 1, 48), "logit_scale": tiny_clip.logit_scale})
    folder = tmp_path / "official/MultiModalPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": whole, "epoch": 10}, folder / "model-best.pth.tar")
    ev = tmp_path / "eval"
    assert run(data, ev, "--eval-only", "--model-dir", str(tmp_path / "official")) == 0
    torch.testing.assert_close(torch.load(ev / "logits.pt")["logits"], torch.load(ours / "logits.pt")["logits"],
                               rtol=0, atol=0)
