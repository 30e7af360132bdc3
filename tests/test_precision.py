"""Every precision mode (PREC fp32 | fp16 | amp | bf16) on a CPU, where the CPU supports it, and the stop on
a non-finite loss naming the step and the precision. In a run on a CPU, fp16 weights and amp fall back to fp32
with a log line (tested here); amp's autocast and grad scaler are also tested on the CPU where it has fp16
autocast, and fp16 weights on CUDA only (skipped without a GPU)."""
import os

import pytest
import torch
import torch.nn.functional as F

from vlprompt import cli
from vlprompt.config import get_cfg_default
from vlprompt.engine.trainer import Precision
from vlprompt.trainers.base import CLIPPromptTrainer
from vlprompt.trainers.coop import CoOpModel

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
CLASSES = ["cat", "dog", "sports car"]
CUDA = torch.cuda.is_available()


def run(data_root, out, prec, epochs=1, *extra):
    return cli.main(["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", DATASET_CFG,
                     "--config-file", COOP_CFG, "--output-dir", str(out), "--device", "cpu",
                     "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
                     "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", str(epochs), "TRAINER.COOP.PREC", prec,
                     *extra])


def cpu_autocast_supported(dtype):
    try:
        with torch.autocast("cpu", dtype=dtype):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    except RuntimeError:
        return False


def train_step(model, prec, images):
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=1.0)
    before = model.prompt_learner.ctx.detach().clone()
    with prec.autocast():
        loss = F.cross_entropy(model(images).float(), torch.arange(len(images)) % len(CLASSES))
    prec.backward_and_step(loss, opt)
    assert torch.isfinite(loss)
    assert not torch.equal(model.prompt_learner.ctx, before)
    return loss


def test_fp32_is_plain_float32(tiny_clip, tokenizer):
    prec = Precision("fp32", torch.device("cpu"))
    assert prec.name == "fp32" and prec.weight_dtype == torch.float32 and prec.scaler is None
    with prec.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    torch.manual_seed(0)
    model = CoOpModel(tiny_clip, tokenizer, CLASSES, get_cfg_default().TRAINER.COOP)
    train_step(model, prec, torch.randn(2, 3, 224, 224))


@pytest.mark.parametrize("prec", ["amp", "fp16"])
def test_half_modes_fall_back_to_fp32_on_cpu_with_a_log_line(tmp_path, prec):
    out = tmp_path / prec
    assert run(str(tmp_path / "data"), out, prec) == 0
    log = (out / "log.txt").read_text()
    assert f"Precision {prec} is not used on a CPU device: running in fp32" in log


@pytest.mark.skipif(not cpu_autocast_supported(torch.bfloat16), reason="this CPU has no bfloat16 autocast")
def test_bf16_run_stops_on_nan_naming_step_and_precision(tmp_path, capsys, monkeypatch):
    original = CLIPPromptTrainer.model_loss

    def nan_in_second_epoch(self, images, labels):
        logits, loss = original(self, images, labels)
        return logits, loss * float("nan") if self.epoch == 1 else loss

    monkeypatch.setattr(CLIPPromptTrainer, "model_loss", nan_in_second_epoch)
    out = tmp_path / "run"
    assert run(str(tmp_path / "data"), out, "bf16", 2, "TRAIN.CHECKPOINT_FREQ", "1") == 3
    err = capsys.readouterr().err
    # 20 images / batch 8 = 2 steps per epoch: the first of epoch 2 is step 3
    assert "Loss is nan at epoch 2, batch 1 (step 3) with precision bf16" in err
    assert "the last checkpoint in" in err
    assert sorted(os.listdir(out / "prompt_learner")) == ["checkpoint", "model.pth.tar-1"]
    state = torch.load(out / "prompt_learner/model.pth.tar-1", weights_only=False)
    assert state["epoch"] == 1 and torch.isfinite(state["state_dict"]["ctx"]).all()


