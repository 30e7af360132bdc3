"""HiCroPL against an independent recomputation written from the method's definition on open_clip's blocks."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from vlprompt import cli
from vlprompt.clip import load_clip
from vlprompt.config import get_cfg_default
from vlprompt.datasets.synthetic import CLASSES as SYNTHETIC
from vlprompt.trainers.hicropl import HiCroPLModel, teacher_text_features

from conftest import REPO

CLASSES = ["dog", "golden_retriever", "car", "red wine"]
DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
SYNTHETIC_CLASSES = [f"{colour} {shape}" for colour, _, shape in SYNTHETIC]
CONFIGS = {"base2new": "configs/trainers/HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml",
           "cross_dataset": "configs/trainers/HiCroPL/vit_b16_c2_ep5_batch32_2ctx_cross_datasets.yaml"}
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "TRAINER.HICROPL.TEACHER_NAME", "vlprompt-tiny",
        "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "7", "TEST.SAVE_LOGITS", "True"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def hicropl_cfg(**kw):
    c = get_cfg_default().TRAINER.HICROPL.clone()
    c.update(N_CTX=2, PROMPT_DEPTH=5, CROSS_LAYER=2)
    c.update(kw)
    return c


def make_model(clip, tokenizer, seed=0, teacher_image_encoder=None, **kw):
    torch.manual_seed(seed)
    teacher_text = F.normalize(torch.randn(len(CLASSES), clip.visual.output_dim), dim=-1)
    model = HiCroPLModel(clip, tokenizer, CLASSES, hicropl_cfg(**kw), teacher_text, teacher_image_encoder)
    with torch.no_grad():  # distinct values per layer (the official init repeats one draw)
        for p in list(model.prompt_learner.cross_prompts_visual) + list(model.prompt_learner.text_proxy_token):
            p.add_(0.05 * torch.randn_like(p))
    return model


# ---- the reference: written out from the definitions, nothing of the trainer's code ----

def ref_attention(mha, q, k, v):
    """nn.MultiheadAttention's output from its weights, head by head."""
    d = mha.embed_dim
    h = mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(d)
    bq, bk, bv = mha.in_proj_bias.split(d)
    qs, ks, vs = (q @ wq.t() + bq), (k @ wk.t() + bk), (v @ wv.t() + bv)
    heads = []
    for i in range(h):
        sl = slice(i * d // h, (i + 1) * d // h)
        w = torch.softmax(qs[:, sl] @ ks[:, sl].t() / math.sqrt(d // h), dim=-1)
        heads.append(w @ vs[:, sl])
    return torch.cat(heads, dim=1) @ mha.out_proj.weight.t() + mha.out_proj.bias


def ref_proxy(lkp, query, prompts):
    kv = lkp.ln_1(prompts)
    return lkp.ln_2(query + ref_attention(lkp.attn, lkp.ln_1(query), kv, kv))


def ref_mapper(m, queries, keys):
    q = m.linear_q(queries)
    q = q + ref_attention(m.attn, m.ln_1(q), m.ln_1(m.linear_k(keys)), m.ln_1(m.linear_v(keys)))
    hidden = m.ffn.c_fc(m.ln_2(q))
    return q + m.ffn.c_proj(hidden * torch.sigmoid(1.702 * hidden))


def ref_layer_prompts(pl):
    k, depth, n = pl.cross_layer, pl.depth, pl.n_ctx
    text = [p.detach().clone() for p in pl.cross_prompts_text]
    vision = [p.detach().clone() for p in pl.cross_prompts_visual]
    if k > 0:
        proxies = torch.cat([ref_proxy(pl.attn_pooling_text_nets[i], pl.text_proxy_token[i], text[i])
                             for i in range(k)])
        out = ref_mapper(pl.text2visual_net, torch.cat(vision[:k]), proxies)
        vision[:k] = [out[i * n:(i + 1) * n] for i in range(k)]
    if k < depth:
        proxies = torch.cat([ref_proxy(pl.attn_pooling_visual_nets[i - k], pl.visual_proxy_token[i - k],
                                       vision[i]) for i in range(k, depth)])
        out = ref_mapper(pl.visual2text_net, torch.cat(text[k:]), proxies)
        text[k:] = [out[(i - k) * n:(i - k + 1) * n] for i in range(k, depth)]
    return text, vision


def ref_forward(clip, tokenizer, model, images):
    """(logits, fused text, fused image, teacher image) on the full 77-position open_clip towers."""
    pl = model.prompt_learner
    n, depth = pl.n_ctx, pl.depth
    text_p, vision_p = ref_layer_prompts(pl)
    tokens = tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    x = clip.token_embedding(tokens).clone()
    x[:, 1:1 + n] = text_p[0]
    x = x + clip.positional_embedding
    for i, blk in enumerate(clip.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:, :1], text_p[i].expand(len(x), -1, -1), x[:, 1 + n:]], dim=1)
        x = blk(x, attn_mask=clip.attn_mask)
    text = clip.ln_final(x[torch.arange(len(x)), tokens.argmax(-1)]) @ clip.text_projection

    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(torch.cat([x, vision_p[0].expand(len(x), -1, -1)], 1))
    for i, blk in enumerate(v.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:, :-n], vision_p[i].expand(len(x), -1, -1)], dim=1)
        x = blk(x)
    image = v.ln_post(x[:, 0]) @ v.proj
    teacher = F.normalize(clip.encode_image(images), dim=-1)
    image = F.normalize(F.normalize(image, dim=-1) + teacher, dim=-1)
    text = F.normalize(F.normalize(text, dim=-1) + model.teacher_text, dim=-1)
    return clip.logit_scale.exp() * image @ text.t(), text, image, teacher


