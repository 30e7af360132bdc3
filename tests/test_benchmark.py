"""tools/benchmark.py end to end on the tiny backbone: the JSON it writes, and its checkpoint sizes against an
independent serialisation of the frozen CLIP and of the checkpoints' own contents."""
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


def fp16_bytes(tensors, path):
    """Size of the tensors saved in fp16 as one state_dict."""
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path)
    return os.path.getsize(path)


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
        # our checkpoint: the file the trainer wrote, holding exactly the learned parameters, in fp32
        path = row["checkpoint_path"]
        assert path.startswith(str(checkpoints)) and os.path.getsize(path) == row["checkpoint_bytes"]
        learned = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        learned_numel = sum(v.numel() for v in learned.values())
        assert learned_numel == row["learned_parameters"] > 0
        assert all(v.dtype == torch.float32 for v in learned.values())
        assert row["learned_parameter_bytes"] == 4 * learned_numel <= row["checkpoint_bytes"]
        # the whole model in fp16 (the official configs' PREC): the frozen CLIP plus the learned parameters
        # (up to the lengths of the key names)
        assert row["whole_model_dtype"] == "float16"
        whole = {f"clip.{k}": v for k, v in tiny_clip.state_dict().items()}
        whole.update({f"prompt_learner.{k}": v for k, v in learned.items()})
        expected_whole = fp16_bytes(whole, tmp_path / f"{name}_whole.pth")
        assert abs(row["whole_model_bytes"] - expected_whole) < 0.001 * expected_whole, (name, row, expected_whole)
        assert row["checkpoint_fraction"] == row["checkpoint_bytes"] / row["whole_model_bytes"]
    # CoOp learns 4 context vectors ("a photo of a"): its checkpoint is a tiny part even of the tiny CLIP
    assert results["checkpoint_fraction"]["CoOp"] < 0.02
