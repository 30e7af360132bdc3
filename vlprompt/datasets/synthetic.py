"""A tiny generated dataset ("Synthetic") for smoke runs and tests without downloads.

On first use it writes ``<DATASET.ROOT>/synthetic/``: 10 classes of coloured shapes ("red circle", ...),
12 small PNGs each, and ``split_synthetic.json`` in CoOp's split format; then it is read through the same
SplitFileDataset path as the real benchmarks (split file, few-shot cache, base/new subsampling).
Generation uses its own seeded RNG, never python's global ``random``, so it does not shift the few-shot
sample, and writes into a temporary folder renamed into place, so a crash never leaves half a dataset.
"""
import math
import os
import random

from PIL import Image, ImageDraw

from vlprompt.data.base import Datum
from vlprompt.data.split_dataset import save_split

from . import DATASET_REGISTRY
from .generated import GeneratedDataset

# (colour name, RGB, shape): each class differs in both colour and shape
CLASSES = [
    ("red", (220, 40, 40), "circle"),
    ("green", (40, 180, 60), "square"),
    ("blue", (50, 80, 220), "triangle"),
    ("yellow", (230, 210, 40), "cross"),
    ("purple", (140, 60, 180), "ring"),
    ("orange", (240, 140, 30), "diamond"),
    ("cyan", (40, 200, 210), "star"),
    ("pink", (240, 120, 180), "stripes"),
    ("white", (235, 235, 235), "dots"),
    ("brown", (130, 80, 40), "checkerboard"),
]
IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 6, "val": 2, "test": 4}  # images per class


def _draw_shape(draw, shape, cx, cy, r, colour):
    size = IMAGE_SIZE
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        t = max(2, r // 3)
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=3)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "star":
        # five points: outer and inner vertices alternate every 36 degrees
        radii = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
        angles = [math.radians(36 * k) for k in range(10)]
        draw.polygon([(cx + q * math.sin(a), cy - q * math.cos(a)) for q, a in zip(radii, angles)], fill=colour)
    elif shape == "stripes":
        for y in range(cy % 6, size, 6):
            draw.rectangle([0, y, size, y + 2], fill=colour)
    elif shape == "dots":
        for y in range(cy % 8, size, 8):
            for x in range(cx % 8, size, 8):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    elif shape == "checkerboard":
        cell = 4 + r % 3
        for y in range(0, size, cell):
            for x in range(0, size, cell):
                if (x // cell + y // cell) % 2 == 0:
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)


def _make_image(rng, rgb, shape):
    """A noisy dark background with the class's shape in a jittered colour, position and size."""
    level = rng.randrange(20, 60)
    noise = bytes(level + rng.randrange(0, 20) for _ in range(IMAGE_SIZE * IMAGE_SIZE * 3))
    img = Image.frombytes("RGB", (IMAGE_SIZE, IMAGE_SIZE), noise)
    colour = tuple(min(255, max(0, c + rng.randrange(-20, 21))) for c in rgb)
    cx = IMAGE_SIZE // 2 + rng.randrange(-4, 5)
    cy = IMAGE_SIZE // 2 + rng.randrange(-4, 5)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, rng.randrange(8, 13), colour)
    return img


def write_synthetic_dataset(folder, image_dir="images", split_file="split_synthetic.json", seed=0):
    """Write the images and the split into ``folder`` (deterministic for a given seed)."""
    rng = random.Random(seed)  # private RNG: python's global random is reserved for few-shot sampling
    splits = {name: [] for name in SPLIT_SIZES}
    image_root = os.path.join(folder, image_dir)
    for label, (colour, rgb, shape) in enumerate(CLASSES):
        classname = f"{colour} {shape}"
        class_dir = os.path.join(image_root, classname.replace(" ", "_"))
        os.makedirs(class_dir)
        index = 0
        for split, count in SPLIT_SIZES.items():
            for _ in range(count):
                impath = os.path.join(class_dir, f"{index:03d}.png")
                _make_image(rng, rgb, shape).save(impath, format="PNG")
                splits[split].append(Datum(impath=impath, label=label, classname=classname))
                index += 1
    save_split(splits["train"], splits["val"], splits["test"], os.path.join(folder, split_file), image_root)


@DATASET_REGISTRY.register()
class Synthetic(GeneratedDataset):
    dataset_dir = "synthetic"
    image_dir = "images"
    split_file = "split_synthetic.json"

    def write(self, folder):
        write_synthetic_dataset(folder, type(self).image_dir, type(self).split_file)
