"""VPT, IVLP (and language-only) and MaPLe against independent checks on the tiny CLIP."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from vlprompt import cli
from vlprompt.config import get_cfg_default
from vlprompt.trainers.ivlp import IVLPModel
from vlprompt.trainers.maple import MaPLeModel
from vlprompt.trainers.vpt import VPTModel

from conftest import REPO

CLASSES = ["dog", "golden retriever", "car", "red wine"]


def method_cfg(key, **kw):
    c = get_cfg_default().TRAINER[key].clone()
    for k, v in kw.items():
        c[k] = v
    return c


def capture_block_inputs(tower):
    """Inputs of every open_clip block of a tower, recorded by forward pre-hooks (independent of our encoders)."""
    seen = {}
    handles = [blk.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
               for i, blk in enumerate(tower.transformer.resblocks)]
    return seen, handles


def run_with_capture(model, images):
    text_seen, h1 = capture_block_inputs(model.text_encoder)
    vis_seen, h2 = capture_block_inputs(model.image_encoder.visual)
    with torch.no_grad():
        logits = model(images)
    for h in h1 + h2:
        h.remove()
    return logits, text_seen, vis_seen


@pytest.fixture()
def images():
    torch.manual_seed(3)
    return torch.randn(2, 3, 224, 224)


def test_ivlp_deep_prompts_are_the_layer_inputs(tiny_clip, tokenizer, images):
    torch.manual_seed(0)
    c = method_cfg("IVLP", N_CTX_TEXT=2, N_CTX_VISION=3, PROMPT_DEPTH_TEXT=5, PROMPT_DEPTH_VISION=7)
    model = IVLPModel(tiny_clip, tokenizer, CLASSES, c)
    pl = model.prompt_learner
    assert len(pl.text_prompts) == 4 and len(pl.visual_prompts) == 6
    _, text_in, vis_in = run_with_capture(model, images)
    for i in range(1, 5):
        torch.testing.assert_close(text_in[i][:, 1:3], pl.text_prompts[i - 1].expand(4, -1, -1), rtol=0, atol=0)
    for i in range(1, 7):
        torch.testing.assert_close(vis_in[i][:, -3:], pl.visual_prompts[i - 1].expand(2, -1, -1), rtol=0, atol=0)
    # past the depth, the prompt positions carry what the previous block produced (no replacement)
    assert not torch.equal(text_in[5][:, 1:3], text_in[4][:, 1:3])
    v = tiny_clip.visual
    patches = v.conv1(images).flatten(2).transpose(1, 2)
    x0 = torch.cat([v.class_embedding.expand(2, 1, -1), patches], 1) + v.positional_embedding
    expected0 = v.ln_pre(torch.cat([x0, pl.visual_ctx.expand(2, -1, -1)], 1))
    torch.testing.assert_close(vis_in[0], expected0.detach(), rtol=1e-5, atol=1e-5)


def test_language_only_has_no_vision_prompts(tiny_clip, tokenizer, images):
    c = method_cfg("IVLP", N_CTX_TEXT=4, N_CTX_VISION=0, PROMPT_DEPTH_TEXT=12, PROMPT_DEPTH_VISION=0)
    model = IVLPModel(tiny_clip, tokenizer, CLASSES, c)
    assert model.prompt_learner.visual_ctx is None and len(model.prompt_learner.visual_prompts) == 0
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(images), tiny_clip.encode_image(images))


def test_maple_vision_prompts_are_projected_text_prompts(tiny_clip, tokenizer, images):
    torch.manual_seed(0)
    model = MaPLeModel(tiny_clip, tokenizer, CLASSES, method_cfg("MAPLE", PROMPT_DEPTH=9))
    pl = model.prompt_learner
    # the official code clones one initial projection for every layer
    for proj in pl.compound_prompt_projections:
        assert torch.equal(proj.weight, pl.compound_prompt_projections[0].weight)
    with torch.no_grad():  # make them differ, so a wrong index shows
        for k, proj in enumerate(pl.compound_prompt_projections):
            proj.weight.add_(0.01 * k)
    _, text_in, vis_in = run_with_capture(model, images)
    for i in range(1, 9):
        text_p = pl.compound_prompts_text[i - 1]
        torch.testing.assert_close(text_in[i][:, 1:3], text_p.expand(4, -1, -1), rtol=0, atol=0)
        expected = (text_p @ pl.compound_prompt_projections[i - 1].weight.t()
                    + pl.compound_prompt_projections[i - 1].bias).detach()
        torch.testing.assert_close(vis_in[i][:, -2:], expected.expand(2, -1, -1), rtol=1e-6, atol=1e-6)
    ln_pre_prompt = tiny_clip.visual.ln_pre(pl.proj(pl.ctx)).detach()  # layer 0: proj(ctx), then ln_pre
    torch.testing.assert_close(vis_in[0][:, -2:], ln_pre_prompt.expand(2, -1, -1), rtol=1e-5, atol=1e-5)
    # "a photo of a" with N_CTX 2: "a photo" learnable, "of a" fixed text after it
    tokens = tokenizer(["a photo of a dog."])[0]
    torch.testing.assert_close(pl.ctx.detach(), tiny_clip.token_embedding(tokens[1:3]))
    assert torch.equal(pl.template.token_ids[0, 3:5], tokens[3:5])


def test_maple_depth_one_is_shallow(tiny_clip, tokenizer, images):
    torch.manual_seed(0)
    model = MaPLeModel(tiny_clip, tokenizer, CLASSES, method_cfg("MAPLE", PROMPT_DEPTH=1))
    assert len(model.prompt_learner.compound_prompts_text) == 0
    _, text_in, vis_in = run_with_capture(model, images)
    block0 = tiny_clip.visual.transformer.resblocks[0]
    with torch.no_grad():
        torch.testing.assert_close(vis_in[1], block0(vis_in[0]), rtol=1e-5, atol=1e-5)


def test_vpt_fixed_text_and_vision_prompts(tiny_clip, tokenizer, images):
    torch.manual_seed(0)
    model = VPTModel(tiny_clip, tokenizer, CLASSES, method_cfg("VPT", N_CTX_VISION=4, PROMPT_DEPTH_VISION=12))
    assert len(model.prompt_learner.visual_prompts) == 11
    with torch.no_grad():
        text = F.normalize(tiny_clip.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    torch.testing.assert_close(model.text_features, text, rtol=1e-5, atol=1e-5)
    logits, _, vis_in = run_with_capture(model, images)
    torch.testing.assert_close(vis_in[11][:, -4:], model.prompt_learner.visual_prompts[10].expand(2, -1, -1))


@pytest.mark.parametrize("model_cls,key,kw", [
    (MaPLeModel, "MAPLE", {}),
    (IVLPModel, "IVLP", {}),
    (VPTModel, "VPT", {"PROMPT_DEPTH_VISION": 4}),
])
def test_short_training_lowers_loss(tiny_clip, tokenizer, model_cls, key, kw):
    torch.manual_seed(0)
    model = model_cls(tiny_clip, tokenizer, CLASSES, method_cfg(key, **kw))
    params = list(model.prompt_learner.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    # one flat colour per class: the random tiny CLIP tells these apart, not random noise images
    images, labels = torch.randn(4, 3, 1, 1).expand(4, 3, 224, 224) * 2, torch.arange(4)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # deterministic (seeded); VPT drops least (~10%): its fixed text features of a random CLIP are nearly equal
    assert losses[-1] < 0.95 * losses[0]
    assert all(p.grad is not None for p in params)


def test_depth_larger_than_tower_fails(tiny_clip, tokenizer):
    with pytest.raises(ValueError, match="PROMPT_DEPTH is 13; it must be between 1 and the 12 layers"):
        MaPLeModel(tiny_clip, tokenizer, CLASSES, method_cfg("MAPLE", PROMPT_DEPTH=13))


# ---- official checkpoints through the CLI -------------------------------------------------------------
DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4",
        "OPTIM.MAX_EPOCH", "1", "TEST.SAVE_LOGITS", "True"]
OFFICIAL = {
    "MaPLe": ("configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MultiModalPromptLearner",
              lambda k: "prompt_learner." + k),
    "IVLP": ("configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml", "VLPromptLearner",
             lambda k: {"ctx": "prompt_learner.ctx", "visual_ctx": "image_encoder.VPT"}.get(k) or (
                 "{}_encoder.transformer.resblocks.{}.VPT_shallow".format(
                     "image" if k.startswith("visual") else "text", int(k.split(".")[1]) + 1))),
    "VPT": ("configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml", "prompt_learner",
            lambda k: "image_encoder.VPT" if k == "visual_ctx" else
            f"image_encoder.transformer.resblocks.{int(k.split('.')[1]) + 1}.VPT_shallow"),
}


def train(trainer, data_root, out, *extra):
    config, _, _ = OFFICIAL[trainer]
    argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", os.path.join(REPO, config), "--output-dir", str(out), *extra, *FAST]
    assert cli.main(argv) == 0


@pytest.mark.parametrize("trainer", list(OFFICIAL))
def test_official_whole_model_checkpoint_reloads_to_same_logits(trainer, tmp_path, tiny_clip):
    data_root = str(tmp_path / "data")
    ours = tmp_path / "ours"
    train(trainer, data_root, ours)
    _, folder, official_key = OFFICIAL[trainer]
    trained = torch.load(ours / folder / "model.pth.tar-1", weights_only=False)["state_dict"]
    assert 0 < len(trained) and all(not k.startswith(("image_encoder", "text_encoder")) for k in trained)
    # an official checkpoint: whole-model state dict with the frozen CLIP and prompt buffers inside
    whole = {official_key(k): v for k, v in trained.items()}
    whole.update({"image_encoder." + k: v for k, v in tiny_clip.visual.state_dict().items()})
    whole.update({"text_encoder.transformer." + k: v for k, v in tiny_clip.transformer.state_dict().items()})
    whole["logit_scale"] = tiny_clip.logit_scale.detach()
    if trainer != "VPT":
        whole["prompt_learner.token_prefix"] = torch.zeros(10, 1, 48)
        whole["prompt_learner.token_suffix"] = torch.zeros(10, 70, 48)
    (tmp_path / "official" / folder).mkdir(parents=True)
    torch.save({"state_dict": whole, "epoch": 5, "optimizer": None, "scheduler": None},
               tmp_path / "official" / folder / "model.pth.tar-5")
    ev = tmp_path / "eval"
    train(trainer, data_root, ev, "--eval-only", "--model-dir", str(tmp_path / "official"), "--load-epoch", "5")
    torch.testing.assert_close(torch.load(ev / "logits.pt")["logits"], torch.load(ours / "logits.pt")["logits"],
                               rtol=0, atol=0)

    whole["prompt_learner.bogus"] = torch.zeros(1)
    torch.save({"state_dict": whole, "epoch": 5}, tmp_path / "official" / folder / "model.pth.tar-6")
    with pytest.raises(KeyError, match="unexpected keys \\['prompt_learner.bogus'\\]"):
        train(trainer, data_root, tmp_path / "eval2", "--eval-only", "--model-dir", str(tmp_path / "official"),
              "--load-epoch", "6", "--debug")  # --debug: the CLI raises instead of printing one message
