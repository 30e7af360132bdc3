"""The command-line options that run an official trainer config on a toy dataset with the toy CLIP.

    python tools/train.py ... --config-file CFG $(python -m vlprompt.toyworld --trainer MaPLe --config-file CFG)

Why options and not the dataset yaml: a trainer yaml is merged after the dataset yaml and sets the backbone,
224-pixel inputs and random_resized_crop again, and only command-line options come after it.
- MODEL.BACKBONE.NAME vlprompt-toy; INPUT.SIZE (32, 32), the toy CLIP's image size.
- INPUT.TRANSFORMS random_flip + normalize: random_resized_crop would zoom into a 32-pixel image and change
  the shape's size, an attribute the captions name (every toy shape keeps its class when mirrored).
- Deep-prompt depths: the toy CLIP has 2 layers per tower where ViT-B/16 has 12, so a depth d of the
  official config (PROMPT_DEPTH 9, HiCroPL's CROSS_LAYER 6, ...) becomes round(d * 2 / 12), at least 1
  unless it is 0: PROMPT_DEPTH 9 -> 2 (prompts in every layer), CROSS_LAYER 6 -> 1.
- A second CLIP a method loads (TEACHER_NAME): the toy CLIP as well.
"""
import argparse
import shlex

from vlprompt.clip.load import TOY_NAME

from .render import IMAGE_SIZE

TOY_OPTS = ["MODEL.BACKBONE.NAME", TOY_NAME, "INPUT.SIZE", f"({IMAGE_SIZE}, {IMAGE_SIZE})",
            "INPUT.TRANSFORMS", '["random_flip", "normalize"]']
OFFICIAL_LAYERS = 12  # ViT-B/16, which the official depths are written for
DEPTH_KEYS = ("PROMPT_DEPTH", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION", "CROSS_LAYER")
# Keys naming a second frozen CLIP (HiCroPL's teacher): the toy CLIP too.
BACKBONE_KEYS = ("TEACHER_NAME",)


def toy_layers() -> int:
    """Layers of the toy CLIP's shallower tower."""
    import open_clip

    from vlprompt.clip.load import resolve_architecture

    cfg = open_clip.get_model_config(resolve_architecture(TOY_NAME))
    return min(cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"])


def scale_depth(depth: int, layers: int) -> int:
    return 0 if depth <= 0 else max(1, round(depth * layers / OFFICIAL_LAYERS))


def toy_opts(trainer: str = "", config_file: str = "") -> list:
    """TOY_OPTS, plus the trainer's depth keys scaled to the toy CLIP when a trainer and its config are given."""
    opts = list(TOY_OPTS)
    if not (trainer and config_file):
        return opts
    import vlprompt.trainers  # noqa: F401  registers every trainer and its config keys
    from vlprompt.config import get_cfg_default, merge_from_file
    from vlprompt.engine.trainer import TRAINER_REGISTRY

    cfg = get_cfg_default()
    merge_from_file(cfg, config_file)
    key = getattr(TRAINER_REGISTRY.get(trainer), "config_key", "")
    node = cfg.TRAINER.get(key) if key else None
    if node is not None:
        layers = toy_layers()
        for name in DEPTH_KEYS:
            if name in node:
                opts += [f"TRAINER.{key}.{name}", str(scale_depth(int(node[name]), layers))]
        for name in BACKBONE_KEYS:
            if name in node:
                opts += [f"TRAINER.{key}.{name}", TOY_NAME]
    return opts


def main(argv=None):
    """Print the options, quoted for a shell (`python -m vlprompt.toyworld`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", default="", help="trainer name, as --trainer of tools/train.py")
    p.add_argument("--config-file", default="", help="the trainer's config, as --config-file of tools/train.py")
    args = p.parse_args(argv)
    print(" ".join(shlex.quote(o) for o in toy_opts(args.trainer, args.config_file)))
    return 0
