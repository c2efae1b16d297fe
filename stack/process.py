"""Child processes of the stack: started, stopped, and dying with their parent."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[[int, int], int] | None:
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux
    return prctl


# Looked up now, in the parent: the child of a fork must not dlopen (another thread may
# have held the loader's lock at fork time).
_prctl = _load_prctl()


def die_with_parent() -> None:
    """``preexec_fn`` for children of the stack: the kernel sends them SIGTERM if we die.

    Without it a SIGKILLed ``make run`` or test run leaves servers holding their ports.
    Linux only (a no-op elsewhere). The signal follows the *thread* that called
    ``Popen``, so start children from the main thread or a long-lived one.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def stop_process(proc: subprocess.Popen[bytes] | None, name: str, grace_s: float) -> None:
    """Stop ``proc``: SIGTERM, then SIGKILL if it is still running after ``grace_s`` (s).

    Does nothing if it is None or already exited; returns once it has exited.
    """
    if proc is None or proc.poll() is not None:
        return
    logger.info("stopping %s (pid %d)", name, proc.pid)
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s ignored SIGTERM for %.0f s; killing it", name, grace_s)
        proc.kill()
        proc.wait()


def log_tail(path: Path, lines: int, missing: str = "") -> str:
    """The last ``lines`` lines of the log file at ``path`` (of its last 16 KiB), or
    ``missing`` if it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, 2) - 16384, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return missing
    return "\n".join(text.splitlines()[-lines:])


class Service(ABC):
    """A process (or group of processes) that :meth:`start` starts and :meth:`stop` stops.

    As a context manager it is started on entry and stopped on exit, whatever the exit.
    """

    @abstractmethod
    def start(self) -> None:
        """Start it; return once it serves."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it; return once it has exited. Does nothing if it is not running."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
