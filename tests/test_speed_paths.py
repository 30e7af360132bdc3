"""Faster paths that must compute what the slower ones did: BMIP's text side without attention scores (official
row 0), features and gradients against the whole-batch hook path."""
import pytest
import torch

from vlprompt.config import get_cfg_default
from vlprompt.trainers.bmip import BMIPModel

# lengths spread enough that the text tower splits them into length groups
CLASSES = [f"{'very ' * (i % 9)}{'golden ' * (i % 4)}dog" for i in range(60)]


@pytest.mark.parametrize("connect", ["None", "add", "joint"])
def test_bmip_text_side_without_scores_equals_hook_path(tiny_clip, tokenizer, connect):
    c = get_cfg_default().TRAINER.BMIP.clone()
    c.CONNECT_METHOD = connect
    torch.manual_seed(0)
    model = BMIPModel(tiny_clip, tokenizer, CLASSES, c)
    pl = model.prompt_learner
    if connect == "None":
        with torch.no_grad():  # slopes and biases away from their init, so a wrong weight would show
            for lin in pl.text_mix:
                lin.weight.uniform_(5.0, 40.0)
                lin.bias.uniform_(-1.0, 1.0)
    assert len(model.text_encoder._length_groups(pl.template.eot_index)) > 1  # the grouped path is taken
    hook_calls = []
    hook = model.text_hook
    model.text_hook = lambda *args: hook_calls.append(1) or hook(*args)
    learned = [p for p in pl.parameters() if p.requires_grad]
    fast = model.class_state()["text"]
    assert not hook_calls
    # today's path: the hook computes the row-0 attention scores over the whole batch of class prompts
    embeddings = pl.template.assemble(pl.ctx_t)
    reference = model.text_encoder(embeddings, pl.template.eot_index, hook=hook)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weights).sum(), learned, allow_unused=True)
    grads_ref = torch.autograd.grad((reference * weights).sum(), learned, allow_unused=True)
    reached = 0
    for name_grad in zip(grads_fast, grads_ref):
        a, b = name_grad
        assert (a is None) == (b is None)
        if a is not None:
            reached += 1
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    assert reached >= 3
    if connect == "None":  # the slopes get an exactly zero gradient on both paths (score 0), the biases do not
        slope = [i for i, p in enumerate(learned) if any(p is lin.weight for lin in pl.text_mix)]
        assert slope and all(torch.count_nonzero(grads_fast[i]) == 0 for i in slope)


def test_bmip_later_tokens_keeps_the_hook(tiny_clip, tokenizer):
    c = get_cfg_default().TRAINER.BMIP.clone()
    c.TEXT_SCORE = "later_tokens"
    model = BMIPModel(tiny_clip, tokenizer, CLASSES[:5], c)
    calls = []
    hook = model.text_hook
    model.text_hook = lambda *args: calls.append(args[0]) or hook(*args)
    with torch.no_grad():
        model.class_state()
    assert calls == list(range(12))  # every text block, one whole-batch pass
