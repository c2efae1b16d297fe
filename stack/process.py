"""Helpers for the child processes the stack starts."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
from collections.abc import Callable

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
