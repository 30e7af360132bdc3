"""CLIP weights: fetched through open_clip (mocked: nothing here reaches the network), PRETRAINED tags and hf-hub
names resolved from local caches, every trainer on a GELU tower of other widths, and refused towers."""
import json

import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained
from torch import nn

from vlprompt.clip import check_prompted_clip, get_tokenizer, load_clip
from vlprompt.clip import load as clip_load

OFFICIAL_B16_URL = ("https://openaipublic.azureedge.net/clip/models/"
                    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
# a tiny CLIP with GELU (not QuickGELU) and widths unlike ViT-B/16's (and unlike vlprompt-tiny's)
TINY_GELU = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 3, "width": 40, "head_width": 20,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Fetching allowed (the download itself is mocked by each test); ~ and the HF cache in tmp_path."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VLPROMPT_OFFLINE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def no_network(*args, **kwargs):
    raise AssertionError("the network was reached")


def test_official_url_fetched_into_the_official_cache(online, monkeypatch):
    calls = []

    def fake_download(url, cache_dir=None):
        calls.append((url, cache_dir))
        return f"{cache_dir}/ViT-B-16.pt"

    def fake_hub(model_id, filename=None, revision=None, cache_dir=None):
        calls.append(("hub", model_id, filename))
        return "/hf/open_clip_model.safetensors"

    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_url", fake_download)
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_hf", fake_hub)
    path = clip_load.fetch_weights("ViT-B/16")
    cache = online / "home" / ".cache" / "clip"
    assert calls == [(OFFICIAL_B16_URL, str(cache))]  # the URL clip.load uses, into ~/.cache/clip as it does
    assert path == cache / "ViT-B-16.pt"
    # a tag with only a Hugging Face entry goes through open_clip's hub download (into the HF cache)
    calls.clear()
    assert str(clip_load.fetch_weights("ViT-B-16", "laion2b_s34b_b88k")) == "/hf/open_clip_model.safetensors"
    assert calls == [("hub", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", None)]


def fake_tag(monkeypatch, arch, tag, entry):
    table = dict(oc_pretrained._PRETRAINED.get(arch, {}))
    table[tag] = entry
    monkeypatch.setitem(oc_pretrained._PRETRAINED, arch, table)


def perturbed_state(arch):
    torch.manual_seed(123)
    model = open_clip.create_model(arch)
    return {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_mocked_download_file_is_loaded_and_offline_lists_paths(online, monkeypatch):
    clip_load._register_configs()
    url = "https://openaipublic.azureedge.net/clip/models/0123abcd/vlprompt-tiny.pt"
    fake_tag(monkeypatch, "vlprompt-tiny", "fake", {"url": url, "hf_hub": ""})
    state = perturbed_state("vlprompt-tiny")
    calls = []

    def fake_download(url, cache_dir=None):
        calls.append(url)
        target = f"{cache_dir}/vlprompt-tiny.pt"
        torch.save(state, target)
        return target

    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_url", fake_download)
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_clip("vlprompt-tiny", pretrained="fake")
    assert str(online / "home" / ".cache" / "clip" / "vlprompt-tiny.pt") in str(err.value)
    assert "VLPROMPT_OFFLINE" in str(err.value) and not calls
    monkeypatch.delenv("VLPROMPT_OFFLINE")
    model = load_clip("vlprompt-tiny", pretrained="fake")
    assert calls == [url]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    load_clip("vlprompt-tiny", pretrained="fake")  # now read from the cache: no second download
    assert calls == [url]


def fabricate_hf_cache(root, repo, files):
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "0000000000000000000000000000000000000001"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(snapshot.name)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


def test_pretrained_tag_resolves_from_the_hf_cache(online, monkeypatch):
    snapshot = fabricate_hf_cache(online / "hf", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
                                  {"open_clip_model.safetensors": lambda p: p.write_bytes(b"x")})
    arch, tag, _ = clip_load.resolve_pretrained("ViT-B-16", "laion2b_s34b_b88k")
    assert (arch, tag) == ("ViT-B-16", "laion2b_s34b_b88k")  # GELU: LAION's weights are not QuickGELU
    assert clip_load.weight_candidates("ViT-B-16", "laion2b_s34b_b88k")[0] == snapshot / "open_clip_model.safetensors"
    # OpenAI's weights on the GELU name get the QuickGELU architecture they were trained with
    assert clip_load.resolve_pretrained("ViT-B-16", "openai")[0] == "ViT-B-16-quickgelu"
    with pytest.raises(ValueError, match="datacomp_xl_s13b_b90k"):  # a wrong tag lists the right ones
        clip_load.resolve_pretrained("ViT-B-16", "laion2b")

    # end to end on a tiny architecture with a fabricated hub entry: the cached file is loaded, nothing fetched
    from safetensors.torch import save_file

    clip_load._register_configs()
    state = perturbed_state("vlprompt-tiny")
    fabricate_hf_cache(online / "hf", "test-org/tiny-tagged",
                       {"open_clip_model.safetensors": lambda p: save_file(state, str(p))})
    fake_tag(monkeypatch, "vlprompt-tiny", "tagged", {"url": "", "hf_hub": "test-org/tiny-tagged/"})
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_url", no_network)
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_hf", no_network)
    model = load_clip("vlprompt-tiny", pretrained="tagged")
    torch.testing.assert_close(model.logit_scale, state["logit_scale"], rtol=0, atol=0)


@pytest.fixture
def tiny_gelu_hub(online, monkeypatch, tmp_path):
    """'hf-hub:test-org/tiny-gelu' in a fabricated Hugging Face cache: an open_clip config and its weights."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    reference = open_clip.model.CLIP(**TINY_GELU)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "vlprompt-cache"))
    fabricate_hf_cache(online / "hf", "test-org/tiny-gelu", {
        "open_clip_config.json": lambda p: p.write_text(json.dumps({"model_cfg": TINY_GELU})),
        "open_clip_model.safetensors": lambda p: save_file(state, str(p))})
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_hf", no_network)
    monkeypatch.setattr(oc_pretrained, "download_pretrained_from_url", no_network)
    return state


def test_hf_hub_name_loads_from_the_cache(tiny_gelu_hub):
    model = load_clip("hf-hub:test-org/tiny-gelu")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, tiny_gelu_hub[key], rtol=0, atol=0)
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, nn.GELU)
    assert get_tokenizer("hf-hub:test-org/tiny-gelu")(["a photo"]).shape == (1, 77)


def trainer_names():
    from vlprompt.engine.trainer import TRAINER_REGISTRY
    import vlprompt.trainers  # noqa: F401

    return TRAINER_REGISTRY.names()


@pytest.mark.parametrize("name", trainer_names())
def test_every_trainer_on_a_gelu_tower_of_other_widths(tiny_gelu_hub, name):
    from vlprompt.config import get_cfg_default
    from vlprompt.engine.trainer import TRAINER_REGISTRY
    from vlprompt.predict import _ClassesOnly

    cfg = get_cfg_default()
    cfg.TRAINER.NAME = name
    cfg.MODEL.BACKBONE.NAME = "hf-hub:test-org/tiny-gelu"
    cfg.INPUT.SIZE = (32, 32)
    cfg.DEVICE = "cpu"
    for key in ("PROMPT_DEPTH", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION"):  # the tower has 3 layers
        for node in cfg.TRAINER.values():
            if hasattr(node, "keys") and key in node:
                node[key] = min(node[key], 3)
    if "HICROPL" in cfg.TRAINER:
        cfg.TRAINER.HICROPL.CROSS_LAYER = 1
        cfg.TRAINER.HICROPL.TEACHER_NAME = cfg.MODEL.BACKBONE.NAME
    trainer = TRAINER_REGISTRY.get(name)(cfg, dm=_ClassesOnly(["red circle", "blue square", "green cross"]))
    blocks = trainer.model.text_encoder.transformer.resblocks
    assert isinstance(blocks[0].mlp.gelu, nn.GELU) and trainer.model.text_encoder.width == 32
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        logits = trainer.model_inference(images, trainer.inference_state())
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    if trainer.get_model_names():  # one training step moves the learned parameters
        name0 = trainer.get_model_names()[0]
        before = {k: v.clone() for k, v in trainer.trainable_state_dict(name0).items()}
        trainer.set_model_mode("train")
        trainer.epoch = trainer.batch_idx = trainer.num_batches = 0
        views = [images, images.flip(-1)] if name.startswith("CoPrompt") else images  # CoPrompt: two views
        summary = trainer.forward_backward({"img": views, "label": labels})
        assert torch.isfinite(torch.tensor(summary["loss"]))
        after = trainer.trainable_state_dict(name0)
        assert any(not torch.equal(before[k], after[k]) for k in before)


def test_towers_the_prompted_encoders_cannot_serve_are_refused():
    from vlprompt.clip import PromptedImageEncoder

    def tiny(**vision):
        cfg = json.loads(json.dumps(TINY_GELU))
        cfg["vision_cfg"].update(vision)
        return open_clip.model.CLIP(**cfg)

    with pytest.raises(ValueError, match=r"pools with attention \(attn_pool\)"):
        check_prompted_clip(tiny(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4))
    with pytest.raises(ValueError, match="pools by 'avg', not the class token"):
        PromptedImageEncoder(tiny(pool_type="avg"))
    text_last = json.loads(json.dumps(TINY_GELU))
    text_last["text_cfg"]["pool_type"] = "last"
    with pytest.raises(ValueError, match="pools at 'last', not at the EOT token"):
        check_prompted_clip(open_clip.model.CLIP(**text_last))
    resnet = open_clip.model.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 8,
                                                            "head_width": 8}, text_cfg=TINY_GELU["text_cfg"]).eval()
    encoder = PromptedImageEncoder(resnet)  # a ResNet serves methods without vision prompts...
    assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 16)
    with pytest.raises(NotImplementedError, match="no class token and pools with attention"):
        encoder(torch.randn(1, 3, 32, 32), prompts=torch.zeros(2, 8))  # ...and is refused with them
