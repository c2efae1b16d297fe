"""A small test client of WS /chat that reads events until a condition holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

Event = dict[str, Any]


async def read_until(
    ws: aiohttp.ClientWebSocketResponse,
    done: Callable[[list[Event]], bool],
    timeout_s: float = 15.0,
) -> list[Event]:
    """Read JSON events from ``ws`` until ``done(events)`` holds.

    Raises:
        TimeoutError: it did not hold within ``timeout_s`` (s).
        AssertionError: the socket closed first.
    """
    events: list[Event] = []
    async with asyncio.timeout(timeout_s):
        while not done(events):
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, f"socket closed: {message}"
            events.append(json.loads(message.data))
    return events


def count(kind: str, n: int) -> Callable[[list[Event]], bool]:
    """A condition: ``n`` events of type ``kind`` have arrived."""
    return lambda events: sum(e["type"] == kind for e in events) >= n


def of_type(events: list[Event], kind: str) -> list[Event]:
    """The events of type ``kind``, in order."""
    return [e for e in events if e["type"] == kind]
