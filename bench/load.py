"""The load generator: N WebSocket sessions, each sending messages and timing its events.

Lean on purpose: a socket's reader stores each event with its arrival time
(``time.perf_counter()``, ``CLOCK_MONOTONIC`` on Linux, so comparable with the stand-in
model's own times), taken before the frame is parsed, and looks at nothing but whether
the event closes a reply (:func:`testkit.driver.closes`); the checks and timings come
after the run (:mod:`bench.analysis`). What the client spends per frame is then
aiohttp's own work and one ``json.loads``, and the client's clock stays honest under
load.

Message contents are ``s<session>-m<k>-<8 hex digits>``, unique in a run, so a reply
(``"Reply to: <message> lorem ipsum ..."``) names the message it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp

from testkit.driver import Received, Sent, closes

logger = logging.getLogger(__name__)


@dataclass
class ChatSocket:
    """One session's socket: what it sent, and every event it received with its time."""

    index: int
    token: str
    ws: aiohttp.ClientWebSocketResponse
    sent: list[Sent] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    closings: int = 0
    closed: bool = False
    _waiter: asyncio.Future[None] | None = None

    async def say(self, content: str) -> None:
        """Send ``content`` as a ``message`` command."""
        await self.ws.send_str(json.dumps({"type": "message", "content": content}))
        self.sent.append(Sent(content, time.perf_counter()))

    async def wait_closings(self, count: int) -> None:
        """Return once ``count`` replies closed (``done`` or ``error`` of a message) or
        the socket closed. Bound it yourself."""
        while self.closings < count and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class LoadClient:
    """Opens sessions on one server (``POST /token``, then ``WS /chat?token=``).

    Args:
        base_urls: servers' base URLs; socket ``i`` goes to ``base_urls[i % len]``.
    """

    def __init__(self, base_urls: Sequence[str]) -> None:
        self.base_urls = list(base_urls)
        self.sockets: list[ChatSocket] = []
        self._indexes = itertools.count()
        self._http: aiohttp.ClientSession | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        # No connection limit: each open socket holds one of the connector's connections.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self, count: int, concurrency: int = 50) -> list[ChatSocket]:
        """Open ``count`` more sessions, ``concurrency`` handshakes at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> ChatSocket:
            async with gate:
                return await self._open_one(index)

        indexes = [next(self._indexes) for _ in range(count)]
        opened = await asyncio.gather(*(one(i) for i in indexes))
        self.sockets.extend(opened)
        return list(opened)

    async def _open_one(self, index: int) -> ChatSocket:
        assert self._http is not None, "use LoadClient in `async with`"
        url = self.base_urls[index % len(self.base_urls)]
        async with self._http.post(f"{url}/token", params={"name": f"s{index}"}) as response:
            if response.status != 200:
                raise RuntimeError(f"POST /token: {response.status} {await response.text()}")
            token: str = (await response.json())["token"]
        # Offers permessage-deflate, as browsers do; the server decides.
        ws = await self._http.ws_connect(
            f"{url}/chat", params={"token": token}, heartbeat=None, compress=15
        )
        sock = ChatSocket(index, token, ws)
        self._readers.append(asyncio.create_task(_read(sock)))
        return sock

    async def close(self, sockets: Sequence[ChatSocket] | None = None) -> None:
        """Close ``sockets`` and forget them (default: all, and the HTTP session)."""
        targets = self.sockets if sockets is None else sockets
        await asyncio.gather(*(s.ws.close() for s in targets), return_exceptions=True)
        if sockets is not None:
            closed = {id(s) for s in sockets}
            self.sockets = [s for s in self.sockets if id(s) not in closed]
        else:
            for task in self._readers:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            self._readers.clear()
            if self._http is not None:
                await self._http.close()
                self._http = None


async def _read(sock: ChatSocket) -> None:
    ws, received, clock, parse = sock.ws, sock.received, time.perf_counter, json.loads
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            at = clock()
            event = parse(message.data)
            received.append(Received(at, event))
            if closes(event):
                sock.closings += 1
                sock._wake()
    sock.closed = True
    sock._wake()


def think_times(mean_ms: float, seed: int) -> Callable[[], float]:
    """Pauses (s) drawn uniformly from ``[0.5, 1.5] x mean_ms``, so sessions drift apart
    instead of sending in lockstep; always 0 when ``mean_ms`` is 0."""
    rng = random.Random(seed)
    if mean_ms <= 0:
        return lambda: 0.0
    return lambda: rng.uniform(0.5, 1.5) * mean_ms / 1000


async def converse(
    sock: ChatSocket,
    messages: int,
    think: Callable[[], float],
    timeout_s: float,
    *,
    stagger_s: float = 0.0,
) -> None:
    """Send ``messages`` messages, each once the previous reply has closed and a think
    time has passed (the first after ``stagger_s``). A reply not closed within
    ``timeout_s`` ends the conversation: it is lost, and the analysis counts it."""
    if stagger_s:
        await asyncio.sleep(stagger_s)
    for k in range(1, messages + 1):
        if k > 1:
            pause = think()
            if pause:
                await asyncio.sleep(pause)
        await sock.say(f"s{sock.index}-m{len(sock.sent) + 1}-{uuid.uuid4().hex[:8]}")
        try:
            async with asyncio.timeout(timeout_s):
                await sock.wait_closings(len(sock.sent))
        except TimeoutError:
            logger.warning("s%d m%d: no reply in %.0f s; session stops", sock.index, k, timeout_s)
            return
        if sock.closed:
            logger.warning("s%d: socket closed after m%d", sock.index, k)
            return
