"""Dassl-style logging: everything printed also goes to <output>/log.txt (never overwriting an old log)."""
import json
import os
import platform
import sys
import time


class _Tee:
    """stdout and the log file. The file is line-buffered (each line reaches the operating system when it is
    printed, so a killed run keeps its log up to its last line); a write error on it (a full disk) stops the
    file copy, not the run's console output."""

    def __init__(self, path):
        self.console = sys.stdout
        self.path = path
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        self.error = None

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None and self.error is None:
            try:
                self.file.write(msg)
            except OSError as e:
                self.error = e

    def flush(self):
        self.console.flush()
        if self.file is not None and self.error is None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as e:
                self.error = e

    def isatty(self):
        return False

    def close(self):
        try:
            self.file.close()
        except OSError:
            pass


_last_log = {"path": ""}


def current_log_path() -> str:
    """The log file of the current (or last) run of this process, "" if none."""
    return _last_log["path"]


def forget_log() -> None:
    """A new run in this process: errors before its log exists go to no log."""
    _last_log["path"] = ""


def append_to_log(text: str) -> None:
    """Add text to the current run's log file (used for error messages printed to stderr)."""
    path = current_log_path()
    if not path:
        return
    text = text if text.endswith("\n") else text + "\n"
    try:
        tee = sys.stdout
        if isinstance(tee, _Tee) and tee.path == path and not tee.file.closed:
            tee.file.write(text)
            tee.file.flush()
        else:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
    except OSError:
        pass


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
    _last_log["path"] = path
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
