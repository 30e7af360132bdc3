"""Dataset readers, one small module per benchmark, looked up by DATASET.NAME."""
from vlprompt.utils.registry import Registry

DATASET_REGISTRY = Registry("dataset")


def build_dataset(cfg):
    """The reader registered as ``cfg.DATASET.NAME``, built from ``cfg``."""
    name = cfg.DATASET.NAME
    if not name:
        raise ValueError(
            "DATASET.NAME is empty: pass a dataset config (--dataset-config-file configs/datasets/<name>.yaml). "
            f"Registered datasets: {', '.join(DATASET_REGISTRY.names())}"
        )
    reader = DATASET_REGISTRY.get(name)  # a KeyError naming close matches and every registered dataset
    print(f"Loading dataset: {name}")
    return reader(cfg)


# Readers import vlprompt.data, which imports build_dataset above: keep these imports after it
from . import synthetic  # noqa: E402,F401
from . import (  # noqa: E402,F401  the benchmark readers (CoOp's DATASET.NAME values) and the own-data readers
    caltech101, dtd, eurosat, fgvc_aircraft, food101, imagenet, oxford_flowers, oxford_pets, own_data, stanford_cars,
    sun397, ucf101,
)
from . import toyworld  # noqa: E402,F401
