"""Sessions in one chosen partition, for the system tests of the queue's bounds.

A session's partition is the first hex digit of its token (:func:`storage.keys.partition`),
a UUID4 the server draws: :class:`PartitionDriver` asks for tokens until it has one in
the partition it wants.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from storage import keys
from testkit.driver import ChatDriver, SessionTrace


class PartitionDriver(ChatDriver):
    """A :class:`ChatDriver` whose sessions all fall in partition ``part``."""

    def __init__(self, server_urls: Sequence[str], part: str) -> None:
        super().__init__(server_urls)
        self.part = part

    async def new_token(
        self, url: str, index: int, model: str | None, owner: str | None = None
    ) -> str:
        """A new session's token in partition ``part`` (others are left to expire)."""
        while True:
            token = await super().new_token(url, index, model, owner)
            if keys.partition(token) == self.part:
                return token


async def wait_events(
    sessions: Sequence[SessionTrace], kind: str, per_session: int, timeout_s: float
) -> None:
    """Wait until every session has received ``per_session`` events of type ``kind``
    (``queued``, or a refusal: an ``error`` without a message id counts as ``refused``).

    Raises:
        TimeoutError: not within ``timeout_s`` (s).
    """

    def seen(t: SessionTrace) -> int:
        if kind == "refused":
            return sum(1 for e in t.events("error") if e.get("message_id") is None)
        return len(t.events(kind))

    async with asyncio.timeout(timeout_s):
        for t in sessions:
            await t.wait_until(lambda t=t: seen(t) >= per_session)  # type: ignore[misc]


async def poll(redis: Any, predicate: Any, timeout_s: float) -> bool:
    """Re-check the Redis-side ``predicate(redis)`` (a coroutine function) every 50 ms
    until it holds; False if it did not within ``timeout_s`` (Redis state: no event to
    wait on)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate(redis):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def closing_counts(sessions: Sequence[SessionTrace]) -> tuple[int, int, int]:
    """``(queued, done, error)`` over ``sessions``: messages queued, replies done, and
    messages closed by an ``error`` event (one with a message id)."""
    queued = sum(len(t.events("queued")) for t in sessions)
    done = sum(len(t.events("done")) for t in sessions)
    error = sum(1 for t in sessions for e in t.events("error") if e.get("message_id"))
    return queued, done, error


async def wait_closed(sessions: Sequence[SessionTrace], timeout_s: float) -> bool:
    """Wait until every message each session got ``queued`` for has a closing event
    (``done``, or ``error`` with its message id); False on timeout."""

    def closed(t: SessionTrace) -> bool:
        return t.closing_count() >= len(t.events("queued"))

    try:
        async with asyncio.timeout(timeout_s):
            for t in sessions:
                await t.wait_until(lambda t=t: closed(t))  # type: ignore[misc]
    except TimeoutError:
        return False
    return True


def refusals(sessions: Sequence[SessionTrace]) -> list[str]:
    """The codes of the ``error`` events without a message id (messages refused)."""
    return [str(e["code"]) for t in sessions for e in t.events("error") if not e.get("message_id")]


def unanswered(sessions: Sequence[SessionTrace]) -> list[str]:
    """Queued messages without a ``done`` (an ``error`` does not answer), described."""
    missing = []
    for t in sessions:
        done = {e["message_id"] for e in t.events("done")}
        missing += [f"s{t.index} {mid}" for mid in t.message_ids() if mid not in done]
    return missing
