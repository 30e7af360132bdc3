"""``tools/check_data.py``: which benchmarks under a DATA folder are complete, and what exactly is missing.

It prints the same DataCheck the readers raise before loading (one place: ``DatasetLayout.check``), so a
run that stops on missing data and this tool name the same pieces.
"""
import argparse
import os
import sys

from . import DATASET_REGISTRY
from .benchmark import DatasetLayout

# CoOp's DATASETS.md order
BENCHMARKS = (
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft", "SUN397",
    "DescribableTextures", "EuroSAT", "UCF101", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR",
)


def _norm(name):
    return "".join(ch for ch in name.lower() if ch.isalnum())


def resolve(name):
    """A benchmark by DATASET.NAME, folder name, DATASETS.md section or config file stem, any case
    ("OxfordFlowers", "oxford_flowers", "Flowers102", "dtd", "imagenet_a", ...)."""
    for bench in BENCHMARKS:
        cls = DATASET_REGISTRY.get(bench)
        if _norm(name) in {_norm(bench), _norm(cls.dataset_dir), _norm(cls.title)}:
            return bench
    raise KeyError(f"Unknown dataset {name!r}; known: {', '.join(BENCHMARKS)}")


def check_datasets(root, names=None, images=True):
    """[DataCheck] for the named benchmarks (default: all 15)."""
    return [DATASET_REGISTRY.get(resolve(n)).check(root, images=images) for n in (names or BENCHMARKS)]


def check_config_file(path, root, images=True):
    """The DataCheck of the dataset a dataset yaml names (a benchmark, or ImageFolder/ImageList own data)."""
    from vlprompt.config import get_cfg_default, merge_from_file

    cfg = get_cfg_default()
    merge_from_file(cfg, path)
    cls = DATASET_REGISTRY.get(cfg.DATASET.NAME)
    if hasattr(cls, "check_custom"):
        return cls.check_custom(root or cfg.DATASET.ROOT, cfg.DATASET.CUSTOM, images=images)
    if issubclass(cls, DatasetLayout):
        return cls.check(root or cfg.DATASET.ROOT, images=images)
    raise KeyError(f"{cfg.DATASET.NAME} (from {path}) has no data check")


def main(argv=None):
    p = argparse.ArgumentParser(description="Check the dataset folders under a DATA root (CoOp's DATASETS.md layout)")
    p.add_argument("--root", required=True, help="the DATA folder (what --root / DATASET.ROOT points at)")
    p.add_argument("--dataset", nargs="+", action="extend", default=[],
                   help="datasets to check (DATASET.NAME, folder or config name); default: all 15 benchmarks")
    p.add_argument("--dataset-config-file", nargs="+", action="extend", default=[],
                   help="dataset yaml files to check (own data: DATASET.NAME ImageFolder / ImageList)")
    p.add_argument("--no-images", action="store_true", help="skip checking that every listed image exists")
    args = p.parse_args(argv)

    root = os.path.abspath(os.path.expanduser(args.root))
    try:
        reports = check_datasets(root, args.dataset, not args.no_images) if args.dataset or not \
            args.dataset_config_file else []
        reports += [check_config_file(f, root, not args.no_images) for f in args.dataset_config_file]
    except (KeyError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Checking datasets under {root}\n")
    for report in reports:
        print(report.summary() + "\n")
    missing = [r.name for r in reports if not r.ok]
    print(f"{len(reports) - len(missing)} of {len(reports)} datasets found"
          + (f"; incomplete: {', '.join(missing)}" if missing else ""))
    return 1 if missing else 0