@pytest.mark.skipif(not cpu_autocast_supported(torch.float16), reason="this CPU has no float16 autocast")
def test_amp_on_cpu_autocasts_scales_and_skips_non_finite_steps(tiny_clip, tokenizer):
    """amp's mechanics on the CPU (a run falls back to fp32 there; half_on_cpu keeps amp): fp16 matmuls under
    autocast, fp32 parameters, steps whose scaled fp16 gradients overflow skipped with the scale halved, and the
    step taken equal, up to fp16 rounding, to SGD on the fp32 gradient."""
    import copy

    prec = Precision("amp", torch.device("cpu"), half_on_cpu=True)
    assert prec.name == "amp" and prec.scaler is not None and prec.weight_dtype == torch.float32
    with prec.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    torch.manual_seed(0)
    model = CoOpModel(copy.deepcopy(tiny_clip), tokenizer, CLASSES, get_cfg_default().TRAINER.COOP)
    ctx = model.prompt_learner.ctx
    opt = torch.optim.SGD([ctx], lr=1.0)
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 1])

    def loss_fn():
        with prec.autocast():
            return F.cross_entropy(model(images).float(), labels)

    for _ in range(40):
        before, scale = ctx.detach().clone(), prec.scaler.get_scale()
        grad, = torch.autograd.grad(F.cross_entropy(model(images), labels), ctx)  # fp32, unscaled
        prec.backward_and_step(loss_fn(), opt)
        if not torch.equal(ctx, before):
            break
        assert prec.scaler.get_scale() == scale / 2  # overflow: step skipped, scale halved
    else:
        pytest.fail("the grad scaler never took a step")
    assert ctx.dtype == torch.float32 and prec.scaler.get_scale() == scale
    # SGD on the unscaled gradient, up to fp16 rounding (about 1e-3 of the largest entry)
    torch.testing.assert_close(before - ctx.detach(), grad, rtol=0, atol=5e-3 * grad.abs().max().item())

    before = ctx.detach().clone()
    with prec.autocast():
        loss = model(images).float().sum() * float("inf")
    prec.backward_and_step(loss, opt)
    assert torch.equal(ctx, before) and prec.scaler.get_scale() == scale / 2  # inf gradients: skipped


@pytest.mark.skipif(not CUDA, reason="fp16 weights need CUDA: on a CPU PREC fp16 runs in fp32 (tested above), "
                                     "half-precision CPU matmuls being slow or missing")
def test_fp16_weights_on_cuda(tiny_clip, tokenizer):
    import copy

    prec = Precision("fp16", torch.device("cuda"))
    assert prec.weight_dtype == torch.float16
    clip = copy.deepcopy(tiny_clip).to(torch.float16)
    torch.manual_seed(0)
    model = CoOpModel(clip, tokenizer, CLASSES, get_cfg_default().TRAINER.COOP).cuda()
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=1.0)
    loss = F.cross_entropy(model(torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.float16)).float(),
                           torch.tensor([0, 1], device="cuda"))
    prec.backward_and_step(loss, opt)
    assert torch.isfinite(loss)


@pytest.mark.skipif(not CUDA, reason="amp (fp16 autocast + grad scaler) needs CUDA; on a CPU it runs in fp32")
def test_amp_step_on_cuda(tiny_clip, tokenizer):
    import copy

    prec = Precision("amp", torch.device("cuda"))
    assert prec.scaler is not None
    torch.manual_seed(0)
    model = CoOpModel(copy.deepcopy(tiny_clip), tokenizer, CLASSES, get_cfg_default().TRAINER.COOP).cuda()
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=1.0)
    before = model.prompt_learner.ctx.detach().clone()
    with prec.autocast():
        loss = F.cross_entropy(model(torch.randn(2, 3, 224, 224, device="cuda")).float(),
                               torch.tensor([0, 1], device="cuda"))
    prec.backward_and_step(loss, opt)
    assert torch.isfinite(loss) and model.prompt_learner.ctx.dtype == torch.float32
    assert not torch.equal(model.prompt_learner.ctx, before)
