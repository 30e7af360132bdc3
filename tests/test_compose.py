"""Prompt structures under objectives: PromptSRC and CoPrompt over IVLP, MaPLe and BMIP (tiny CLIP, CPU).

Loss terms are recomputed here from the towers' outputs with open_clip and plain tensor formulas, not through the
objectives' code; GPA against the official Gaussian formula; resume, official checkpoints, one frozen CLIP."""
import json
import math
import os
import random

import pytest
import torch
import yaml

from vlprompt import cli
from vlprompt.config import get_cfg_default, merge_from_file, merge_from_list
from vlprompt.datasets.synthetic import CLASSES as SYNTHETIC
from vlprompt.engine.trainer import TRAINER_REGISTRY, TrainerBase
from vlprompt.trainers import promptsrc
from vlprompt.trainers.promptsrc import TEMPLATE_SETS, gpa_weights

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
CONFIGS = {
    "PromptSRC": os.path.join(REPO, "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"),
    "PromptSRC_BMIP": os.path.join(REPO, "configs/trainers/PromptSRC_BMIP/vit_bitp_ctx4_ep20TT_adam_PromptSRC.yaml"),
    "CoPrompt": os.path.join(REPO, "configs/trainers/CoPrompt/coprompt.yaml"),
    "CoPrompt_BMIP": os.path.join(REPO, "configs/trainers/CoPrompt/coprompt.yaml"),
    "IVLP": os.path.join(REPO, "configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml"),
    "MaPLe": os.path.join(REPO, "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"),
    "BMIP": os.path.join(REPO, "configs/trainers/BMIP/BMIP_ctx2_dp9_lr2.yaml"),
}
CLASSNAMES = [f"{colour} {shape}" for colour, _, shape in SYNTHETIC]
# small prompts for the tiny CLIP, and a small run
SMALL = {
    "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3",
                  "TRAINER.PROMPTSRC.PROMPT_DEPTH", "3"],
    "CoPrompt": ["TRAINER.CoPrompt.PROMPT_DEPTH", "3"],
}
SMALL["PromptSRC_BMIP"], SMALL["CoPrompt_BMIP"] = SMALL["PromptSRC"], SMALL["CoPrompt"]
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
        "DATALOADER.TEST.BATCH_SIZE", "20", "TEST.FINAL_MODEL", "last_step"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def descriptions(tmp_path_factory):
    """Two descriptions per Synthetic class."""
    path = tmp_path_factory.mktemp("gpt") / "descriptions.json"
    path.write_text(json.dumps({c: [f"a drawing of a {c}.", f"a {c} on a grey background."] for c in CLASSNAMES}))
    return str(path)


def run(data_root, out, trainer, *extra, flags=()):
    argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", CONFIGS[trainer], "--output-dir", str(out), *flags, *FAST, *SMALL.get(trainer, []),
            *extra]
    return cli.main(argv)


def build_trainer(data_root, trainer, *opts, out="unused"):
    cfg = get_cfg_default()
    merge_from_file(cfg, DATASET_CFG)
    merge_from_file(cfg, CONFIGS[trainer])
    merge_from_list(cfg, FAST + SMALL.get(trainer, []) + list(opts))
    cfg.DATASET.ROOT, cfg.OUTPUT_DIR, cfg.TRAINER.NAME, cfg.SEED = data_root, str(out), trainer, 1
    cfg.freeze()
    return TRAINER_REGISTRY.get(trainer)(cfg)


def fixed_batch(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 224, 224, generator=g), torch.tensor([0, 4, 7][:n])


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def same_clip(model, clip):
    return torch.equal(model.image_encoder.visual.conv1.weight, clip.visual.conv1.weight)


# ---- PromptSRC ----------------------------------------------------------------------------------------------
def test_promptsrc_templates_are_the_official_60():
    sixty = [t("{}") for t in TEMPLATE_SETS["promptsrc60"]]
    assert len(sixty) == 60 and len(set(sixty)) == 60 and len(TEMPLATE_SETS["clip80"]) == 80
    # first and last of the official list; two of the 20 CLIP templates PromptSRC leaves out
    assert "a photo of a {}." in sixty and "itap of the {}." in sixty
    assert "itap of a {}." not in sixty and "a tattoo of the {}." not in sixty