@pytest.mark.parametrize("cross_layer", [2, 0, 5])
def test_mapper_proxies_and_fused_features_equal_recomputation(tiny_clip, tokenizer, cross_layer):
    model = make_model(tiny_clip, tokenizer, CROSS_LAYER=cross_layer).eval()
    pl = model.prompt_learner
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        text, vision = pl.layer_prompts()
        ref_text, ref_vision = ref_layer_prompts(pl)
        for ours, ref in zip(text + vision, ref_text + ref_vision):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # each direction changes exactly its own layers
        k = cross_layer
        assert all(not torch.allclose(vision[i], pl.cross_prompts_visual[i]) for i in range(k))
        assert all(torch.equal(vision[i], pl.cross_prompts_visual[i]) for i in range(k, 5))
        assert all(torch.equal(text[i], pl.cross_prompts_text[i]) for i in range(k))
        assert all(not torch.allclose(text[i], pl.cross_prompts_text[i]) for i in range(k, 5))

        logits, ref_txt, ref_img, teacher = ref_forward(tiny_clip, tokenizer, model, images)
        state = model.class_state()
        image, ours_teacher = model.image_features(images, state)
        torch.testing.assert_close(state["text"], ref_txt, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(image, ref_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours_teacher, teacher, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(images), logits, rtol=1e-4, atol=1e-4)

        labels = torch.tensor([0, 3, 1])
        _, loss = model.loss(images, labels, lambd=12.0)
        expected = F.cross_entropy(logits, labels) + 12.0 * (
            (1 - (ref_txt * model.teacher_text).sum(-1).mean()) + (1 - (ref_img * teacher).sum(-1).mean()))
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def mapper_parts(pl):
    return {n: p for n, p in pl.named_parameters()
            if n.split(".")[0] in ("text2visual_net", "visual2text_net", "attn_pooling_text_nets",
                                   "attn_pooling_visual_nets", "text_proxy_token", "visual_proxy_token")}


def test_default_mode_trains_mapper_and_never_writes_parameters(tiny_clip, tokenizer):
    model = make_model(tiny_clip, tokenizer)
    pl = model.prompt_learner.train()
    before = {n: p.detach().clone() for n, p in pl.named_parameters()}
    _, loss = model.loss(torch.randn(2, 3, 224, 224), torch.tensor([1, 2]), lambd=12.0)
    for n, p in pl.named_parameters():
        assert torch.equal(p, before[n]), f"the forward wrote {n}"
    loss.backward()
    parts = mapper_parts(pl)
    assert len(parts) > 20
    for n, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {n}"
    # evaluation twice on the same images: identical
    pl.eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)


def test_official_mode_writes_before_each_step_and_leaves_mapper_untrained(tiny_clip, tokenizer):
    model = make_model(tiny_clip, tokenizer, MAPPER_MODE="official")
    pl = model.prompt_learner.train()
    ref_text, ref_vision = ref_layer_prompts(pl)
    pl.write_mapped_prompts()
    for p, ref in zip(list(pl.cross_prompts_text) + list(pl.cross_prompts_visual), ref_text + ref_vision):
        torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-5)
    _, loss = model.loss(torch.randn(2, 3, 224, 224), torch.tensor([1, 2]), lambd=12.0)
    loss.backward()
    assert all(p.grad is None for p in mapper_parts(pl).values())
    assert all(p.grad is not None for p in list(pl.cross_prompts_text) + list(pl.cross_prompts_visual))
    # training uses the written parameters as they are; evaluation maps them once more, without writing
    text, vision = pl.layer_prompts()
    assert all(a is b for a, b in zip(text + vision, list(pl.cross_prompts_text) + list(pl.cross_prompts_visual)))
    pl.eval()
    stored = [p.detach().clone() for p in pl.parameters()]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        first = model(images)
        torch.testing.assert_close(model(images), first, rtol=0, atol=0)
        ref_logits = ref_forward(tiny_clip, tokenizer, model, images)[0]
    torch.testing.assert_close(first, ref_logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(stored, pl.parameters()))


