"""tools/benchmark.py end to end on the tiny backbone: the JSON it writes, the checkpoints the trainers wrote, and
the official file sizes against a serialisation of the official layout built here."""
import argparse
import importlib.util
import json
import math
import os

import pytest
import torch

from conftest import REPO

TRAINERS = {"CoOp", "IVLP", "MaPLe", "BMIP", "HiCroPL"}
ROWS = TRAINERS | {"HiCroPL-official"}  # HiCroPL once per mapper mode


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(REPO, "tools", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# From the official configs (tools/sweep.py's): context positions the prompt learner fills, optimizer moments
# per learned parameter (SGD momentum 1, Adam 2), and whether the official save_model writes the whole model
# (CoOp: its prompt learner only) and a teacher image tower (HiCroPL).
N_CTX = {"CoOp": 4, "IVLP": 2, "MaPLe": 2, "BMIP": 2, "HiCroPL": 16}
MOMENTS = {"CoOp": 1, "IVLP": 1, "MaPLe": 1, "BMIP": 2, "HiCroPL": 2}
WHOLE_MODEL = {"CoOp": False, "IVLP": True, "MaPLe": True, "BMIP": True, "HiCroPL": True}


def official_file_bytes(name, tiny_clip, learned, num_classes):
    """Bytes of the tensors the official code saves for `name`, in fp16 (the configs' PREC), laid out here as
    its state dicts."""
    state = {}
    clip_state = tiny_clip.state_dict()
    if WHOLE_MODEL[name]:
        state.update({f"clip.{k}": v for k, v in clip_state.items() if k != "token_embedding.weight"})
    if name == "HiCroPL":
        state.update({f"teacher.{k}": v for k, v in tiny_clip.visual.state_dict().items()})
    length, width = clip_state["positional_embedding"].shape[0], clip_state["token_embedding.weight"].shape[1]
    state["token_prefix"] = torch.zeros(num_classes, 1, width)
    state["token_suffix"] = torch.zeros(num_classes, length - 1 - N_CTX[name], width)
    for k, v in learned.items():
        state[k] = v
        for m in range(MOMENTS[name]):
            state[f"optimizer.{m}.{k}"] = torch.zeros_like(v)
    return sum(v.half().nbytes for v in state.values())


def test_benchmark_json_and_checkpoint_sizes(tmp_path, tiny_clip, capsys):
    out = tmp_path / "bench.json"
    checkpoints = tmp_path / "checkpoints"
    returned = load_benchmark().main([
        "--backbone", "vlprompt-tiny", "--classes", "6", "3", "--repeats", "1", "--batch-size", "2",
        "--eval-images", "100", "--train-steps", "1", "--train-batch-size", "2",
        "--checkpoint-dir", str(checkpoints), "--json", str(out)])
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))

    for key in ("text_truncation_speedup", "eval_cache_speedup"):
        assert math.isfinite(results[key]) and results[key] > 0
    for key in ("train_images_per_s", "peak_memory_mb", "checkpoint_fraction"):
        assert set(results[key]) == ROWS
        assert all(math.isfinite(v) and v > 0 for v in results[key].values()), (key, results[key])
    # the class sweep, sorted: speedups and peak memory ratios against the official step, per row and count
    assert results["classes"] == [3, 6] and set(results["training"]) == {"3", "6"}
    for key in ("train_step_speedup", "train_peak_memory_ratio"):
        assert set(results[key]) == ROWS
        for name, per_count in results[key].items():
            assert set(per_count) == {"3", "6"}
            assert all(math.isfinite(v) and v > 0 for v in per_count.values()), (key, name, per_count)
    for count, rows in results["training"].items():
        for name, row in rows.items():
            assert results["train_step_speedup"][name][count] == row["speedup"]["median"]
            assert row["peak_memory_ratio"] == row["peak_memory_mb"] / row["official_peak_memory_mb"]

    printed = capsys.readouterr().out
    assert "| trainer (batch, cpu) | 3 classes | 6 classes | peak memory at 6 classes" in printed
    for name in ROWS:
        assert f"| {name} (2) | {results['train_step_speedup'][name]['3']:.2f}x (" in printed
        row = results["training"]["6"][name]
        assert f"| {name} | 2 (" in printed
        # our checkpoint: the file a finished run keeps, holding exactly the learned parameters, in fp32
        path = row["checkpoint_path"]
        assert path.startswith(str(checkpoints)) and os.path.getsize(path) == row["checkpoint_bytes"]
        final = torch.load(path, map_location="cpu", weights_only=False)
        assert "optimizer" not in final and final["training_finished"]
        learned = final["state_dict"]
        learned_numel = sum(v.numel() for v in learned.values())
        assert learned_numel == row["learned_parameters"] > 0
        assert all(v.dtype == torch.float32 for v in learned.values())
        assert row["learned_parameter_bytes"] == 4 * learned_numel <= row["checkpoint_bytes"]
        # the resume point adds the optimizer's moments
        resume = torch.load(row["resume_checkpoint_path"], map_location="cpu", weights_only=False)
        assert os.path.getsize(row["resume_checkpoint_path"]) == row["resume_checkpoint_bytes"]
        moments = sum(t.numel() for s in resume["optimizer"]["state"].values() for t in s.values() if t.dim() > 0)
        method = name.split("-")[0]
        if name == "HiCroPL-official":  # the optimizer only ever steps the prompts, never the mapper
            stepped = sum(v.numel() for k, v in learned.items() if k.startswith("cross_prompts_"))
            assert 0 < stepped < learned_numel / 10 and moments == MOMENTS[method] * stepped
        else:
            assert moments == MOMENTS[method] * learned_numel
        # the official file's tensors, laid out here from the official state dicts
        assert row["official_checkpoint_dtype"] == "float16"
        assert row["official_checkpoint_bytes"] == official_file_bytes(method, tiny_clip, learned, 6)
        assert row["checkpoint_fraction"] == row["checkpoint_bytes"] / row["official_checkpoint_bytes"]
    # CoOp learns 4 context vectors ("a photo of a"): its checkpoint is a small part of even the official CoOp
    # file, which holds the frozen prompt embeddings of the 6 classes
    assert results["checkpoint_fraction"]["CoOp"] < 0.1


