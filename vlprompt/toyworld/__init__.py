"""The toy world (docs/toyworld.md): rendered shapes and captions, a tiny CLIP pretrained on them in a few
minutes on a CPU, and downstream datasets (vlprompt/datasets/toyworld.py) on which prompt learning behaves as on
the real benchmarks."""
from .options import TOY_OPTS, toy_opts  # noqa: F401
from .render import COLOURS, IMAGE_SIZE, SHAPES, SIZES, STYLES, Scene, render, sample_scenes  # noqa: F401
from .world import grid_classes, held_out_pairs, pretrain_pairs  # noqa: F401
