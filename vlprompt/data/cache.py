"""Two caches that take image decoding out of the loop.

TrainImageCache: the few-shot training set is small and read every epoch, so its decoded images are kept in
memory (DATALOADER.CACHE_TRAIN_IMAGES), optionally downscaled to a shorter side of at most
DATALOADER.CACHE_MAX_SIDE (keep it above the crop size, so random crops keep their quality). The images
are decoded once, before the first epoch (and before worker processes start, which inherit them).

TestPreprocessCache: the deterministic head of the test transform (Resize + CenterCrop) is cached on disk
as uint8 arrays (DATALOADER.TEST_CACHE_DIR), shared by every run and method evaluating the same data. An
entry is keyed by dataset, split, the description of the cached transforms and the image file's path,
mtime and size, so a changed transform or file is recomputed, never served stale. What follows
(ToTensor, Normalize) runs on the cached pixels: the tensors are identical to the uncached ones.
"""
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, Resize

__all__ = ["TrainImageCache", "TestPreprocessCache", "split_cacheable_prefix"]


class TrainImageCache:
    """index -> decoded RGB image (PIL), filled by load(); `None` for an image that failed to decode (the
    dataset then reads it again and reports it as usual)."""

    def __init__(self, max_side: int = 0, max_mb: float = 0, threads: int = 1):
        self.max_side, self.max_mb, self.threads = int(max_side or 0), float(max_mb or 0), max(1, int(threads))
        self.images = {}
        self.loaded = False
        self.nbytes = 0

    def _shrink(self, img):
        if self.max_side > 0 and min(img.size) > self.max_side:
            w, h = img.size
            scale = self.max_side / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        return img

    def load(self, paths, read):
        """Decode every path (in threads: PIL releases the GIL while decoding) until the memory budget."""
        if self.loaded:
            return
        self.loaded = True

        def decode(path):
            try:
                return self._shrink(read(path))
            except OSError:  # broken or missing: left to the normal path, which names the file
                return None

        full = False
        with ThreadPoolExecutor(self.threads) as pool:
            for i, img in enumerate(pool.map(decode, paths)):
                if img is not None:
                    size = img.size[0] * img.size[1] * len(img.getbands())
                    if self.max_mb and (self.nbytes + size) / 2 ** 20 > self.max_mb:
                        full = True
                        continue
                    self.nbytes += size
                self.images[i] = img
        print(f"Cached {sum(v is not None for v in self.images.values()):,} decoded training images in memory "
              f"({self.nbytes / 2 ** 20:.1f} MB" + (f", shorter side <= {self.max_side}" if self.max_side else "")
              + ")" + (f"; the rest exceeds DATALOADER.CACHE_MAX_MB {self.max_mb:g} and is read from disk"
                       if full else ""))

    def get(self, index):
        img = self.images.get(index)
        return img.copy() if img is not None else None  # transforms never see (or change) the cached object


def split_cacheable_prefix(transform):
    """(prefix, rest) of a Compose: the leading Resize/CenterCrop transforms and the others; (None, transform)
    when nothing is cacheable."""
    if not isinstance(transform, Compose):
        return None, transform
    n = 0
    while n < len(transform.transforms) and isinstance(transform.transforms[n], (Resize, CenterCrop)):
        n += 1
    if n == 0:
        return None, transform
    return Compose(transform.transforms[:n]), Compose(transform.transforms[n:])


def describe_transform(tfm) -> str:
    """repr of a transform without memory addresses (stable between runs)."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(tfm))


class TestPreprocessCache:
    """Disk cache of the output of `prefix` (a deterministic PIL -> PIL transform) per image file."""

    def __init__(self, root: str, dataset: str, split: str, prefix):
        self.prefix = prefix
        self.description = describe_transform(prefix)
        tfm_key = hashlib.sha1(self.description.encode()).hexdigest()[:16]
        self.folder = os.path.join(os.path.expanduser(root), _safe(dataset), _safe(split), tfm_key)
        os.makedirs(self.folder, exist_ok=True)
        desc_file = os.path.join(self.folder, "transform.txt")
        if not os.path.exists(desc_file):
            with open(desc_file + f".tmp{os.getpid()}", "w") as f:
                f.write(self.description + "\n")
            os.replace(desc_file + f".tmp{os.getpid()}", desc_file)
        self.hits = self.misses = 0

    def entry(self, path: str) -> str:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}\0{st.st_mtime_ns}\0{st.st_size}\0{self.description}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return os.path.join(self.folder, digest[:2], digest + ".npy")

    def get(self, path: str, read):
        """The prefix's output for the image at path, as a PIL image: from disk, or computed and stored."""
        entry = self.entry(path)
        try:
            arr = np.load(entry, allow_pickle=False)
            self.hits += 1
            return Image.fromarray(arr)
        except (OSError, ValueError):
            pass
        img = self.prefix(read(path))
        self.misses += 1
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        tmp = f"{entry}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(img), allow_pickle=False)
        os.replace(tmp, entry)  # atomic: workers and concurrent runs never read a half-written entry
        return img


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "_"
