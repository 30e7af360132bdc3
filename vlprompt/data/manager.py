"""DataManager: dataset -> transforms -> loaders, with Dassl's samplers, batch dicts and drop_last rule."""
import multiprocessing
import os
import warnings

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.dataloader import default_collate

from vlprompt.datasets import build_dataset
from vlprompt.engine import distributed as dist_utils
from vlprompt.utils.run_lock import close_inherited_locks
from vlprompt.utils.seed import derived_seed, seeded_rng

from .base import check_split_labels
from .cache import TestPreprocessCache, TrainImageCache, split_cacheable_prefix
from .transforms import INTERPOLATION_MODES, build_transform

__all__ = ["BrokenImageError", "read_image", "DatasetWrapper", "build_data_loader", "DataManager"]

SAMPLERS = {"RandomSampler": RandomSampler, "SequentialSampler": SequentialSampler}


class BrokenImageError(OSError):
    """An image file that exists but cannot be decoded."""


def read_image(path):
    """The image at ``path`` as RGB; errors name the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"Image not found: {path} (is DATASET.ROOT right?)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BrokenImageError(f"Cannot decode image {path}: {e}") from e


class DatasetWrapper(Dataset):
    """Datum list -> Dassl's batch dicts {"img", "label", "domain", "impath", "index"} (+ "img2".. for a
    list of transforms, "img0" with DATALOADER.RETURN_IMG0).

    With DATALOADER.SKIP_BROKEN_IMAGES an undecodable image yields None (dropped by the loader's collate)
    and is counted in ``num_skipped``, shared with worker processes; otherwise it raises BrokenImageError.

    Training augmentation draws its randomness from a generator seeded with (run seed, epoch, item index)
    (``augment_seed`` and ``set_epoch``), not from the process's random state: the images an epoch sees do not
    depend on the number of workers, on how long a worker has lived, or on whether the run was resumed.
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.data_source = data_source
        self.transform = transform  # one transform, or a list/tuple giving img, img2, ...
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1  # K augmentations: training only
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        self.skip_broken = cfg.DATALOADER.SKIP_BROKEN_IMAGES
        self._num_skipped = multiprocessing.Value("l", 0)
        self._epoch = multiprocessing.Value("q", 0, lock=False)  # shared with persistent worker processes
        self.augment_seed = None  # set by build_data_loader for training sets
        self.memory_cache = None  # TrainImageCache (training set in memory), see enable_memory_cache()
        self.disk_cache = None  # (TestPreprocessCache, rest of the transform), see enable_disk_cache()
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")

        # img0: the image without augmentation, as Dassl builds it
        to_tensor = [T.Resize(cfg.INPUT.SIZE, interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]),
                     T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    @property
    def num_skipped(self):
        """How many times an undecodable image was skipped (summed over workers and epochs)."""
        return self._num_skipped.value

    def __len__(self):
        return len(self.data_source)

    def set_epoch(self, epoch):
        """The epoch the next items are drawn for (workers read it when they load an item)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self):
        return self._epoch.value

    def enable_memory_cache(self, max_side=0, max_mb=0, threads=1):
        """Keep the decoded images in memory (filled by preload(), before the first epoch)."""
        self.memory_cache = TrainImageCache(max_side, max_mb, threads)

    def enable_disk_cache(self, root, dataset, split):
        """Cache the Resize/CenterCrop head of a single (test) transform on disk under root."""
        prefix, rest = split_cacheable_prefix(self.transform)
        if prefix is None or isinstance(self.transform, (list, tuple)) or self.return_img0:
            print(f"DATALOADER.TEST_CACHE_DIR: the {split} transform does not start with Resize/CenterCrop; "
                  f"not cached")
            return
        self.disk_cache = (TestPreprocessCache(root, dataset, split, prefix), rest)

    def preload(self):
        if self.memory_cache is not None:
            self.memory_cache.load([item.impath for item in self.data_source], read_image)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        try:
            if self.disk_cache is not None:
                cache, rest = self.disk_cache
                output["img"] = rest(cache.get(item.impath, read_image))
                return output
            img0 = self.memory_cache.get(idx) if self.memory_cache is not None else None
            if img0 is None:
                img0 = read_image(item.impath)
        except BrokenImageError as e:
            if not self.skip_broken:
                raise
            with self._num_skipped.get_lock():
                self._num_skipped.value += 1
            warnings.warn(f"Skipping a broken image (DATALOADER.SKIP_BROKEN_IMAGES): {e}")
            return None

        if self.augment_seed is None or self.transform is None:
            self._transform(output, img0)
        else:
            in_worker = torch.utils.data.get_worker_info() is not None  # nothing else draws from a worker's RNG
            with seeded_rng(derived_seed(self.augment_seed, self._epoch.value, idx), restore=not in_worker):
                self._transform(output, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform(self, output, img0):
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._augment(tfm, img0)
        else:
            output["img"] = self._augment(self.transform, img0)

    def _augment(self, tfm, img0):
        imgs = [tfm(img0) for _ in range(self.k_tfm)]
        return imgs[0] if len(imgs) == 1 else imgs


def collate_skipping_broken(batch):
    """default_collate without the None items of skipped images; a batch of only broken images is None."""
    batch = [sample for sample in batch if sample is not None]
    return default_collate(batch) if batch else None


class EpochSampler(dist_utils.DistributedSampler):
    """The training sampler: the order of epoch e is a fixed function of (seed, e) (a permutation from a
    generator seeded with seed + e when shuffling), over one process or this rank's share under torchrun, and
    ``skip`` drops the first items of the next iteration only (a run resumed in the middle of an epoch goes on
    with the batches it had not seen)."""

    def __init__(self, data_source, shuffle=True, seed=0, drop_last=False):
        super().__init__(data_source, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        order = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


class _Loader(DataLoader):
    """A DataLoader that fills its dataset's memory cache before the first iteration (and so before worker
    processes start) and forwards set_epoch() to its sampler and dataset. An iteration started without a
    set_epoch() since the last one counts as the next epoch, so a loop that never calls it still gets a new
    order and new augmentations every time."""

    _epoch = 0
    _iterations = 0
    _epoch_was_set = False

    def __iter__(self):
        preload = getattr(self.dataset, "preload", None)
        if preload is not None:
            preload()
        if self._iterations and not self._epoch_was_set:
            self.set_epoch(self._epoch + 1)
        self._iterations += 1
        self._epoch_was_set = False
        return super().__iter__()

    def set_epoch(self, epoch):
        self.__dict__.update(_epoch=int(epoch), _epoch_was_set=True)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def skip_batches(self, num_batches):
        """Start the next iteration at batch ``num_batches`` of the epoch (training loaders only)."""
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("only a training loader (EpochSampler) can skip batches")
        self.sampler.skip = int(num_batches) * self.batch_size


def _init_worker(worker_id):
    close_inherited_locks()  # the output folder's lock ends with the main process, not with its workers


def run_seed(cfg) -> int:
    """The seed of the training order and augmentation: SEED, or (SEED < 0, no fixed seed) a random one, the
    same on every process under torchrun."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    if dist_utils.is_distributed():
        return 0
    return int.from_bytes(os.urandom(7), "little")


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0,
                      n_ins=2, tfm=None, is_train=True, dataset_wrapper=None):
    """A DataLoader as Dassl builds it. ``n_domain``/``n_ins`` belong to Dassl's domain/class samplers,
    which the CLIP configs do not use; they are accepted for signature compatibility.

    Under torchrun (several processes) the sampler is a DistributedSampler: in training `batch_size` is the
    global batch, each process loads batch_size / world_size of it; evaluation shards the set with the same
    per-process batch (the trainer gathers the predictions)."""
    if sampler_type not in SAMPLERS:
        raise ValueError(f"Unknown sampler type {sampler_type!r}; supported: {', '.join(SAMPLERS)}")
    wrapper = (dataset_wrapper or DatasetWrapper)(cfg, data_source, transform=tfm, is_train=is_train)
    # Dassl drops the last partial batch in training only if at least one full batch exists
    drop_last = is_train and len(data_source) >= batch_size
    seed = run_seed(cfg)
    if is_train:
        # the order of an epoch and its augmentations are functions of (seed, epoch): see EpochSampler and
        # DatasetWrapper; a resumed run (any NUM_WORKERS) sees the images an uninterrupted one sees
        sampler = EpochSampler(data_source, shuffle=sampler_type == "RandomSampler", seed=seed, drop_last=drop_last)
        if isinstance(wrapper, DatasetWrapper):
            wrapper.augment_seed = seed
        if dist_utils.is_distributed():
            batch_size = dist_utils.per_rank_batch_size(batch_size)
    elif dist_utils.is_distributed():
        sampler = dist_utils.DistributedSampler(data_source, shuffle=sampler_type == "RandomSampler", seed=seed,
                                                drop_last=drop_last)
    else:
        sampler = SAMPLERS[sampler_type](data_source)
    workers = cfg.DATALOADER.NUM_WORKERS
    if is_train and cfg.DATALOADER.CACHE_TRAIN_IMAGES and isinstance(wrapper, DatasetWrapper):
        wrapper.enable_memory_cache(cfg.DATALOADER.CACHE_MAX_SIDE, cfg.DATALOADER.CACHE_MAX_MB, max(workers, 1))
    loader = _Loader(
        wrapper,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        persistent_workers=workers > 0,
        collate_fn=collate_skipping_broken if cfg.DATALOADER.SKIP_BROKEN_IMAGES else None,
        # the workers' base seed comes from here, not from the process's torch generator, whose stream (a
        # resume point) then does not depend on how many loaders were iterated with how many workers
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_init_worker if workers > 0 else None,
    )
    if len(loader) == 0:
        raise ValueError(f"The data loader is empty ({len(data_source)} items, batch size {batch_size})")
    return loader


