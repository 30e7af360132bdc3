"""tools/benchmark.py end to end on the tiny backbone: the JSON it writes, the checkpoints the trainers wrote, and
the official file sizes against a serialisation of the official layout built here."""
import importlib.util
import json
import math
import os

import torch

from conftest import REPO

TRAINERS = {"CoOp", "MaPLe", "BMIP", "HiCroPL"}


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(REPO, "tools", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# From the official configs (tools/sweep.py's): context positions the prompt learner fills, optimizer moments
# per learned parameter (SGD momentum 1, Adam 2), and whether the official save_model writes the whole model
# (CoOp: its prompt learner only) and a teacher image tower (HiCroPL).
N_CTX = {"CoOp": 4, "MaPLe": 2, "BMIP": 2, "HiCroPL": 16}
MOMENTS = {"CoOp": 1, "MaPLe": 1, "BMIP": 2, "HiCroPL": 2}
WHOLE_MODEL = {"CoOp": False, "MaPLe": True, "BMIP": True, "HiCroPL": True}


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
        "--backbone", "vlprompt-tiny", "--classes", "6", "--repeats", "1", "--batch-size", "2",
        "--eval-images", "100", "--train-steps", "1", "--train-batch-size", "2",
        "--checkpoint-dir", str(checkpoints), "--json", str(out)])
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))

    for key in ("text_truncation_speedup", "eval_cache_speedup"):
        assert math.isfinite(results[key]) and results[key] > 0
    for key in ("train_images_per_s", "peak_memory_mb", "checkpoint_fraction"):
        assert set(results[key]) == TRAINERS
        assert all(math.isfinite(v) and v > 0 for v in results[key].values()), (key, results[key])

    printed = capsys.readouterr().out
    for name in TRAINERS:
        row = results["training"][name]
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
        assert moments == MOMENTS[name] * learned_numel
        # the official file's tensors, laid out here from the official state dicts
        assert row["official_checkpoint_dtype"] == "float16"
        assert row["official_checkpoint_bytes"] == official_file_bytes(name, tiny_clip, learned, 6), name
        assert row["checkpoint_fraction"] == row["checkpoint_bytes"] / row["official_checkpoint_bytes"]
    # CoOp learns 4 context vectors ("a photo of a"): its checkpoint is a small part of even the official CoOp
    # file, which holds the frozen prompt embeddings of the 6 classes
    assert results["checkpoint_fraction"]["CoOp"] < 0.1
