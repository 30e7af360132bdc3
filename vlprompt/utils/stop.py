"""SIGTERM as a request to stop: what Slurm and most schedulers send before they kill a job.

The first SIGTERM only sets a flag; the training loop finishes the step it is in, writes a resume point and
stops (TrainingInterrupted). A second SIGTERM gets the default action (the process ends at once).
Signal handlers can only be installed from the main thread; elsewhere (and on platforms without SIGTERM)
install() does nothing and a SIGTERM ends the process as before.
"""
import signal
import threading

__all__ = ["TrainingInterrupted", "install", "uninstall", "requested", "request", "clear"]

_state = {"requested": None, "previous": None, "installed": False}


class TrainingInterrupted(Exception):
    """Training stopped on request after writing a resume point; the message says how to resume."""


def _handler(signum, frame):
    _state["requested"] = signal.Signals(signum).name
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process
    print(f"{_state['requested']} received: finishing the current step, then writing a resume point", flush=True)


def install() -> bool:
    clear()
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return False
    _state["previous"] = signal.signal(signal.SIGTERM, _handler)
    _state["installed"] = True
    return True


def uninstall() -> None:
    if _state["installed"]:
        signal.signal(signal.SIGTERM, _state["previous"] if _state["previous"] is not None else signal.SIG_DFL)
        _state["installed"] = False
    clear()


def requested():
    """The name of the signal that asked to stop ('SIGTERM'), or None."""
    return _state["requested"]


def request(name="SIGTERM") -> None:
    _state["requested"] = name


def clear() -> None:
    _state["requested"] = None
