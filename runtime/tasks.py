"""Cancelling tasks that may absorb a cancellation; waiting for a stop signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, every_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one is done, cancelling again each ``every_s``.

    A cancellation that lands inside a redis-py call can be absorbed by the client's
    reconnect logic; the task then goes on as if nothing happened, and a plain
    ``cancel(); await`` would wait on it for good. Exceptions of the tasks are dropped.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def until_stopped() -> None:
    """Return once the process gets SIGINT or SIGTERM (the signals then do nothing
    more here): how a stand-in process serves until it is told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
