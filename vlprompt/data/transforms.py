"""Dassl's build_transform for the INPUT.TRANSFORMS names, in Dassl's order, on torchvision transforms.

CLIP configs use ``["random_resized_crop", "random_flip", "normalize"]`` with bicubic interpolation:
train = RandomResizedCrop(SIZE, RRCROP_SCALE) + flip + ToTensor + Normalize;
test = Resize(max(SIZE)) + CenterCrop(SIZE) + ToTensor + Normalize, whatever the train choices.
"""
import random

import numpy as np
import torch
import torchvision.transforms.functional as F
from torchvision.transforms import (
    CenterCrop, ColorJitter, Compose, GaussianBlur, InterpolationMode, Normalize, RandomApply, RandomCrop,
    RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop, Resize, ToTensor,
)

from .randaugment import DasslRandAugment

__all__ = ["build_transform", "INTERPOLATION_MODES", "SUPPORTED_TRANSFORMS"]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

SUPPORTED_TRANSFORMS = (
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop", "random_translation",
    "center_crop", "cutout", "gaussian_noise", "colorjitter", "randomgrayscale", "gaussian_blur", "randaugment",
)
# Dassl names not ported (AutoAugment policies, the other RandAugment variants); no CLIP prompt-learning config
# uses them
UNSUPPORTED_DASSL_TRANSFORMS = (
    "imagenet_policy", "cifar10_policy", "svhn_policy", "randaugment_fixmatch", "randaugment2",
)


class Random2DTranslation:
    """With probability p: resize to 1.125x the target size and crop the target size at a random spot;
    otherwise resize to the target size (Dassl's random_translation, drawn from python's random)."""

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        self.height, self.width, self.p, self.interpolation = height, width, p, interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return F.resize(img, [self.height, self.width], interpolation=self.interpolation)
        big_w, big_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        img = F.resize(img, [big_h, big_w], interpolation=self.interpolation)
        left = int(round(random.uniform(0, big_w - self.width)))
        top = int(round(random.uniform(0, big_h - self.height)))
        return F.crop(img, top, left, self.height, self.width)


class InstanceNormalization:
    """Normalize each channel of a tensor image by its own mean and std."""

    def __init__(self, eps=1e-8):
        self.eps = eps

    def __call__(self, img):
        flat = img.reshape(img.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1)
        std = flat.std(1).view(-1, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` (clipped at the border) in a tensor image (numpy RNG)."""

    def __init__(self, n_holes=1, length=16):
        self.n_holes, self.length = n_holes, length

    def __call__(self, img):
        h, w = img.shape[1], img.shape[2]
        mask = np.ones((h, w), np.float32)
        for _ in range(self.n_holes):
            y, x = np.random.randint(h), np.random.randint(w)
            y1, y2 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
            x1, x2 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * torch.from_numpy(mask).expand_as(img)


class GaussianNoise:
    """With probability p, add N(mean, std) noise to a tensor image."""

    def __init__(self, mean=0.0, std=0.15, p=0.5):
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


def _interpolation(cfg):
    name = cfg.INPUT.INTERPOLATION
    if name not in INTERPOLATION_MODES:
        raise ValueError(f"INPUT.INTERPOLATION must be one of {sorted(INTERPOLATION_MODES)}, got {name!r}")
    return INTERPOLATION_MODES[name]


def _check_choices(choices):
    for choice in choices:
        if choice in UNSUPPORTED_DASSL_TRANSFORMS:
            raise ValueError(
                f"INPUT.TRANSFORMS: Dassl's '{choice}' is not implemented in vlprompt. "
                f"Supported: {', '.join(SUPPORTED_TRANSFORMS)}"
            )
        if choice not in SUPPORTED_TRANSFORMS:
            raise ValueError(
                f"INPUT.TRANSFORMS: unknown transform '{choice}'. Supported: {', '.join(SUPPORTED_TRANSFORMS)}"
            )


def build_transform(cfg, is_train=True, choices=None):
    """The train or test transform for ``cfg.INPUT`` (``choices`` overrides INPUT.TRANSFORMS, as in Dassl).
    Returns None when INPUT.NO_TRANSFORM is set."""
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    _check_choices(choices)
    size = tuple(cfg.INPUT.SIZE)
    interpolation = _interpolation(cfg)
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    build = _train_transforms if is_train else _test_transforms
    tfms = build(cfg, choices, size, interpolation, normalize)
    print(f"Building transform_{'train' if is_train else 'test'}")  # logged like Dassl's listing
    for tfm in tfms:
        print(f"+ {tfm}")
    return Compose(tfms)


def _train_transforms(cfg, choices, size, interpolation, normalize):
    # Dassl's order; note "center_crop" does nothing at train time (test always center-crops)
    tfms = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        tfms.append(Resize(size, interpolation=interpolation))  # a (h, w) size: no aspect-preserving resize
    if "random_translation" in choices:
        tfms.append(Random2DTranslation(size[0], size[1]))
    if "random_crop" in choices:
        tfms.append(RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        tfms.append(RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interpolation))
    if "random_flip" in choices:
        tfms.append(RandomHorizontalFlip())
    if "randaugment" in choices:
        tfms.append(DasslRandAugment(cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M))
    if "colorjitter" in choices:
        i = cfg.INPUT
        tfms.append(ColorJitter(brightness=i.COLORJITTER_B, contrast=i.COLORJITTER_C,
                                saturation=i.COLORJITTER_S, hue=i.COLORJITTER_H))
    if "randomgrayscale" in choices:
        tfms.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        tfms.append(RandomApply([GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    tfms.append(ToTensor())
    if "cutout" in choices:
        tfms.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        tfms.append(normalize)
    if "gaussian_noise" in choices:
        tfms.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        tfms.append(InstanceNormalization())
    return tfms


def _test_transforms(cfg, choices, size, interpolation, normalize):
    tfms = [Resize(max(size), interpolation=interpolation), CenterCrop(size), ToTensor()]
    if "normalize" in choices:
        tfms.append(normalize)
    if "instance_norm" in choices:
        tfms.append(InstanceNormalization())
    return tfms