@pytest.mark.parametrize("name", ["CoOp", "IVLP", "MaPLe", "BMIP", "HiCroPL", "HiCroPL-official"])
def test_official_step_recreation_computes_the_trainers_loss(tmp_path, tiny_clip, name):
    """The benchmark's re-created official step (77 positions, sequence-first blocks, per-layer concatenation,
    BMIP's weights from a need_weights attention pass, HiCroPL's written mapper outputs) gives the trainer's own
    logits, loss and gradients from the same parameters: the two paths compute the same thing, differently.
    HiCroPL's default mode trains through the mapper, so only its logits and loss compare."""
    bench = load_benchmark()
    classes = ["dog", "golden retriever", "a very long class name of many words", "red wine"]
    bench.write_class_list(str(tmp_path), classes)
    args = argparse.Namespace(backbone="vlprompt-tiny")
    trainer = bench.build_trainers(name.split("-")[0], tiny_clip, args, torch.device("cpu"), str(tmp_path))[name]
    torch.manual_seed(0)
    images, labels = torch.randn(3, 3, 224, 224), torch.tensor([0, 1, 3])
    full = bench.FullLengthPrompts(bench.prompt_template(trainer), trainer.model.text_encoder, trainer.tokenizer)
    n_ctx = bench.prompt_template(trainer).n_ctx
    assert full.prefix.shape[1] + n_ctx + full.suffix.shape[1] == 77 and full.eot_index.max() < 77
    learner = trainer.model.prompt_learner
    start = {k: v.clone() for k, v in learner.state_dict().items()}  # HiCroPL's official mode writes into it
    learned = [p for p in trainer.model.parameters() if p.requires_grad]
    attentions = [m for m in trainer.model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    layouts = [m.batch_first for m in attentions]
    assert any(layouts)  # open_clip's blocks
    results = []
    for official in (False, True):
        learner.load_state_dict(start)
        if official:
            with bench.sequence_first_attention(trainer.model):
                logits, loss = bench.official_logits_and_loss(name, trainer, images, labels, full)
        else:
            logits, loss = trainer.model_loss(images, labels)
        results.append((logits, loss, torch.autograd.grad(loss, learned, allow_unused=True)))
    (ours, our_loss, our_grads), (theirs, their_loss, their_grads) = results
    assert [m.batch_first for m in attentions] == layouts  # restored after the official step
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(their_loss, our_loss, rtol=1e-5, atol=1e-5)
    if name == "HiCroPL":
        return
    compared = 0
    for g_ours, g_theirs in zip(our_grads, their_grads):
        assert (g_ours is None) == (g_theirs is None)
        if g_ours is not None:
            compared += 1
            torch.testing.assert_close(g_theirs, g_ours, rtol=1e-3, atol=1e-5 * max(1.0, g_ours.abs().max().item()))
    assert compared >= 1