@pytest.mark.parametrize("trainer,foundation", [("PromptSRC", "IVLP"), ("PromptSRC", "MaPLe"),
                                                ("PromptSRC_BMIP", "BMIP")])
def test_promptsrc_loss_terms_equal_independent_computation(data_root, tiny_clip, tokenizer, trainer, foundation):
    t = build_trainer(data_root, trainer, *(["TRAINER.PROMPTSRC.FOUNDATION", foundation]
                                           if trainer == "PromptSRC" else []))
    model, objective = t.model, t.objective_impl
    assert same_clip(model, tiny_clip) and type(model).__name__ == f"{foundation}Model"
    images, labels = fixed_batch()
    with torch.no_grad():
        _, loss = objective.loss(model, images, labels)
        state = model.class_state()  # the prompted towers' outputs
        text, image = state["text"], model.encode_image(images, state)
        templates = TEMPLATE_SETS["promptsrc60" if trainer == "PromptSRC" else "clip80"]
        targets = torch.stack([tiny_clip.encode_text(tokenizer([tmpl(c) for tmpl in templates])).mean(0)
                               for c in CLASSNAMES])
        frozen_image = tiny_clip.encode_image(images)
    torch.testing.assert_close(model.text_targets, targets, rtol=1e-5, atol=1e-6)  # unnormalised mean
    scale = tiny_clip.logit_scale.exp()
    z = scale * normalize(image) @ normalize(text).t()
    z0 = scale * normalize(frozen_image) @ normalize(targets).t()
    ce = -torch.log_softmax(z, 1)[torch.arange(3), labels].mean()
    text_l1 = (normalize(text) - normalize(targets)).abs().mean()
    image_l1 = (normalize(image) - normalize(frozen_image)).abs().mean()
    p0 = torch.softmax(z0, 1)
    kl = (p0 * (torch.log(p0) - torch.log_softmax(z, 1))).sum() / (3 * len(CLASSNAMES))
    torch.testing.assert_close(loss, ce + 25 * text_l1 + 10 * image_l1 + kl, rtol=1e-5, atol=1e-6)


def official_gauss(mean, std, epochs):
    pdf = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    return [p / sum(pdf) for p in pdf]


@pytest.mark.parametrize("name", ["vit_b16_c2_ep20_batch4_4+4ctx.yaml", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml",
                                  "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"])
