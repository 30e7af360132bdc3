"""Dassl-style logging: everything printed also goes to <output>/log.txt (never overwriting an old log)."""
import json
import os
import platform
import sys
import time


class _Tee:
    def __init__(self, path):
        self.console = sys.stdout
        self.file = open(path, "a", encoding="utf-8")

    def write(self, msg):
        self.console.write(msg)
        self.file.write(msg)

    def flush(self):
        self.console.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        self.file.close()


def setup_logger(output: str) -> str:
    """Tee stdout into output/log.txt; an existing log gets a timestamped sibling, as Dassl does."""
    if not output:
        return ""
    if output.endswith(".txt") or output.endswith(".log"):
        path = output
    else:
        path = os.path.join(output, "log.txt")
    if os.path.exists(path):
        path += time.strftime("-%Y-%m-%d-%H-%M-%S")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if isinstance(sys.stdout, _Tee):
        sys.stdout.close()
        sys.stdout = sys.stdout.console
    sys.stdout = _Tee(path)
    return path


def close_logger() -> None:
    if isinstance(sys.stdout, _Tee):
        sys.stdout.flush()
        sys.stdout.close()
        sys.stdout = sys.stdout.console


def collect_versions() -> dict:
    import open_clip
    import torch

    import vlprompt

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "vlprompt": vlprompt.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }


def write_json_atomic(path: str, obj) -> None:
    """Write JSON through a temp file and a rename, so a crash never leaves half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
