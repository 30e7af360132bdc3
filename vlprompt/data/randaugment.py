"""Dassl's "randaugment" (INPUT.TRANSFORMS name; CoPrompt's training views): at every call, n operations drawn with
replacement (python's random.choices) from a fixed list of 16, each applied at the fixed magnitude
v = m / 30 * (max - min) + min of its range (INPUT.RANDAUGMENT_N = 2, INPUT.RANDAUGMENT_M = 10 by default).

It differs from torchvision's RandAugment (other operations, ranges and sign draws), so Dassl's list is kept here:
the geometric operations and Rotate flip their sign with probability 0.5 (python's random), CutoutAbs centres a
square of side v at a numpy-uniform point and fills it with (125, 123, 114). Dassl's SolarizeAdd uses `np.int`,
removed from numpy; here the same arithmetic runs on int64.
"""
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def _signed(v):
    return -v if random.random() > 0.5 else v


def _affine(img, coefficients):
    return img.transform(img.size, Image.AFFINE, coefficients)


def _solarize_add(img, v, threshold=128):
    added = np.clip(np.asarray(img).astype(np.int64) + int(v), 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(added), threshold)


def _cutout(img, v):
    if v <= 0:
        return img
    w, h = img.size
    x0, y0 = np.random.uniform(w), np.random.uniform(h)
    x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
    box = (x0, y0, min(w, x0 + v), min(h, y0 + v))
    img = img.copy()
    ImageDraw.Draw(img).rectangle(box, (125, 123, 114))
    return img


# (name, operation(img, v), min, max), in Dassl's order
OPERATIONS = (
    ("AutoContrast", lambda img, v: ImageOps.autocontrast(img), 0, 1),
    ("Equalize", lambda img, v: ImageOps.equalize(img), 0, 1),
    ("Invert", lambda img, v: ImageOps.invert(img), 0, 1),
    ("Rotate", lambda img, v: img.rotate(_signed(v)), 0, 30),
    ("Posterize", lambda img, v: ImageOps.posterize(img, int(v)), 4, 8),
    ("Solarize", lambda img, v: ImageOps.solarize(img, v), 0, 256),
    ("SolarizeAdd", _solarize_add, 0, 110),
    ("Color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    ("Contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    ("Brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    ("Sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    ("ShearX", lambda img, v: _affine(img, (1, _signed(v), 0, 0, 1, 0)), 0.0, 0.3),
    ("ShearY", lambda img, v: _affine(img, (1, 0, 0, _signed(v), 1, 0)), 0.0, 0.3),
    ("CutoutAbs", _cutout, 0, 40),
    ("TranslateXabs", lambda img, v: _affine(img, (1, 0, _signed(v), 0, 1, 0)), 0.0, 100),
    ("TranslateYabs", lambda img, v: _affine(img, (1, 0, 0, 0, 1, _signed(v))), 0.0, 100),
)


class DasslRandAugment:
    def __init__(self, n=2, m=10):
        if not 0 <= m <= 30:
            raise ValueError(f"INPUT.RANDAUGMENT_M is {m}; it must be between 0 and 30")
        self.n, self.m = n, m

    def __call__(self, img):
        for _, operation, low, high in random.choices(OPERATIONS, k=self.n):
            img = operation(img, self.m / 30 * (high - low) + low)
        return img

    def __repr__(self):
        return f"DasslRandAugment(n={self.n}, m={self.m})"
