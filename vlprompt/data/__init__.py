"""Data: Datum, DatasetBase and the shared reader base, few-shot and base/new sampling, transforms, loaders."""
from .base import (
    DatasetBase, Datum, generate_fewshot_dataset, split_dataset_by_domain, split_dataset_by_label, subsample_classes,
)
from .split_dataset import (
    DATUM_PICKLE_NAMES, SplitFileDataset, load_fewshot_cache, read_split, reroot_impath, save_fewshot_cache,
    save_split,
)
from .transforms import INTERPOLATION_MODES, SUPPORTED_TRANSFORMS, build_transform
from .manager import BrokenImageError, DataManager, DatasetWrapper, build_data_loader, read_image  # noqa: E402

__all__ = [
    "Datum", "DatasetBase", "split_dataset_by_label", "split_dataset_by_domain", "generate_fewshot_dataset",
    "subsample_classes", "read_split", "save_split", "load_fewshot_cache", "save_fewshot_cache", "reroot_impath",
    "DATUM_PICKLE_NAMES", "SplitFileDataset", "build_transform", "INTERPOLATION_MODES", "SUPPORTED_TRANSFORMS",
    "DataManager", "DatasetWrapper", "build_data_loader", "read_image", "BrokenImageError",
]
