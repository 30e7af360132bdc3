"""The trainers' models against independent recomputations in the test."""
import os

import pytest
import torch
import torch.nn.functional as F

from vlprompt.config import get_cfg_default
from vlprompt.engine.evaluator import ClassificationEvaluator
from vlprompt.engine.checkpoint import load_checkpoint, save_checkpoint
from vlprompt.trainers.cocoop import CoCoOpModel
from vlprompt.trainers.coop import CoOpModel
from vlprompt.trainers.zsclip import ZeroshotModel

CLASSES = ["golden_retriever", "cat", "sports car", "a very long class name with many words"]


def coop_cfg(**kw):
    c = get_cfg_default().TRAINER.COOP
    for k, v in kw.items():
        c[k] = v
    return c


def reference_text_features(clip, token_ids, ctx_rows):
    """Plain open_clip text tower on embeddings whose rows `ctx_rows[i]` (positions) hold ctx vectors."""
    x = clip.token_embedding(token_ids)
    for i, (positions, vectors) in enumerate(ctx_rows):
        x[i, positions] = vectors
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    return x[torch.arange(len(x)), token_ids.argmax(-1)] @ clip.text_projection


def test_coop_end_equals_open_clip_with_ctx_inserted(tiny_clip, tokenizer):
    torch.manual_seed(0)
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, coop_cfg(N_CTX=4))
    ctx = model.prompt_learner.ctx.detach()
    tokens = tokenizer([f"X X X X {c.replace('_', ' ')}." for c in CLASSES])
    with torch.no_grad():
        ours = model.class_state()["text"]
        ref = reference_text_features(tiny_clip, tokens, [(slice(1, 5), ctx)] * len(CLASSES))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_coop_class_token_positions(tiny_clip, tokenizer, position):
    torch.manual_seed(0)
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, coop_cfg(N_CTX=4, CSC=True, CLASS_TOKEN_POSITION=position))
    ctx = model.prompt_learner.ctx.detach()
    assert ctx.shape == (len(CLASSES), 4, 48)
    rows, token_rows = [], []
    for i, name in enumerate(CLASSES):
        name_ids = tokenizer.encode(name.replace("_", " "))
        k = len(name_ids)
        # the tokens of "{name}." in the order CoOp arranges them, ctx placeholders filled below
        if position == "middle":
            order = ["c", "c"] + name_ids + ["c", "c"]
            positions = [1, 2, 3 + k, 4 + k]
        else:
            order = name_ids + ["c"] * 4
            positions = [1 + k + j for j in range(4)]
        ids = [tokenizer.sot_token_id] + [0 if t == "c" else t for t in order] + tokenizer.encode(".") + [
            tokenizer.eot_token_id]
        token_rows.append(ids + [0] * (77 - len(ids)))
        rows.append((positions, ctx[i]))
    tokens = torch.tensor(token_rows)
    with torch.no_grad():
        ours = model.class_state()["text"]
        ref = reference_text_features(tiny_clip, tokens, rows)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_coop_ctx_init_uses_one_vector_per_word(tiny_clip, tokenizer):
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, coop_cfg(N_CTX=16, CTX_INIT="a photo of a", CSC=True))
    ctx = model.prompt_learner.ctx.detach()
    assert ctx.shape == (4, 48)  # N_CTX and CSC are overridden by the words of CTX_INIT, as officially
    expected = tiny_clip.token_embedding(tokenizer(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(ctx, expected)
    zs = ZeroshotModel(tiny_clip, tokenizer, CLASSES, ["a photo of a {}."])
    with torch.no_grad():  # before training CoOp with this init is zero-shot CLIP with that template
        torch.testing.assert_close(F.normalize(model.class_state()["text"], dim=-1), zs.text_features,
                                   rtol=1e-5, atol=1e-5)


def test_zeroshot_ensemble(tiny_clip, tokenizer):
    templates = ["a photo of a {}.", "art of the {}."]
    zs = ZeroshotModel(tiny_clip, tokenizer, CLASSES, templates)
    names = [c.replace("_", " ") for c in CLASSES]
    with torch.no_grad():
        feats = [F.normalize(tiny_clip.encode_text(tokenizer([t.format(n) for n in names])), dim=-1)
                 for t in templates]
    expected = F.normalize(sum(feats) / 2, dim=-1)
    torch.testing.assert_close(zs.text_features, expected, rtol=1e-5, atol=1e-5)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        logits = zs(images)
        ref = tiny_clip.logit_scale.exp() * F.normalize(tiny_clip.encode_image(images), dim=-1) @ expected.t()
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-4)


def test_cocoop_per_image_context(tiny_clip, tokenizer):
    torch.manual_seed(0)
    c = get_cfg_default().TRAINER.COCOOP
    c.N_CTX = 4
    model = CoCoOpModel(tiny_clip, tokenizer, CLASSES, c)
    learner = model.prompt_learner
    images = torch.randn(2, 3, 224, 224)
    tokens = tokenizer([f"X X X X {n.replace('_', ' ')}." for n in CLASSES])
    with torch.no_grad():
        logits = model(images)
        f = F.normalize(tiny_clip.encode_image(images), dim=-1)
        h = F.relu(f @ learner.meta_net.linear1.weight.t() + learner.meta_net.linear1.bias)
        bias = h @ learner.meta_net.linear2.weight.t() + learner.meta_net.linear2.bias
        for i in range(2):
            ctx_i = learner.ctx + bias[i]
            text = F.normalize(reference_text_features(tiny_clip, tokens, [(slice(1, 5), ctx_i)] * 4), dim=-1)
            torch.testing.assert_close(logits[i], tiny_clip.logit_scale.exp() * f[i] @ text.t(),
                                       rtol=1e-4, atol=1e-4)
    assert learner.meta_net.linear1.out_features == tiny_clip.visual.output_dim // 16


def test_cached_state_equals_per_batch_and_gradients(tiny_clip, tokenizer):
    torch.manual_seed(0)
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, coop_cfg(N_CTX=4))
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        state = model.class_state()
        cached = torch.cat([model.logits(b, state) for b in images.split(2)])
        per_batch = torch.cat([model(b) for b in images.split(2)])
    torch.testing.assert_close(cached, per_batch, rtol=0, atol=0)
    loss = F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.prompt_learner.ctx.grad is not None and model.prompt_learner.ctx.grad.abs().sum() > 0


