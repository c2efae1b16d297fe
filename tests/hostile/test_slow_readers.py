"""Clients that never read, against a real ``python -m server``: the server closes their
sockets with 1013 after ``WS_SEND_TIMEOUT_S`` instead of holding their events, and a
client that reads is served meanwhile.

Events are pushed the way a worker pushes them: the store's ``begin`` and ``emit``
scripts (the event stream, then sharded Pub/Sub to the server holding the socket).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from protocol.wire import MessageEntry, TokenEvent
from runtime.config import CommonSettings
from server.websocket import SLOW_READER_CLOSE
from storage.leases import leases_key
from storage.store import Store
from testkit.overrides import declare
from tests.hostile.servers import new_session, rss_mb, servers

pytestmark = pytest.mark.system

SLOW = 30
EVENT_CHARS = 32_768
SEND_TIMEOUT_S = 2.0
QUEUE_SIZE = 16
#: What one stuck socket may hold (bytes): its subscriber queue full of events, the
#: transport's write buffer (64 KiB high-water mark, plus the message that crossed it),
#: and a replay's batch; twice that, for the allocator's slack.
PER_SOCKET_BOUND = 2 * (2 * QUEUE_SIZE * (EVENT_CHARS + 200) + 2**16 + EVENT_CHARS)

OVERRIDES = declare(
    WS_SEND_TIMEOUT_S=(SEND_TIMEOUT_S, "a socket that reads nothing is closed within the test"),
    SOCKET_QUEUE_SIZE=(QUEUE_SIZE, "a small queue: what one stuck socket holds is measurable"),
    RATE_SESSIONS_PER_CLIENT=(SLOW + 1, "31 sessions, every one from 127.0.0.1"),
    MAX_SOCKETS_PER_CLIENT=(SLOW + 1, "31 sockets open at once, every one from 127.0.0.1"),
)


class StuckClient:
    """A WebSocket client that completes its handshake, then reads nothing.

    A small receive buffer (``SO_RCVBUF``) and a small stream limit, so the server's
    writes back up after a few kilobytes instead of filling the kernel's buffers.
    websockets' sans-I/O client does the handshake and, at the end, parses what was
    buffered to find the close frame.
    """

    def __init__(self, url: str) -> None:
        self.uri = parse_uri(url)
        self.protocol = ClientProtocol(self.uri)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.uri.host, self.uri.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1024)
        self.protocol.send_request(self.protocol.connect())
        self.writer.write(b"".join(self.protocol.data_to_send()))
        while True:
            self.protocol.receive_data(await self.reader.read(1024))
            responses = [e for e in self.protocol.events_received() if isinstance(e, Response)]
            if responses:
                assert responses[0].status_code == 101, responses[0]
                return

    async def close_code(self) -> int | None:
        """Read everything the server sent, to the end: the code of its close frame."""
        assert self.reader is not None and self.writer is not None
        while data := await self.reader.read(2**16):
            self.protocol.receive_data(data)
            self.protocol.events_received()
        self.writer.close()
        close = self.protocol.close_rcvd
        return None if close is None else close.code


class Pusher:
    """Pushes ``token`` events of ``EVENT_CHARS`` characters into a session, as its worker."""

    def __init__(self, store: Store, token: str) -> None:
        self.store = store
        self.token = token
        self.attempt = ""
        self.message_id = ""

    async def begin(self) -> None:
        message = await self.store.queue.enqueue(self.token, "talk to me", max_pending=5)
        self.message_id = message.id
        self.attempt = f"1:{uuid.uuid4().hex}"
        entry = MessageEntry(token=self.token, seq=1, message_id=message.id)
        await self.store.replies.begin(entry, self.attempt)

    async def push(self) -> None:
        event = TokenEvent(message_id=self.message_id, content="x" * EVENT_CHARS)
        await self.store.replies.emit(self.token, event, self.attempt)


async def test_clients_that_never_read_are_closed_and_hold_bounded_memory(
    redis_url: str, redis: Redis[str], tmp_path: Path
) -> None:
    store = Store(redis, CommonSettings(events_maxlen=QUEUE_SIZE))
    async with (
        servers(redis_url, tmp_path / "logs", overrides=OVERRIDES) as cluster,
        aiohttp.ClientSession() as http,
    ):
        (server,) = cluster.servers
        url = f"{server.url.replace('http', 'ws')}/chat"
        tokens = [await new_session(http, server, f"slow-{n}") for n in range(SLOW)]
        reader_token = await new_session(http, server, "reader")
        slow = [StuckClient(f"{url}?token={t}") for t in tokens]
        for client in slow:
            await client.open()
        reader = await http.ws_connect(url, params={"token": reader_token})
        pushers = [Pusher(store, t) for t in [*tokens, reader_token]]
        for pusher in pushers:
            await pusher.begin()
        rss_before = rss_mb(server)
        peak = rss_before

        received: list[int] = [0]
        arrived = asyncio.Event()

        async def read_all() -> None:
            while (await reader.receive()).type == aiohttp.WSMsgType.TEXT:
                received[0] += 1
                arrived.set()

        reading = asyncio.create_task(read_all())
        started = time.monotonic()
        rounds = 0
        closing: dict[int, asyncio.Task[int | None]] = {}
        async with asyncio.timeout(25):
            # One event per session a round, until the server let go of every slow socket
            # (its lease is gone); each slow client then reads what it was sent.
            while len(closing) < SLOW:
                await asyncio.gather(*(p.push() for p in pushers))
                rounds += 1
                peak = max(peak, rss_mb(server))
                for i, token in enumerate(tokens):
                    if i not in closing and not await redis.zcard(leases_key(token)):
                        closing[i] = asyncio.create_task(slow[i].close_code())
        closed_after_s = time.monotonic() - started
        rss_after = rss_mb(server)
        # The reader was served all along, and still is.
        await pushers[-1].push()
        async with asyncio.timeout(10):
            while received[0] < rounds + 1:
                arrived.clear()
                await arrived.wait()
        await reader.close()
        await reading
        async with asyncio.timeout(10):
            codes = [await closing[i] for i in range(SLOW)]
        assert server.alive

    per_socket_kb = (peak - rss_before) * 1024 / SLOW
    print(
        f"\nslow readers: {SLOW} sockets that never read, {rounds} events of {EVENT_CHARS} "
        f"characters pushed to each; all closed {closed_after_s:.1f} s after the first push "
        f"(send timeout {SEND_TIMEOUT_S:g} s), close codes {sorted(set(codes))}; server RSS "
        f"{rss_before:.1f} MB before, peak {peak:.1f} MB, {rss_after:.1f} MB after: "
        f"{per_socket_kb:.0f} KB per stuck socket at the peak "
        f"(bound {PER_SOCKET_BOUND / 1024:.0f} KB); the reading socket got {received[0]} events"
    )
    assert codes == [SLOW_READER_CLOSE] * SLOW
    assert (peak - rss_before) * 2**20 <= SLOW * PER_SOCKET_BOUND + 10 * 2**20
