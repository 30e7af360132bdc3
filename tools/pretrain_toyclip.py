"""Pretrain the toy CLIP (vlprompt-toy) on the toy world and save it where MODEL.BACKBONE.NAME vlprompt-toy
finds it (docs/toyworld.md).

    python tools/pretrain_toyclip.py                 # -> output/toyclip/vlprompt-toy.pt (or $VLPROMPT_TOY_CLIP)
    python tools/pretrain_toyclip.py --out my.pt     # then MODEL.BACKBONE.PATH my.pt

Writes the weights (an open_clip state dict) and <name>.loss.json (config, seconds, the loss of every step),
both atomically, then prints a zero-shot probe on freshly rendered downstream images.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlprompt.clip.load import get_tokenizer, load_clip, toy_checkpoint_path  # noqa: E402
from vlprompt.toyworld.pretrain import PretrainConfig, pretrain  # noqa: E402
from vlprompt.toyworld.probe import zero_shot_probe  # noqa: E402


def main(argv=None):
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help=f"checkpoint file (default: {toy_checkpoint_path()})")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="pretrain again even if the checkpoint exists")
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the model starts from random weights

    out = os.path.abspath(args.out) if args.out else str(toy_checkpoint_path())
    if os.path.isfile(out) and not args.force:
        print(f"Toy CLIP exists: {out} (pass --force to pretrain again)")
        return 0
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                         seed=args.seed)
    print(f"Pretraining the toy CLIP: {args.steps} steps of {args.batch_size} rendered image-caption pairs")
    record = pretrain(cfg, out)
    print(f"Saved {out} ({record['seconds']:.0f} s, final loss {record['losses'][-1]:.3f})")
    model = load_clip(cfg.arch, out)
    tokenizer = get_tokenizer(cfg.arch)
    for style in ("outline", "photo", "noisy"):
        acc = zero_shot_probe(model, tokenizer, style)
        print(f"zero-shot probe, {style:7s} images: base {acc['base']:.1f}%  new {acc['new']:.1f}%  "
              f"(held-out combinations {acc['held_out']:.1f}%; chance 5.6%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
