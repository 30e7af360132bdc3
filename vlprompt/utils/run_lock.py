"""One run per output folder: an exclusive lock on <output>/.vlprompt-run.lock for the whole run.

The lock is ``fcntl.flock`` on an open file: the operating system releases it when the process ends in any way
(kill -9 included), so a killed run never leaves a stale lock. The file itself stays; it holds the pid, host
and start time of the run that holds (or last held) it, for the message a second run gets. flock works on
local file systems and on most network file systems (NFSv4, Lustre with flock enabled); where fcntl does not
exist (Windows) runs are not locked and the run says so in its log.
The protocol scripts' own ``.lock`` (which makes a second script wait) is a different file.
"""
import datetime
import os
import socket

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".vlprompt-run.lock"

__all__ = ["LOCK_NAME", "OutputFolderLockedError", "RunLock", "close_inherited_locks"]

_held = []  # the lock files this process holds open


def close_inherited_locks() -> None:
    """For a forked child (a data-loader worker): close its copies of the parent's lock files, so that the lock
    ends with the process that took it, not with the last of its children."""
    while _held:
        try:
            _held.pop().close()
        except OSError:
            pass


class OutputFolderLockedError(RuntimeError):
    """Another process runs in the output folder."""


class RunLock:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.file = None

    def acquire(self) -> bool:
        """Take the lock or raise OutputFolderLockedError naming the folder and the other process. False when
        locking is not available on this platform."""
        if fcntl is None:
            print(f"Note: no file locking on this platform; nothing stops a second run in {self.folder}")
            return False
        os.makedirs(self.folder, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(500).strip() or "an unknown process"
            f.close()
            raise OutputFolderLockedError(
                f"Another run is using the output folder {self.folder} ({holder}); this one stops without "
                f"touching it. Wait for that run to end, or choose another --output-dir.") from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        f.flush()
        self.file = f
        _held.append(f)
        return True

    def release(self) -> None:
        if self.file is not None:
            if self.file in _held:
                _held.remove(self.file)
            self.file.close()  # closing the descriptor releases the flock
            self.file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
