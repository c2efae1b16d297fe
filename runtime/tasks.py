"""Cancelling tasks that may absorb a cancellation."""

from __future__ import annotations

import asyncio
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
