"""TRAIN.GRAD_CHECKPOINTING: the frozen towers' block activations are recomputed in the backward pass, and the
gradients equal those of the run that keeps them."""
import pytest
import torch

from vlprompt.engine.trainer import TRAINER_REGISTRY

from test_benchmark import load_benchmark

CLASSES = ["dog", "golden retriever", "sports car", "red wine", "a very long class name of many words"]


def build_trainer(tmp_path, tiny_clip, name, checkpointing):
    bench = load_benchmark()
    workdir = str(tmp_path)
    bench.write_class_list(workdir, CLASSES)
    cfg = bench.trainer_cfg(name, "vlprompt-tiny", torch.device("cpu"), workdir)
    cfg.merge_from_list(["TRAIN.GRAD_CHECKPOINTING", checkpointing, "MODEL.INIT_SEED", 3])
    with bench.trainers_use_copies_of(tiny_clip):
        return TRAINER_REGISTRY.get(name)(cfg)


def count_block_passes(model):
    """Calls of every block's ln_2 in both towers: one per block and pass, so recomputation shows up (ln_1 would
    also count BMIP's attention scores)."""
    calls = []
    handles = [block.ln_2.register_forward_hook(lambda *args: calls.append(1))
               for encoder in (model.text_encoder.transformer, model.image_encoder.visual.transformer)
               for block in encoder.resblocks]
    return calls, handles


@pytest.mark.parametrize("name", ["MaPLe", "BMIP"])
def test_gradients_equal_and_blocks_recomputed(tmp_path, tiny_clip, name):
    torch.manual_seed(0)
    images, labels = torch.randn(3, 3, 224, 224), torch.tensor([0, 2, 4])
    grads, passes = {}, {}
    for checkpointing in (False, True):
        trainer = build_trainer(tmp_path, tiny_clip, name, checkpointing)
        model = trainer.model
        assert model.text_encoder.grad_checkpointing is checkpointing
        assert model.image_encoder.grad_checkpointing is checkpointing
        model.train()
        calls, handles = count_block_passes(model)
        _, loss = trainer.model_loss(images, labels)
        loss.backward()
        for h in handles:
            h.remove()
        passes[checkpointing] = len(calls)
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    blocks = 2 * 12  # the tiny CLIP: 12 text and 12 vision blocks
    assert passes[False] == blocks and passes[True] == 2 * blocks  # every block's activations recomputed once
    assert grads[True].keys() == grads[False].keys() and len(grads[False]) > 5
    for key, reference in grads[False].items():
        torch.testing.assert_close(grads[True][key], reference, rtol=1e-5, atol=1e-6 * reference.abs().max().item())


def test_no_recomputation_without_autograd(tiny_clip, tokenizer):
    """Evaluation (no gradients recorded) runs each block once even with checkpointing on."""
    from vlprompt.clip import PromptedImageEncoder

    encoder = PromptedImageEncoder(tiny_clip)
    encoder.grad_checkpointing = True
    calls = []
    handles = [block.ln_2.register_forward_hook(lambda *args: calls.append(1))
               for block in encoder.visual.transformer.resblocks]
    with torch.no_grad():
        encoder(torch.randn(1, 3, 224, 224), prompts=torch.randn(2, encoder.width))
    for h in handles:
        h.remove()
    assert len(calls) == 12