def test_evaluator_matches_independent_computation():
    torch.manual_seed(1)
    logits = torch.randn(50, 4)
    labels = torch.randint(0, 4, (50,))
    ev = ClassificationEvaluator({i: str(i) for i in range(4)}, per_class=True)
    ev.process(logits[:20], labels[:20])
    ev.process(logits[20:], labels[20:])
    res = ev.evaluate(verbose=False)
    pred = logits.argmax(1)
    assert res["accuracy"] == pytest.approx(100.0 * (pred == labels).float().mean().item())
    f1s = []
    for c in range(4):
        tp = ((pred == c) & (labels == c)).sum().item()
        precision = tp / max((pred == c).sum().item(), 1)
        recall = tp / max((labels == c).sum().item(), 1)
        f1s.append(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    assert res["macro_f1"] == pytest.approx(100.0 * sum(f1s) / 4)
    assert res["perclass_accuracy"] == pytest.approx(
        100.0 * sum(((pred == c) & (labels == c)).sum().item() / (labels == c).sum().item() for c in range(4)) / 4)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    state = {"state_dict": {"ctx": torch.ones(2)}, "epoch": 1}
    path = save_checkpoint(state, str(tmp_path / "prompt_learner"))
    assert load_checkpoint(path)["state_dict"]["ctx"].sum() == 2

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"state_dict": {"ctx": torch.zeros(2)}, "epoch": 1}, str(tmp_path / "prompt_learner"))
    assert sorted(os.listdir(tmp_path / "prompt_learner")) == ["checkpoint", "model.pth.tar-1"]
    assert load_checkpoint(path)["state_dict"]["ctx"].sum() == 2  # the old file is intact


def test_malicious_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {}, "epoch": 1, "scheduler": Evil()}, path)
    load_checkpoint(str(path))
    assert not marker.exists()


def test_precision_modes_on_cpu(capsys):
    from vlprompt.engine.trainer import Precision

    cpu = torch.device("cpu")
    for name in ("fp16", "amp"):
        p = Precision(name, cpu)
        assert p.name == "fp32" and p.weight_dtype == torch.float32
        assert f"Precision {name} is not used on a CPU device" in capsys.readouterr().out
    bf16 = Precision("bf16", cpu)
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        Precision("fp8", cpu)


def test_bf16_training_step(tiny_clip, tokenizer):
    from vlprompt.engine.trainer import Precision

    torch.manual_seed(0)
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, coop_cfg(N_CTX=4))
    prec = Precision("bf16", torch.device("cpu"))
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=1.0)
    before = model.prompt_learner.ctx.detach().clone()
    with prec.autocast():
        loss = F.cross_entropy(model(torch.randn(2, 3, 224, 224)).float(), torch.tensor([0, 1]))
    prec.backward_and_step(loss, opt)
    assert torch.isfinite(loss) and model.prompt_learner.ctx.dtype == torch.float32
    assert not torch.equal(model.prompt_learner.ctx, before)
