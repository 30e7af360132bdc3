"""Speed of vlprompt's shared paths against the naive (official) ones, measured side by side in one run.

  python tools/benchmark.py [--device D] [--classes N] [--quick] [--json FILE]

Uses a ViT-B/16-sized CLIP with random weights (timings do not depend on the values). Each pair is timed
interleaved (A, B, A, B, ...) and reported as the median ratio with its range, because these CPUs slow down
under sustained load: absolute times are printed but only the ratios are comparable across runs.
"""
import argparse
import json
import logging
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlprompt.clip import get_tokenizer, load_clip  # noqa: E402
from vlprompt.config import get_cfg_default  # noqa: E402
from vlprompt.trainers.coop import CoOpModel  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)

WORDS = ["golden", "retriever", "sports", "car", "red", "wine", "lesser", "panda", "steel", "arch", "bridge",
         "common", "newt", "water", "ouzel", "great", "white", "shark", "tree", "frog", "space", "shuttle"]


def class_names(n):
    """ImageNet-like names of 1-3 words."""
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(1 + i % 3)) + f" {i}" for i in range(n)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns, repeats, device):
    """Time each function once per round, rounds repeated; the first round warms up and is dropped."""
    times = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - start)
    return times


def ratio_summary(slow, fast):
    ratios = sorted(s / f for s, f in zip(slow, fast))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
            "slow_s": statistics.median(slow), "fast_s": statistics.median(fast)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100, help="test batch size (the official default is 100)")
    p.add_argument("--eval-images", type=int, default=50000,
                   help="size of the evaluation the per-image costs are given for (ImageNet's 50,000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="ViT-B-16-quickgelu", help="architecture (random weights)")
    p.add_argument("--quick", action="store_true", help="100 classes, test batches of 20, 3 repeats")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.classes, args.batch_size, args.repeats = 100, 20, 3
        print("--quick: 100 classes, test batches of 20, 3 interleaved repeats")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    print(f"Building a randomly initialised {args.backbone} on {device} ...")
    clip_model = load_clip(args.backbone, device=device, random_weights=True)
    tokenizer = get_tokenizer("ViT-B/16")
    cfg = get_cfg_default().TRAINER.COOP  # CoOp's defaults: 16 learnable context tokens
    model = CoOpModel(clip_model, tokenizer, class_names(args.classes), cfg).to(device).eval()
    template = model.prompt_learner.template
    full_tokens = tokenizer([f"{template.prefix} {n}." for n in template.classnames]).to(device)
    results = {"device": str(device), "classes": args.classes, "backbone": args.backbone,
               "torch_threads": torch.get_num_threads()}

    # 1. Text encoder: full 77 positions vs truncated to the longest EOT, for CoOp's 16-token context
    #    prompts and for zero-shot CLIP's "a photo of a {}." prompts.
    enc = model.text_encoder
    zeroshot_tokens = tokenizer([f"a photo of a {n}." for n in template.classnames]).to(device)
    text_rows = {}
    for label, tokens in (("CoOp prompts", full_tokens), ("zero-shot prompts", zeroshot_tokens)):
        with torch.no_grad():
            full = enc.encode_tokens(tokens, truncate=False)
            short = enc.encode_tokens(tokens, truncate=True)
            times = interleaved({
                "full": lambda: enc.encode_tokens(tokens, truncate=False),
                "truncated": lambda: enc.encode_tokens(tokens, truncate=True),
            }, args.repeats, device)
        row = ratio_summary(times["full"], times["truncated"])
        row["positions"] = [tokens.shape[1], int(tokens.argmax(-1).max()) + 1]
        row["max_abs_diff"] = float((full - short).abs().max())
        text_rows[label] = row
    results["text_truncation"] = text_rows
    results["text_truncation_speedup"] = text_rows["CoOp prompts"]["median"]

    # 2. Evaluation: text features recomputed per test batch (official) vs once per evaluation (vlprompt).
    #    Measured as its two parts, interleaved: class_state() (the text side) and one test batch's
    #    image side; per-image costs for an evaluation of --eval-images images follow from them.
    batch = torch.randn(args.batch_size, 3, 224, 224, device=device)
    with torch.no_grad():
        state = model.class_state()
        times = interleaved({"text": model.class_state, "batch": lambda: model.logits(batch, state)},
                            args.repeats, device)
    per_batch = [(t + b) / args.batch_size for t, b in zip(times["text"], times["batch"])]
    cached = [b / args.batch_size + t / args.eval_images for t, b in zip(times["text"], times["batch"])]
    ev = ratio_summary(per_batch, cached)
    ev.update(text_s=statistics.median(times["text"]), batch_s=statistics.median(times["batch"]),
              batch_size=args.batch_size, eval_images=args.eval_images)
    results["eval_cache"] = ev
    results["eval_cache_speedup"] = ev["median"]

    print()
    print(f"| measurement ({args.classes} classes, {device}) | naive | vlprompt | speedup (median, range) |")
    print("| --- | --- | --- | --- |")
    for label, text in text_rows.items():
        print(f"| text encoder, {label}: {text['positions'][0]} vs {text['positions'][1]} positions "
              f"| {text['slow_s']:.3f} s | {text['fast_s']:.3f} s "
              f"| {text['median']:.2f}x ({text['min']:.2f}-{text['max']:.2f}) |")
    print(f"| evaluation per image ({args.eval_images:,} images, batches of {args.batch_size}): "
          f"text per batch vs once | {1000 * ev['slow_s']:.1f} ms | {1000 * ev['fast_s']:.1f} ms "
          f"| {ev['median']:.2f}x ({ev['min']:.2f}-{ev['max']:.2f}) |")
    print(f"(one text pass over {args.classes} classes: {ev['text_s']:.2f} s; one test batch of images: "
          f"{ev['batch_s']:.2f} s)")
    worst = max(t["max_abs_diff"] for t in text_rows.values())
    print(f"\nTruncated text features differ from full-length ones by at most {worst:.2e}.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
