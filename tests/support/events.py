"""A small test client of WS /chat that reads events until a condition holds, and a
way to move a session's event stream past a cursor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis

from protocol.event_ids import stream_id_key
from storage import keys

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


def event_ids(events: list[Event]) -> list[str]:
    """The ``event_id`` of the events that have one, in order."""
    return [e["event_id"] for e in events if "event_id" in e]


async def kept(redis: Redis[str], token: str) -> list[str]:
    """The ids of the events the session's stream keeps, oldest first."""
    return [event_id for event_id, _ in await redis.xrange(keys.events_key(token))]


async def trim_past(
    http: aiohttp.ClientSession, ws_url: str, redis: Redis[str], token: str, cursor: str
) -> list[str]:
    """Talk on a socket of session ``token`` until the event after ``cursor`` is trimmed
    from its stream (set ``EVENTS_MAXLEN`` small), as another tab would while a client
    is away. The ids of the events written meanwhile, returned.

    Raises:
        AssertionError: 300 replies did not get the stream trimmed that far.
    """
    written: list[str] = []
    async with http.ws_connect(ws_url, params={"token": token}) as ws:
        for n in range(300):
            await ws.send_str(f"meanwhile {n}")
            written += event_ids(await read_until(ws, count("done", 1)))
            oldest = (await kept(redis, token))[0]
            after = [i for i in written if stream_id_key(i) > stream_id_key(cursor)]
            if stream_id_key(oldest) > stream_id_key(after[0]):
                return written
    raise AssertionError("the event stream was never trimmed past the cursor")
