"""Script calls sent twice, as redis-py's retry sends a command again when its
connection broke after Redis may have run it: ``enqueue.lua`` queues the message once,
and ``begin.lua`` begins the attempt once (``revise.lua``: ``test_versions.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from protocol.wire import MessageEntry
from runtime.config import CommonSettings
from storage import keys
from storage.connection import client_for_url, is_cluster
from storage.store import RESTARTED, STARTED, Store, TooManyPending


async def _store(redis: Redis[str]) -> Store:
    store = Store(redis, CommonSettings(session_ttl_seconds=60))
    await store.streams.ensure_group()
    return store


async def _history(redis: Redis[str], token: str) -> list[dict[str, object]]:
    text = await redis.execute_command("JSON.GET", keys.session_key(token), "$.messages")
    return list(json.loads(text)[0])


async def _entries(redis: Redis[str], token: str) -> list[str]:
    """The ids of the message stream's entries of ``token``'s messages."""
    stream = keys.message_stream(keys.partition(token))
    return [i for i, fields in await redis.xrange(stream) if fields.get("token") == token]


async def test_the_same_call_again_returns_the_message_queued_and_changes_nothing(
    redis: Redis[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(redis)
    token = (await store.sessions.create_session("ada")).token
    fixed = uuid.uuid4()
    monkeypatch.setattr("storage.queue.uuid.uuid4", lambda: fixed)
    first = await store.queue.enqueue(token, "hello", max_pending=1)
    # Sent again: max_pending (1) would now refuse a new message, but this is not one.
    again = await store.queue.enqueue(token, "hello", max_pending=1)
    assert (
        (again.id, again.seq, again.entry)
        == (first.id, first.seq, first.entry)
        == (str(fixed), 1, again.entry)
    )
    history = await _history(redis, token)
    assert [(m["id"], m["seq"]) for m in history] == [(str(fixed), 1)]
    assert await _entries(redis, token) == [first.entry]

    monkeypatch.undo()  # a new message has a new id: the bounds apply to it
    with pytest.raises(TooManyPending):
        await store.queue.enqueue(token, "hello", max_pending=1)


@contextlib.asynccontextmanager
async def _dropping_proxy(host: str, port: int, marker: bytes) -> AsyncIterator[int]:
    """A TCP proxy to ``host:port`` that, the first time a client sends ``marker``,
    passes the command on, waits for Redis's answer and then closes the client's
    connection without it: Redis ran the command, the client never hears so."""
    dropped = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def forward(
        client_r: asyncio.StreamReader,
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: asyncio.Task[None],
    ) -> None:
        server_r, server_w = server
        with contextlib.suppress(ConnectionError):
            while data := await client_r.read(65536):
                if marker in data and not dropped.is_set():
                    dropped.set()
                    upstream.cancel()  # nothing more reaches the client
                    await asyncio.gather(upstream, return_exceptions=True)
                    server_w.write(data)
                    await server_w.drain()
                    await server_r.read(65536)  # Redis ran it: its answer, dropped
                    return
                server_w.write(data)
                await server_w.drain()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        server_r, server_w = await asyncio.open_connection(host, port)
        writers.extend((client_w, server_w))
        upstream = asyncio.create_task(pipe(server_r, client_w))
        try:
            await forward(client_r, (server_r, server_w), upstream)
        finally:
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()
        await proxy.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert dropped.is_set(), "the proxy never saw the command"


async def test_a_message_whose_answer_was_lost_is_queued_once(
    redis: Redis[str], redis_url: str
) -> None:
    if is_cluster(redis):
        pytest.skip("the proxy stands in front of one node; a cluster redirects past it")
    direct = await _store(redis)  # the group, the session, and the script loaded
    token = (await direct.sessions.create_session("ada")).token
    other = (await direct.sessions.create_session("bob")).token
    await direct.queue.enqueue(other, "loads enqueue.lua", max_pending=5)
    address = urlsplit(redis_url)
    async with _dropping_proxy(address.hostname or "", address.port or 0, b"EVALSHA") as port:
        client = client_for_url(f"redis://127.0.0.1:{port}", max_connections=2)
        try:
            store = Store(client, CommonSettings(session_ttl_seconds=60))
            queued = await store.queue.enqueue(token, "hello", max_pending=5)
        finally:
            await client.aclose()
    history = await _history(redis, token)
    assert [(m["content"], m["seq"]) for m in history] == [("hello", 1)]
    assert queued.seq == 1
    assert await _entries(redis, token) == [queued.entry]


async def test_the_same_begin_again_counts_no_crash_and_emits_no_restart(
    redis: Redis[str],
) -> None:
    store = await _store(redis)
    token = (await store.sessions.create_session("ada")).token
    queued = await store.queue.enqueue(token, "hello", max_pending=5)
    entry = MessageEntry(token=token, seq=1, message_id=queued.id)
    first = await store.replies.begin(entry, "1:a", entry_id=queued.entry or "")
    again = await store.replies.begin(entry, "1:a", entry_id=queued.entry or "")
    assert (first.status, again.status) == (STARTED, STARTED)
    assert (first.crashes, again.crashes) == (0, 0)
    kinds = [json.loads(f["event"])["type"] for _, f in await redis.xrange(keys.events_key(token))]
    assert "restart" not in kinds
    # Another attempt is a restart, as before: the first one counts as crashed.
    other = await store.replies.begin(entry, "1:b", entry_id=queued.entry or "")
    assert (other.status, other.crashes) == (RESTARTED, 1)
    kinds = [json.loads(f["event"])["type"] for _, f in await redis.xrange(keys.events_key(token))]
    assert kinds.count("restart") == 1