class DataManager:
    """Builds the dataset named by DATASET.NAME and its train/val/test loaders, as Dassl's DataManager."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        self.cfg = cfg
        # Under torchrun the first process builds the dataset first: readers write split / few-shot files and
        # generated datasets their images, which the other processes then only read.
        if not dist_utils.is_main_process():
            dist_utils.barrier()
        dataset = build_dataset(cfg)
        if dist_utils.is_main_process():
            dist_utils.barrier()
        # Dassl counts max label + 1 classes and evaluates any label: gaps and classes training lacks are refused
        check_split_labels(dataset.train_x, dataset.val, dataset.test, f"{cfg.DATASET.NAME} (after few-shot "
                           f"sampling and SUBSAMPLE_CLASSES {cfg.DATASET.SUBSAMPLE_CLASSES})")

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loaders = cfg.DATALOADER
        self.train_loader_x = build_data_loader(
            cfg, sampler_type=loaders.TRAIN_X.SAMPLER, data_source=dataset.train_x,
            batch_size=loaders.TRAIN_X.BATCH_SIZE, n_domain=loaders.TRAIN_X.N_DOMAIN, n_ins=loaders.TRAIN_X.N_INS,
            tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
        )
        self.train_loader_u = None
        if dataset.train_u:
            u = loaders.TRAIN_X if loaders.TRAIN_U.SAME_AS_X else loaders.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=u.SAMPLER, data_source=dataset.train_u, batch_size=u.BATCH_SIZE,
                n_domain=u.N_DOMAIN, n_ins=u.N_INS, tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
            )
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=loaders.TEST.SAMPLER, data_source=dataset.val, batch_size=loaders.TEST.BATCH_SIZE,
                tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
            )
        self.test_loader = build_data_loader(
            cfg, sampler_type=loaders.TEST.SAMPLER, data_source=dataset.test, batch_size=loaders.TEST.BATCH_SIZE,
            tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
        )
        if loaders.TEST_CACHE_DIR:
            for split, loader in (("val", self.val_loader), ("test", self.test_loader)):
                if loader is not None and isinstance(loader.dataset, DatasetWrapper):
                    loader.dataset.enable_disk_cache(loaders.TEST_CACHE_DIR, cfg.DATASET.NAME, split)

        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self.lab2cname = dataset.lab2cname
        self.classnames = dataset.classnames
        if cfg.VERBOSE:
            self.show_dataset_summary()

    @property
    def num_skipped_images(self):
        """Broken images skipped so far by all loaders (DATALOADER.SKIP_BROKEN_IMAGES)."""
        loaders = (self.train_loader_x, self.train_loader_u, self.val_loader, self.test_loader)
        return sum(getattr(loader.dataset, "num_skipped", 0) for loader in loaders if loader is not None)

    def show_dataset_summary(self):
        cfg, dataset = self.cfg, self.dataset
        rows = [("Dataset", cfg.DATASET.NAME)]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(("Source", list(cfg.DATASET.SOURCE_DOMAINS)))
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(("Target", list(cfg.DATASET.TARGET_DOMAINS)))
        rows.append(("# classes", f"{self.num_classes:,}"))
        rows.append(("# train_x", f"{len(dataset.train_x):,}"))
        if dataset.train_u:
            rows.append(("# train_u", f"{len(dataset.train_u):,}"))
        if dataset.val:
            rows.append(("# val", f"{len(dataset.val):,}"))
        rows.append(("# test", f"{len(dataset.test):,}"))
        print(format_table(rows))


def format_table(rows):
    """Two columns framed by dashes, as tabulate's default format that Dassl prints."""
    rows = [(str(a), str(b)) for a, b in rows]
    w1, w2 = max(len(a) for a, _ in rows), max(len(b) for _, b in rows)
    rule = f"{'-' * w1}  {'-' * w2}"
    return "\n".join([rule] + [f"{a:<{w1}}  {b:<{w2}}".rstrip() for a, b in rows] + [rule])
