"""The toy world's downstream datasets (docs/toyworld.md), read like the benchmarks through split files.

- ToyShapes: 36 classes "<colour> <shape>" (6 colours x 6 shapes), drawn as outlines; the first 18 labels
  (CoOp's base half) are a checkerboard of the grid, six new cells were never seen in pretraining.
- ToyShapesNoisy, ToyShapesPhoto: the same classes in other renderings (domain generalization targets).
- ToyColours, ToyForms: 10 classes, the colour alone ("red", ...) or the shape alone ("circle", ...), of any
  shape or colour, four of them absent from ToyShapes (cross-dataset targets).

On first use a dataset writes ``<DATASET.ROOT>/<folder>/``: 32x32 PNGs and its split file in CoOp's format,
deterministically (a seeded numpy Generator, never python's global ``random``, which few-shot sampling uses),
into a temporary folder renamed into place, so a crash never leaves half a dataset.
"""
import os

import numpy as np
from PIL import Image

from vlprompt.data.base import Datum
from vlprompt.data.split_dataset import save_split
from vlprompt.toyworld.render import COLOURS, SHAPES, STYLES, SIZES, Scene, render
from vlprompt.toyworld.world import grid_classes

from . import DATASET_REGISTRY
from .generated import GeneratedDataset

SPLIT_SIZES = {"train": 32, "val": 8, "test": 40}  # images per class


def write_toy_dataset(folder, classes, style, seed, image_dir="images", split_file="split.json",
                      split_sizes=None):
    """Render every class's images and write them with the split file into ``folder``.

    classes: [(classname, colour index, shape index)] in label order; None: any colour or shape.
    """
    split_sizes = split_sizes or SPLIT_SIZES
    rng = np.random.default_rng(seed)
    image_root = os.path.join(folder, image_dir)
    per_class = sum(split_sizes.values())
    splits = {name: [] for name in split_sizes}
    for label, (classname, colour, shape) in enumerate(classes):
        colours = rng.integers(0, len(COLOURS), per_class) if colour is None else np.full(per_class, colour)
        shapes = rng.integers(0, len(SHAPES), per_class) if shape is None else np.full(per_class, shape)
        sizes = rng.integers(0, len(SIZES), per_class)
        scenes = [Scene(int(c), int(s), STYLES.index(style), int(z)) for c, s, z in zip(colours, shapes, sizes)]
        images = render(scenes, rng)
        class_dir = os.path.join(image_root, classname.replace(" ", "_"))
        os.makedirs(class_dir)
        index = 0
        for split, count in split_sizes.items():
            for _ in range(count):
                impath = os.path.join(class_dir, f"{index:03d}.png")
                Image.fromarray(images[index]).save(impath, format="PNG")
                splits[split].append(Datum(impath=impath, label=label, classname=classname))
                index += 1
    save_split(splits["train"], splits["val"], splits["test"], os.path.join(folder, split_file), image_root)


class ToyWorldDataset(GeneratedDataset):
    """A generated toy dataset: subclasses state the folder, the rendering style, the seed and the classes."""

    image_dir = "images"
    style = "outline"
    seed = 0

    @classmethod
    def classes(cls):
        """[(classname, colour index, shape index)] in label order; None: any."""
        colours = list(COLOURS)
        return [(f"{c} {s}", colours.index(c), SHAPES.index(s)) for c, s in grid_classes()]

    def write(self, folder):
        cls = type(self)
        write_toy_dataset(folder, cls.classes(), cls.style, cls.seed, cls.image_dir, cls.split_file)


@DATASET_REGISTRY.register()
class ToyShapes(ToyWorldDataset):
    dataset_dir = "toy_shapes"
    split_file = "split_toy_shapes.json"
    style = "outline"
    seed = 1


@DATASET_REGISTRY.register()
class ToyShapesNoisy(ToyWorldDataset):
    dataset_dir = "toy_shapes_noisy"
    split_file = "split_toy_shapes_noisy.json"
    style = "noisy"
    seed = 2


@DATASET_REGISTRY.register()
class ToyShapesPhoto(ToyWorldDataset):
    dataset_dir = "toy_shapes_photo"
    split_file = "split_toy_shapes_photo.json"
    style = "photo"
    seed = 3


@DATASET_REGISTRY.register()
class ToyColours(ToyWorldDataset):
    dataset_dir = "toy_colours"
    split_file = "split_toy_colours.json"
    style = "outline"
    seed = 4

    @classmethod
    def classes(cls):
        return [(colour, k, None) for k, colour in enumerate(COLOURS)]


@DATASET_REGISTRY.register()
class ToyForms(ToyWorldDataset):
    dataset_dir = "toy_forms"
    split_file = "split_toy_forms.json"
    style = "outline"
    seed = 5

    @classmethod
    def classes(cls):
        return [(shape, None, k) for k, shape in enumerate(SHAPES)]