def test_official_mode_training_step_through_trainer(tmp_path):
    """Official dynamics from the CLI: the optimizer only ever steps the prompts, never mapper, LKPs or proxies."""
    data = str(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--root", data, "--seed", "1", "--trainer", "HiCroPL", "--dataset-config-file", DATASET_CFG,
            "--config-file", os.path.join(REPO, CONFIGS["cross_dataset"]), "--output-dir", str(out),
            *FAST, "TRAINER.HICROPL.MAPPER_MODE", "official", "DATASET.NUM_SHOTS", "1",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "10", "TEST.NO_TEST", "True",
            "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1"]
    assert cli.main(argv) == 0
    state = torch.load(out / "VLPromptLearner/model.pth.tar-1", weights_only=False)  # a resume point: has Adam
    adam = state["optimizer"]["state"]
    names = list(state["state_dict"])
    # Adam holds moments only for parameters that had gradients: the prompts, never mapper/LKP/proxies
    stepped = {names[i].split(".")[0] for i in adam}
    assert stepped == {"cross_prompts_text", "cross_prompts_visual"}


def test_descriptions_file_folder_and_template_fallback(tiny_clip, tokenizer, tmp_path, cache, capsys):
    from vlprompt.clip.encoders import PromptedTextEncoder
    from vlprompt.trainers.hicropl import find_descriptions

    encoder = PromptedTextEncoder(tiny_clip)
    sentences = {"dog": ["a dog barks.", "a furry pet."], "golden retriever": ["a golden dog."],
                 "car": ["a car on a road.", "a red car.", "wheels."], "red wine": ["a glass of wine."]}
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(sentences))

    def independent(per_class):
        with torch.no_grad():
            return torch.stack([F.normalize(F.normalize(tiny_clip.encode_text(tokenizer(s)), dim=-1).mean(0), dim=0)
                                for s in per_class])

    feats = teacher_text_features(encoder, tokenizer, CLASSES, path, "Toy")
    want = independent([sentences[c.replace("_", " ")] for c in CLASSES])
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)
    cached = list((cache / "hicropl_text").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("Toy-")
    # the cache is used again, and a change of descriptions or of class list makes a new entry
    assert torch.equal(teacher_text_features(encoder, tokenizer, CLASSES, path, "Toy"), feats)
    assert "from the cache" in capsys.readouterr().out
    sentences["car"] = ["a truck."]
    path.write_text(json.dumps(sentences))
    changed = teacher_text_features(encoder, tokenizer, CLASSES, path, "Toy")
    assert not torch.allclose(changed[2], feats[2]) and torch.allclose(changed[0], feats[0], atol=1e-6)
    teacher_text_features(encoder, tokenizer, CLASSES[:2], path, "Toy")
    assert len(list((cache / "hicropl_text").iterdir())) == 3

    # a folder named as the official gpt_file/, and the template fallback
    folder = tmp_path / "gpt_file"
    folder.mkdir()
    (folder / "oxford_pets_prompt.json").write_text(json.dumps(sentences))
    assert find_descriptions(str(folder), "OxfordPets") == folder / "oxford_pets_prompt.json"
    with pytest.raises(FileNotFoundError, match="has no eurosat_prompt.json for EuroSAT"):
        find_descriptions(str(folder), "EuroSAT")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_descriptions(str(tmp_path / "nope.json"), "EuroSAT")
    assert find_descriptions("", "EuroSAT") is None  # no gpt_file/ in the working folder
    fallback = teacher_text_features(encoder, tokenizer, CLASSES, None, "Toy")
    want = independent([[t(c.replace("_", " ")) for t in OPENAI_IMAGENET_TEMPLATES] for c in CLASSES])
    torch.testing.assert_close(fallback, want, rtol=1e-5, atol=1e-6)

    del sentences["red wine"]
    path.write_text(json.dumps(sentences))
    with pytest.raises(ValueError, match="has no sentences for 'red wine'"):
        teacher_text_features(encoder, tokenizer, CLASSES, path, "Toy")


def trainer_params(tmp_path, *extra):
    """Parameter count of a built HiCroPL model (unique tensors) and of the tiny CLIP."""
    from vlprompt.config import get_cfg_default as cfg_default
    from vlprompt.engine.trainer import TRAINER_REGISTRY

    cfg = cfg_default()
    cfg.merge_from_file(DATASET_CFG)
    cfg.merge_from_file(os.path.join(REPO, CONFIGS["cross_dataset"]))
    cfg.merge_from_list(FAST + list(extra))
    cfg.DATASET.ROOT = str(tmp_path / "data")
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = TRAINER_REGISTRY.get("HiCroPL")(cfg)
    model = trainer.model
    return sum(p.numel() for p in model.parameters()), model


def test_teacher_equal_to_backbone_is_not_loaded_twice(tmp_path, tiny_clip):
    clip_params = sum(p.numel() for p in tiny_clip.parameters())
    total, model = trainer_params(tmp_path)
    learner = sum(p.numel() for p in model.prompt_learner.parameters())
    assert model.teacher_image_encoder is None
    assert total == clip_params + learner
    # another teacher (here the same architecture from a weight file) adds its image tower, frozen
    weights = tmp_path / "teacher.pt"
    torch.save(tiny_clip.state_dict(), weights)
    total2, model2 = trainer_params(tmp_path, "TRAINER.HICROPL.TEACHER_PATH", str(weights))
    visual = sum(p.numel() for p in tiny_clip.visual.parameters())
    assert total2 == clip_params + learner + visual
    assert not any(p.requires_grad for p in model2.teacher_image_encoder.parameters())


def run(out, data, config, *extra, flags=()):
    argv = ["--root", data, "--seed", "1", "--trainer", "HiCroPL", "--dataset-config-file", DATASET_CFG,
            "--config-file", os.path.join(REPO, CONFIGS[config]), "--output-dir", str(out), *flags, *FAST, *extra]
    assert cli.main(argv) == 0
    with open(out / "metrics.json") as f:
        return json.load(f)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_cli_with_official_configs_and_official_checkpoint(config, tmp_path, tiny_clip, capsys):
    data = str(tmp_path / "data")
    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({c: [f"a photo of {c}.", f"{c}, seen up close."] for c in SYNTHETIC_CLASSES}))
    with_file = config == "base2new"  # one config with a descriptions file, the other with the fallback
    extra = ["TRAINER.HICROPL.DESCRIPTIONS", str(descriptions)] if with_file else []
    ours = tmp_path / "ours"
    run(ours, data, config, *extra)
    log = capsys.readouterr().out
    assert ("class descriptions in" in log) == with_file and ("80 ImageNet templates" in log) != with_file
    trained = torch.load(ours / "VLPromptLearner/model.pth.tar-1", weights_only=False)["state_dict"]
    assert all(k.split(".")[0] in ("cross_prompts_text", "cross_prompts_visual", "text2visual_net",
                                   "visual2text_net", "attn_pooling_text_nets", "attn_pooling_visual_nets",
                                   "text_proxy_token", "visual_proxy_token") for k in trained)

    # the official checkpoint: the whole CustomCLIP, teacher and duplicate ctx included
    whole = {"prompt_learner." + k: v for k, v in trained.items()}
    whole["prompt_learner.ctx"] = trained["cross_prompts_text.0"]
    whole.update({"prompt_learner.ZS_image_encoder." + k: v for k, v in tiny_clip.visual.state_dict().items()})
    whole.update({"image_encoder." + k: v for k, v in tiny_clip.visual.state_dict().items()})
    whole.update({"text_encoder.transformer." + k: v for k, v in tiny_clip.transformer.state_dict().items()})
    whole["logit_scale"] = tiny_clip.logit_scale.detach()
    whole["prompt_learner.token_prefix"] = torch.zeros(10, 1, 48)
    whole["prompt_learner.token_suffix"] = torch.zeros(10, 60, 48)
    (tmp_path / "official/VLPromptLearner").mkdir(parents=True)
    torch.save({"state_dict": whole, "epoch": 50, "optimizer": None, "scheduler": None},
               tmp_path / "official/VLPromptLearner/model-best.pth.tar")
    ev = tmp_path / "eval"
    metrics = run(ev, data, config, *extra, flags=["--eval-only", "--model-dir", str(tmp_path / "official")])
    torch.testing.assert_close(torch.load(ev / "logits.pt")["logits"], torch.load(ours / "logits.pt")["logits"],
                               rtol=0, atol=0)
    assert metrics["accuracy"] == json.loads((ours / "metrics.json").read_text())["accuracy"]


def test_bad_settings_are_named(tiny_clip, tokenizer):
    with pytest.raises(ValueError, match="MAPPER_MODE must be one of differentiable, official"):
        make_model(tiny_clip, tokenizer, MAPPER_MODE="written")
    with pytest.raises(ValueError, match="CROSS_LAYER is 7; it must be between 0 and PROMPT_DEPTH \\(5\\)"):
        make_model(tiny_clip, tokenizer, CROSS_LAYER=7)