def test_gpa_weights_equal_the_official_gaussian(name):
    c = yaml.safe_load(open(os.path.join(REPO, "configs/trainers/PromptSRC", name)))
    epochs, node = c["OPTIM"]["MAX_EPOCH"], c["TRAINER"]["PROMPTSRC"]
    want = official_gauss(node["GPA_MEAN"], node["GPA_STD"], epochs)
    torch.testing.assert_close(gpa_weights(node["GPA_MEAN"], node["GPA_STD"], epochs),
                               torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    if name.startswith("vit_b16_c2_ep20_batch4_4+4ctx.yaml"):
        assert round(want[14], 3) == 0.399  # epoch 15 of 20 at mean 15, std 1


def test_gpa_average_is_the_weighted_sum_of_epoch_snapshots(data_root, tmp_path, monkeypatch):
    snapshots = []
    accumulate = promptsrc.GaussianPromptAggregation.accumulate

    def record(self, params, epoch):
        snapshots.append({n: p.detach().clone() for n, p in params.items()})
        return accumulate(self, params, epoch)

    monkeypatch.setattr(promptsrc.GaussianPromptAggregation, "accumulate", record)
    out = tmp_path / "run"
    assert run(data_root, out, "PromptSRC", "OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2",
               "TRAINER.PROMPTSRC.GPA_STD", "1", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.05") == 0
    assert len(snapshots) == 3
    w = official_gauss(2, 1, 3)
    final = torch.load(out / "VLPromptLearner/model.pth.tar-3", weights_only=False)["state_dict"]
    assert set(final) == {n[len("prompt_learner."):] for n in snapshots[0]}
    for name, value in final.items():
        expected = sum(wi * s["prompt_learner." + name] for wi, s in zip(w, snapshots))
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(final["ctx"], snapshots[-1]["prompt_learner.ctx"])  # not the last epoch's
    assert "Gaussian-weighted average of the 3 epochs" in (out / "log.txt").read_text()


def test_learning_curves_leave_promptsrc_gpa_and_results_unchanged(data_root, tmp_path):
    """TEST.EVAL_EVERY builds the method again for all classes: the run's objective (and its GPA sum) stays."""
    args = ("OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.PROMPTSRC.GPA_MEAN", "1")
    assert run(data_root, tmp_path / "plain", "PromptSRC", *args) == 0
    assert run(data_root, tmp_path / "curves", "PromptSRC", *args, "TEST.EVAL_EVERY", "1") == 0
    plain, curves = (torch.load(tmp_path / d / "VLPromptLearner/model.pth.tar-2", weights_only=False)["state_dict"]
                     for d in ("plain", "curves"))
    assert plain.keys() == curves.keys() and all(torch.equal(plain[k], curves[k]) for k in plain)
    assert len((tmp_path / "curves/metrics_history.jsonl").read_text().splitlines()) == 2


class Killed(BaseException):
    """Stands for a kill: no handler of the run catches it."""


def test_promptsrc_kill_and_resume_equals_uninterrupted(data_root, tmp_path, monkeypatch):
    args = ("OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1", "TRAINER.PROMPTSRC.GPA_MEAN", "2",
            "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.05")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run(data_root, whole, "PromptSRC", *args) == 0
    save = TrainerBase.save_model

    def save_then_die(self, epoch, directory, *a, **kw):
        save(self, epoch, directory, *a, **kw)
        if epoch == 1:  # killed right after epoch 2's resume point
            raise Killed

    monkeypatch.setattr(TrainerBase, "save_model", save_then_die)
    with pytest.raises(Killed):
        run(data_root, resumed, "PromptSRC", *args)
    monkeypatch.setattr(TrainerBase, "save_model", save)
    point = torch.load(resumed / "VLPromptLearner/model.pth.tar-2", weights_only=False)
    assert set(point["extras"]["gpa_sum"]) == {"prompt_learner." + k for k in point["state_dict"]}
    assert run(data_root, resumed, "PromptSRC", *args, flags=("--resume", str(resumed))) == 0
    a = torch.load(whole / "VLPromptLearner/model.pth.tar-3", weights_only=False)["state_dict"]
    b = torch.load(resumed / "VLPromptLearner/model.pth.tar-3", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, resumed))
    assert ma["accuracy"] == mb["accuracy"] and ma["correct"] == mb["correct"]


# ---- CoPrompt -----------------------------------------------------------------------------------------------
def adapter(x, fc):
    return torch.relu(torch.relu(x @ fc[0].weight.t()) @ fc[2].weight.t())


@pytest.mark.parametrize("trainer,foundation", [("CoPrompt", "MaPLe"), ("CoPrompt", "IVLP"),
                                                ("CoPrompt_BMIP", "BMIP")])
def test_coprompt_terms_equal_independent_computation(data_root, descriptions, tiny_clip, tokenizer, trainer,
                                                      foundation):
    t = build_trainer(data_root, trainer, "TRAINER.CoPrompt.DESCRIPTIONS", descriptions,
                      *(["TRAINER.CoPrompt.FOUNDATION", foundation] if trainer == "CoPrompt" else []))
    model, objective = t.model, t.objective_impl
    assert same_clip(model, tiny_clip) and type(model).__name__ == f"{foundation}Model"
    images, labels = fixed_batch()
    teacher_images = fixed_batch(seed=1)[0]
    sentences = json.load(open(descriptions))
    pl = model.prompt_learner
    with torch.no_grad():
        state = model.class_state()
        text, image = state["text"], model.encode_image(images, state)
        text = normalize(0.2 * adapter(text, pl.adapter_text.fc) + 0.8 * text)
        image = normalize(0.1 * adapter(image, pl.adapter_image.fc) + 0.9 * image)
        target_text = normalize(tiny_clip.encode_text(tokenizer([sentences[c][1] for c in CLASSNAMES])))
        target_image = normalize(tiny_clip.encode_image(teacher_images))
        logits, text_term, image_term = objective.terms(model, images, teacher_images, 1)
        torch.testing.assert_close(logits, tiny_clip.logit_scale.exp() * image @ text.t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text_term, 1 - (text * target_text).sum(-1).mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(image_term, 1 - (image * target_image).sum(-1).mean(), rtol=1e-5, atol=1e-6)
        # the step's description index comes from python's random, one for all classes
        random.seed(5)
        index = random.randint(0, 1)
        random.seed(5)
        _, loss = objective.loss(model, images, labels, teacher_images)
        want = objective.terms(model, images, teacher_images, index)
        ce = -torch.log_softmax(want[0], 1)[torch.arange(3), labels].mean()
        torch.testing.assert_close(loss, ce + objective.weight * (want[1] + want[2]), rtol=1e-6, atol=1e-6)
        objective.cosine = False
        _, text_mse, image_mse = objective.terms(model, images, teacher_images, 1)
    torch.testing.assert_close(text_mse, ((text - target_text) ** 2).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(image_mse, ((image - target_image) ** 2).mean(), rtol=1e-5, atol=1e-7)


def test_coprompt_views_differ_and_the_teacher_sees_the_second(data_root, descriptions, monkeypatch):
    t = build_trainer(data_root, "CoPrompt", "TRAINER.CoPrompt.DESCRIPTIONS", descriptions)
    batch = next(iter(t.train_loader_x))
    first, second = batch["img"]
    assert first.shape == second.shape and not torch.equal(first, second)
    unprompted = []
    encoder = t.model.image_encoder
    forward = type(encoder).forward

    def spy(self, images, *args, **kwargs):
        if not args and not kwargs:
            unprompted.append(images)
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "forward", spy)
    t.set_model_mode("train")
    t.forward_backward(batch)
    assert len(unprompted) == 1 and torch.equal(unprompted[0], second)


def test_coprompt_dataset_table_is_a_default_the_command_line_overrides(tmp_path):
    def cfg_for(dataset, *extra, model_dir=""):
        argv = ["--trainer", "CoPrompt", "--dataset-config-file", os.path.join(REPO, f"configs/datasets/{dataset}.yaml"),
                "--config-file", CONFIGS["CoPrompt"]]
        if model_dir:
            argv += ["--eval-only", "--model-dir", model_dir]
        return cli.setup_cfg(cli.build_parser().parse_args(argv + list(extra)))

    pets = cfg_for("oxford_pets")
    assert (pets.TRAINER.CoPrompt.PROMPT_DEPTH, pets.TRAINER.CoPrompt.N_CTX, pets.TRAINER.W) == (12, 2, 0.1)
    assert cfg_for("oxford_pets", "TRAINER.W", "0.5", "TRAINER.CoPrompt.N_CTX", "4").TRAINER.W == 0.5
    food = cfg_for("food101")
    assert (food.TRAINER.CoPrompt.PROMPT_DEPTH, food.OPTIM.MAX_EPOCH, food.TRAINER.W) == (9, 5, 0.5)
    own = cfg_for("synthetic")  # not in the table: the YAML's values
    assert (own.TRAINER.CoPrompt.PROMPT_DEPTH, own.TRAINER.CoPrompt.N_CTX, own.TRAINER.W) == (9, 2, 1.0)
    # an evaluation of a run trained on ImageNet rebuilds ImageNet's structure, whatever the target dataset
    trained = tmp_path / "imagenet_run"
    trained.mkdir()
    (trained / "config.yaml").write_text(cfg_for("imagenet").dump())
    target = cfg_for("eurosat", model_dir=str(trained))
    assert (target.TRAINER.CoPrompt.PROMPT_DEPTH, target.TRAINER.CoPrompt.N_CTX) == (12, 4)


# ---- every structure under every objective ------------------------------------------------------------------
PAIRS = [("IVLP", []), ("MaPLe", []), ("BMIP", [])] + [
    (trainer, [f"TRAINER.{node}.FOUNDATION", foundation])
    for trainer, node in (("PromptSRC", "PROMPTSRC"), ("CoPrompt", "CoPrompt"))
    for foundation in ("IVLP", "MaPLe", "BMIP", "HiCroPL")]


@pytest.mark.parametrize("trainer,extra", PAIRS, ids=lambda p: p if isinstance(p, str) else "-".join(p[1:]))
def test_every_structure_and_objective_trains_and_lowers_the_loss(data_root, tmp_path, trainer, extra):
    small = ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "3", "TRAINER.MAPLE.PROMPT_DEPTH",
             "3", "TRAINER.BMIP.PROMPT_DEPTH", "3", "TRAINER.HICROPL.CROSS_LAYER", "2"]
    assert run(data_root, tmp_path / "cli", trainer, "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", *small,
               *extra) == 0
    assert (tmp_path / "cli/metrics.json").is_file()
    t = build_trainer(data_root, trainer, *small, *extra, "OPTIM.NAME", "adam", "OPTIM.LR", "0.01",
                      "OPTIM.WARMUP_EPOCH", "0")
    batch = next(iter(t.train_loader_x))
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 1
    losses = [t.forward_backward(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("trainer", ["PromptSRC", "CoPrompt"])
def test_exactly_one_frozen_clip(data_root, tiny_clip, trainer):
    model = build_trainer(data_root, trainer).model
    clip_params = sum(p.numel() for p in tiny_clip.parameters())
    learned = sum(p.numel() for p in model.prompt_learner.parameters())
    assert sum(p.numel() for p in model.parameters()) == clip_params + learned
    assert learned == sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- official checkpoints -----------------------------------------------------------------------------------
def official_promptsrc(ours, clip):
    """Our PromptSRC (IVLP) checkpoint in the official whole-model layout (VLPromptLearner)."""
    whole = {"prompt_learner.ctx": ours["ctx"], "image_encoder.VPT": ours["visual_ctx"], "logit_scale": clip.logit_scale,
             "prompt_learner.token_prefix": torch.zeros(10, 1, 48), "prompt_learner.token_suffix": torch.zeros(10, 8, 48)}
    for k, v in ours.items():
        for ours_name, tower in (("visual_prompts", "image"), ("text_prompts", "text")):
            if k.startswith(ours_name + "."):
                whole[f"{tower}_encoder.transformer.resblocks.{int(k.split('.')[1]) + 1}.VPT_shallow"] = v
    whole.update({"prompt_learner.ZS_image_encoder." + k: v for k, v in clip.visual.state_dict().items()})
    whole.update({"image_encoder." + k: v for k, v in clip.visual.state_dict().items()})
    whole.update({"text_encoder.transformer." + k: v for k, v in clip.transformer.state_dict().items()})
    return whole


def official_coprompt(ours, clip):
    """Our CoPrompt (MaPLe) checkpoint in the official layout: adapters at the top, model_distill a second CLIP."""
    whole = {("" if k.startswith("adapter_") else "prompt_learner.") + k: v for k, v in ours.items()}
    whole.update({"model_distill." + k: v for k, v in clip.state_dict().items()})
    whole.update({"image_encoder." + k: v for k, v in clip.visual.state_dict().items()})
    whole["prompt_learner.token_prefix"] = torch.zeros(10, 1, 48)
    return whole


def official_promptsrc_bmip(ours, clip):
    """Our PromptSRC_BMIP checkpoint in the BMIP repository's layout (block linears inside CLIP's blocks)."""
    whole = {"prompt_learner.ctx": ours["ctx_t"].clone(), "prompt_learner.ctx_v": torch.randn(77, 64),
             "prompt_learner.proj_v.weight": torch.randn(48, 64), "prompt_learner.proj_v.bias": torch.randn(48)}
    for k, v in ours.items():
        if k.startswith(("vision_mix", "text_mix")):
            tower, linear = ("image", "learnable_linear1") if k.startswith("vision") else ("text", "learnable_linear2")
            _, idx, leaf = k.split(".")
            whole[f"{tower}_encoder.transformer.resblocks.{int(idx) + 1}.{linear}.{leaf}"] = v
        else:
            whole["prompt_learner." + k] = v
    for i in range(12):
        for tower in ("image", "text"):
            for linear in ("learnable_linear1", "learnable_linear2"):
                whole.setdefault(f"{tower}_encoder.transformer.resblocks.{i}.{linear}.weight", torch.randn(1, 1))
                whole.setdefault(f"{tower}_encoder.transformer.resblocks.{i}.{linear}.bias", torch.randn(1))
    whole.update({"prompt_learner.ZS_image_encoder." + k: v for k, v in clip.visual.state_dict().items()})
    return whole


@pytest.mark.parametrize("trainer,name,convert", [
    ("PromptSRC", "VLPromptLearner", official_promptsrc), ("CoPrompt", "MultiModalPromptLearner", official_coprompt),
    ("PromptSRC_BMIP", "VLPromptLearner", official_promptsrc_bmip)])
def test_official_checkpoints_reload_to_identical_logits(data_root, descriptions, tmp_path, tiny_clip, trainer, name,
                                                        convert):
    extra = ["OPTIM.MAX_EPOCH", "1", "TEST.SAVE_LOGITS", "True"]
    if trainer == "CoPrompt":
        extra += ["TRAINER.CoPrompt.DESCRIPTIONS", descriptions]
    ours = tmp_path / "ours"
    assert run(data_root, ours, trainer, *extra) == 0
    trained = torch.load(ours / name / "model.pth.tar-1", weights_only=False)["state_dict"]
    folder = tmp_path / "official" / name
    folder.mkdir(parents=True)
    torch.save({"state_dict": convert(trained, tiny_clip), "epoch": 20}, folder / "model.pth.tar-20")
    ev = tmp_path / "eval"
    assert run(data_root, ev, trainer, *extra,
               flags=("--eval-only", "--model-dir", str(tmp_path / "official"), "--load-epoch", "20")) == 0
    torch.testing.assert_close(torch.load(ev / "logits.pt")["logits"], torch.load(ours / "logits.pt")["logits"],
                               rtol=0, atol=0)


# ---- bad input ----------------------------------------------------------------------------------------------
def test_bad_settings_are_named(data_root, tmp_path, descriptions, capsys):
    with pytest.raises(ValueError, match="TRAINER.PROMPTSRC.FOUNDATION is 'CoOp'; choose one of BMIP, HiCroPL, IVLP, MaPLe"):
        build_trainer(data_root, "PromptSRC", "TRAINER.PROMPTSRC.FOUNDATION", "CoOp")
    with pytest.raises(ValueError, match="TRAINER.PROMPTSRC.GPA_STD is 0; it must be > 0"):
        build_trainer(data_root, "PromptSRC", "TRAINER.PROMPTSRC.GPA_STD", "0")
    with pytest.raises(ValueError, match="DATALOADER.K_TRANSFORMS 2"):
        t = build_trainer(data_root, "CoPrompt", "DATALOADER.K_TRANSFORMS", "1",
                          "TRAINER.CoPrompt.DESCRIPTIONS", descriptions)
        t.forward_backward(next(iter(t.train_loader_x)))
    sentences = json.load(open(descriptions))
    sentences["red circle"] = sentences["red circle"][:1]
    uneven = tmp_path / "uneven.json"
    uneven.write_text(json.dumps(sentences))
    with pytest.raises(ValueError, match=f"{uneven} has 1 sentences for 'red circle' but 2 for most classes"):
        build_trainer(data_root, "CoPrompt", "TRAINER.CoPrompt.DESCRIPTIONS", str(uneven))
    del sentences["red circle"]
    uneven.write_text(json.dumps(sentences))
    with pytest.raises(ValueError, match=f"TRAINER.CoPrompt.DESCRIPTIONS: {uneven} has no sentences for 'red circle'"):
        build_trainer(data_root, "CoPrompt", "TRAINER.CoPrompt.DESCRIPTIONS", str(uneven))
    capsys.readouterr()
    build_trainer(data_root, "CoPrompt")  # no descriptions: CLIP's templates, said in the log
    assert "no class descriptions (TRAINER.CoPrompt.DESCRIPTIONS); the text targets are CLIP's 80" in capsys.readouterr().out
