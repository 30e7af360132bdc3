"""Datasets written by vlprompt itself on first use (Synthetic, the toy world), read like the benchmarks."""
import os
import shutil
import uuid

from vlprompt.data.split_dataset import SplitFileDataset


class GeneratedDataset(SplitFileDataset):
    """Writes `<DATASET.ROOT>/<dataset_dir>` with write(folder) the first time it is needed, then reads it
    through SplitFileDataset. The folder is written under a temporary name and renamed into place, so a crash
    never leaves half a dataset, and two processes writing at once end with one complete copy."""

    def write(self, folder: str) -> None:
        """Write images and the split file into `folder`; deterministic."""
        raise NotImplementedError

    def prepare(self, root):
        if os.path.isdir(self.dataset_dir):
            return
        name = type(self).__name__
        parent = os.path.dirname(root)
        if not os.path.isdir(root) and not os.path.isdir(parent):
            raise FileNotFoundError(
                f"DATASET.ROOT {root} does not exist, nor does its parent {parent}: create it or point "
                f"DATASET.ROOT (--root) at an existing folder where the {name} dataset can be written.")
        try:
            os.makedirs(root, exist_ok=True)
            # not tempfile.mkdtemp: its 0700 mode would stay on the renamed folder
            tmp = os.path.join(root, f".{type(self).dataset_dir}-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.mkdir(tmp)
        except OSError as e:
            raise FileNotFoundError(
                f"Cannot create the {name} dataset folder {self.dataset_dir} ({e}): point DATASET.ROOT "
                f"(--root) at a writable folder.") from e
        print(f"Writing the {name} dataset to {self.dataset_dir}")
        try:
            self.write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, self.dataset_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(self.dataset_dir):
                raise
            # another process wrote it first: use theirs (same seed, same files)

    def create_split(self):
        raise FileNotFoundError(
            f"{self.split_path} is missing from the {type(self).__name__} folder: delete {self.dataset_dir} "
            f"and it is written again.")
