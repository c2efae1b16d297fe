"""Live events relayed at once by the hub's listener (no wake-up of the socket's send
loop): only while the send loop waits, only where the relay would do the same thing,
and through a protocol send that never waits; everything else takes the usual path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiohttp
import uvicorn
from fastapi import WebSocket
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect, WebSocketState

from protocol.event_ids import with_event_id
from runtime.config import CommonSettings
from server.relay import EventRelay
from server.websocket import SEND_NOW, ParleyWebSocketProtocol, websocket_protocol
from storage.hub import RESYNC, UNAVAILABLE, Subscription
from storage.store import Store
from testkit.ports import free_port


def event(event_id: str, content: str = "x") -> str:
    return with_event_id(f'{{"type":"token","message_id":"m","content":"{content}"}}', event_id)


def taking(into: list[str], refuse: str | None = None) -> Callable[[str], bool]:
    """A sink (or a ``send_now``) that appends what it takes to ``into``."""

    def take(payload: str) -> bool:
        if payload == refuse:
            return False
        into.append(payload)
        return True

    return take


# -- the subscription's sink -------------------------------------------------------------


async def test_the_sink_is_offered_messages_only_while_the_reader_waits() -> None:
    sub = Subscription("c", queue_size=8)
    taken: list[str] = []
    sub.sink = taking(taken, refuse="refused")
    sub.deliver("before")  # nobody waits: queued
    assert taken == [] and sub.queue.qsize() == 1
    assert await sub.queue.get() == "before"

    reader = asyncio.create_task(sub.queue.get())
    await asyncio.sleep(0)
    sub.deliver("a")  # the reader waits on the empty queue: the sink takes it
    assert taken == ["a"] and not reader.done()
    sub.deliver("refused")  # not taken: queued, and the reader woken
    sub.deliver("b")  # one is queued now: queued behind it, not taken
    assert await reader == "refused"
    assert taken == ["a"] and await sub.queue.get() == "b"


# -- the relay's part ---------------------------------------------------------------------


class Socket:
    """The sending side of a WebSocket: what the awaited path sends, and its state."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.application_state = WebSocketState.CONNECTED

    async def send_text(self, text: str) -> None:
        self.sent.append(text)


def relay_with(send_now: Callable[[str], bool], redis: Redis[str]) -> tuple[EventRelay, Socket]:
    socket = Socket()
    relay = EventRelay(
        cast(WebSocket, socket), "no-such-token", Store(redis, CommonSettings()), send_now
    )
    return relay, socket


async def test_relayed_now_in_order_once_and_never_past_the_lock(redis: Redis[str]) -> None:
    now: list[str] = []
    relay, socket = relay_with(taking(now), redis)
    assert relay.deliver_now(event("5-0"))
    assert relay.deliver_now(event("5-0"))  # a duplicate: dropped, as deliver drops it
    assert relay.deliver_now(event("4-0"))  # older than the cursor: dropped
    assert now == [event("5-0")]
    await relay.deliver(event("5-1"))  # the awaited path knows the cursor moved
    await relay.deliver(event("5-0"))
    assert relay.deliver_now(event("5-1"))
    assert now == [event("5-0"), event("5-1")]

    async with relay._lock:  # a replay or another send is under way: not now
        assert not relay.deliver_now(event("6-0"))
        waiting = asyncio.create_task(relay.send("queued"))
        await asyncio.sleep(0)
    # Released, and the send that waited for it not yet run: its turn comes first.
    assert not relay.deliver_now(event("6-0"))
    await waiting
    assert relay.deliver_now(event("6-0"))
    assert now == [event("5-0"), event("5-1"), "queued", event("6-0")]
    assert socket.sent == []  # everything went out at once


async def test_sends_that_cannot_go_out_at_once_are_awaited(redis: Redis[str]) -> None:
    relay, socket = relay_with(lambda text: False, redis)  # the buffer is full, say
    await relay.send("error")
    await relay.deliver(event("1-0"))
    assert socket.sent == ["error", event("1-0")]
    assert not relay.deliver_now(event("2-0"))


async def test_what_the_relay_would_not_simply_send_is_left_to_deliver(
    redis: Redis[str],
) -> None:
    now: list[str] = []
    relay, socket = relay_with(taking(now), redis)
    for payload in (
        RESYNC,
        UNAVAILABLE,
        "\x00wake",
        event("7-0") + "\n" + event("7-1"),  # events announced together
        event("not-an-id"),  # deliver raises, as it always has
    ):
        assert not relay.deliver_now(payload), payload
    socket.application_state = WebSocketState.DISCONNECTED
    assert not relay.deliver_now(event("8-0"))
    assert now == []

    full, _ = relay_with(lambda text: False, redis)  # the protocol cannot send at once
    assert not full.deliver_now(event("9-0"))
    assert full._cursor == (0, 0)  # nothing done: deliver sends it
    no_protocol = EventRelay(cast(WebSocket, Socket()), "t", Store(redis, CommonSettings()))
    assert not no_protocol.deliver_now(event("1-0"))


async def test_an_event_without_an_id_goes_out_now_even_when_held_back(
    redis: Redis[str],
) -> None:
    now: list[str] = []
    relay, _ = relay_with(taking(now), redis)
    relay._held_back = True
    plain = '{"type":"error","message_id":null,"code":"unavailable","detail":"d"}'
    assert relay.deliver_now(event("3-0"))  # held back: a later resume replays it
    assert relay.deliver_now(plain)
    assert now == [plain]


# -- the protocol's send without an await ---------------------------------------------------


@contextlib.asynccontextmanager
async def serving(handler: Callable[[WebSocket], Any]) -> AsyncIterator[str]:
    """uvicorn with Parley's protocol, serving ``handler`` at ``/ws``; yields its URL."""
    port = free_port()
    app = Starlette(routes=[WebSocketRoute("/ws", handler)])
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, ws=websocket_protocol(5.0), log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110  (uvicorn offers no event)
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        await task


async def test_frames_sent_now_and_awaited_keep_their_order_and_stop_at_close() -> None:
    outcome: dict[str, Any] = {}

    async def handler(websocket: WebSocket) -> None:
        await websocket.accept()
        send_now = websocket.scope["extensions"][SEND_NOW]
        protocol = cast(ParleyWebSocketProtocol, send_now.__self__)
        outcome["first"] = send_now("one")
        await websocket.send_text("two")
        protocol.pause_writing()  # the buffer is full: not now, the awaited send waits
        outcome["paused"] = send_now("never")
        protocol.resume_writing()
        outcome["resumed"] = send_now("three")
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()
        outcome["closed"] = send_now("too late")

    async with serving(handler) as url, aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            received = [await ws.receive_str() for _ in range(3)]
        async with asyncio.timeout(10):
            while "closed" not in outcome:  # noqa: ASYNC110  (the handler's last step)
                await asyncio.sleep(0.01)
    assert received == ["one", "two", "three"]
    assert outcome == {"first": True, "paused": False, "resumed": True, "closed": False}
