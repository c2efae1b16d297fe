"""WebSocket clients of a running Parley, for the system tests and the benchmark.

:class:`ChatDriver` opens sessions (``POST /token`` then ``WS /chat``, spread over the
servers), sends messages, and records every event each socket receives, with its
arrival time (``time.perf_counter()``, s).

Message contents sent by :meth:`ChatDriver.send` are ``s<session>-m<k>-<8 hex digits>``,
unique in a run, so any text found in a reply or a prompt names the session and the
message it came from.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import aiohttp

from runtime.retry import retrying

logger = logging.getLogger(__name__)


def closes(event: Mapping[str, Any]) -> bool:
    """Whether a received ``event`` closes a reply: a ``done``, or an ``error`` about a
    message (an error of no message, ``message_id`` null, closes nothing)."""
    kind = event.get("type")
    return kind == "done" or (kind == "error" and event.get("message_id") is not None)


@dataclass
class Sent:
    """A message a client sent."""

    content: str
    at: float  # time.perf_counter() once the frame was written


@dataclass
class Revision:
    """A ``regenerate`` or ``edit`` command a client sent about its last message."""

    kind: Literal["regenerate", "edit"]
    message_id: str
    content: str  # the message's content from then on (an edit's new text)
    at: float  # time.perf_counter() once the frame was written


@dataclass
class Received:
    """An event a client received."""

    at: float  # time.perf_counter()
    event: dict[str, Any]


@dataclass
class SessionTrace:
    """One session's socket: what it sent and every event it received, in order."""

    index: int
    token: str
    server: int
    ws: aiohttp.ClientWebSocketResponse
    sent: list[Sent] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    closed: bool = False
    #: Close codes of the sockets this session lost (with ``reconnect``), in order.
    close_codes: list[int | None] = field(default_factory=list)
    history: dict[str, Any] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self, *types: str) -> list[dict[str, Any]]:
        """The events received, of the given types (all if none given), in order."""
        return [r.event for r in self.received if not types or r.event.get("type") in types]

    def closing_count(self) -> int:
        """How many replies closed (see :func:`closes`)."""
        return sum(1 for r in self.received if closes(r.event))

    def owed(self) -> int:
        """How many replies this socket asked for: one per message, one per revision."""
        return len(self.sent) + len(self.revisions)

    def last_event_id(self) -> str:
        """The ``event_id`` of the last event received that has one, else ``"0-0"``."""
        for r in reversed(self.received):
            if "event_id" in r.event:
                return str(r.event["event_id"])
        return "0-0"

    def message_ids(self) -> list[str]:
        """The ids of this socket's messages, from its ``queued`` events, in order."""
        return [e["message_id"] for e in self.events("queued")]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked on each event (bound it yourself)."""
        while not predicate():
            changed = self._changed
            await changed.wait()

    def notify(self) -> None:
        """Wake whoever waits for a change of this trace."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def say(self, content: str) -> None:
        """Send one message with ``content`` on this socket; record it in ``sent``."""
        await self.ws.send_str(json.dumps({"type": "message", "content": content}))
        self.sent.append(Sent(content, time.perf_counter()))

    def contents(self, k: int) -> list[str]:
        """Every content message ``k`` (from 1) had: as sent, then each edit's."""
        mid = self.message_ids()[k - 1] if len(self.message_ids()) >= k else None
        edits = [r.content for r in self.revisions if r.kind == "edit" and r.message_id == mid]
        return [self.sent[k - 1].content, *edits]

    async def regenerate(self) -> None:
        """Ask again for the reply to the last message (``{"type": "regenerate"}``)."""
        mid = self.message_ids()[-1]
        await self.ws.send_str(json.dumps({"type": "regenerate"}))
        self.revisions.append(
            Revision("regenerate", mid, self.contents(len(self.sent))[-1], time.perf_counter())
        )

    async def edit(self, content: str) -> None:
        """Replace the last message's text with ``content`` (``{"type": "edit", ...}``)."""
        mid = self.message_ids()[-1]
        command = {"type": "edit", "message_id": mid, "content": content}
        await self.ws.send_str(json.dumps(command))
        self.revisions.append(Revision("edit", mid, content, time.perf_counter()))


class ChatDriver:
    """WebSocket clients of a cluster: ``n`` sessions, socket ``i`` on server ``i % S``.

    Args:
        server_urls: the servers' base URLs (``http://host:port``).
        reconnect: when a socket closes (say, its server shut down with 1001), connect
            again to the next server that accepts, with ``?after=<last event_id>``, as a
            real client does; give up after ``reconnect_timeout_s`` (s).
    """

    def __init__(
        self,
        server_urls: Sequence[str],
        *,
        reconnect: bool = False,
        reconnect_timeout_s: float = 30.0,
    ) -> None:
        self.server_urls = list(server_urls)
        self.reconnect = reconnect
        self.reconnect_timeout_s = reconnect_timeout_s
        self._closing = False
        self.sessions: list[SessionTrace] = []
        self._http: aiohttp.ClientSession | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        # No connection limit: each open socket holds one of the connector's connections.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The driver's HTTP and WebSocket client session."""
        assert self._http is not None, "use ChatDriver in `async with`"
        return self._http

    async def open(
        self, count: int, model: str | None = None, owner: str | None = None
    ) -> list[SessionTrace]:
        """Open ``count`` more sessions at once (a token and a socket each), of ``model``
        (a catalog id; None: the default), conversations of ``owner`` (None: none)."""
        first = len(self.sessions)
        opened = await asyncio.gather(
            *(self._open_one(i, model, owner) for i in range(first, first + count))
        )
        self.sessions.extend(opened)
        return list(opened)

    async def _open_one(self, index: int, model: str | None, owner: str | None) -> SessionTrace:
        server = index % len(self.server_urls)
        url = self.server_urls[server]
        token = await self.new_token(url, index, model, owner)
        ws = await self.http.ws_connect(f"{url}/chat", params={"token": token}, heartbeat=None)
        trace = SessionTrace(index, token, server, ws)
        self._readers.append(asyncio.create_task(self._read(trace)))
        return trace

    async def new_owner(self) -> str:
        """A new owner's token (``POST /owner`` on the first server)."""
        async with self.http.post(f"{self.server_urls[0]}/owner") as response:
            assert response.status == 200, await response.text()
            owner: str = (await response.json())["owner"]
            return owner

    async def new_token(
        self, url: str, index: int, model: str | None, owner: str | None = None
    ) -> str:
        """A new session's token from the server at ``url`` (``POST /token``), of
        ``model`` (None: the default), a conversation of ``owner`` (None: none)."""
        body = {"model": model} if model is not None else None
        params = {"name": f"s{index}"}
        if owner is not None:
            params["owner"] = owner
        async with self.http.post(f"{url}/token", params=params, json=body) as response:
            assert response.status == 200, await response.text()
            token: str = (await response.json())["token"]
            return token

    async def _read(self, trace: SessionTrace) -> None:
        while True:
            async for message in trace.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                trace.received.append(Received(time.perf_counter(), json.loads(message.data)))
                trace.notify()
            if self._closing:
                break
            trace.close_codes.append(trace.ws.close_code)
            if not self.reconnect or not await self._reconnect(trace):
                break
        trace.closed = True
        trace.notify()

    async def _reconnect(self, trace: SessionTrace) -> bool:
        """Connect ``trace`` again, trying the servers after its own in turn, with the one
        backoff (:func:`runtime.retry.retrying`); False after ``reconnect_timeout_s``."""
        servers = (trace.server + n for n in itertools.count(1))
        server = trace.server
        try:
            async for attempt in retrying(
                on=(aiohttp.ClientError, OSError),
                wait_initial_s=0.05,
                wait_max_s=1.0,
                timeout_s=self.reconnect_timeout_s,
            ):
                with attempt:
                    server = next(servers) % len(self.server_urls)
                    trace.ws = await self.http.ws_connect(
                        f"{self.server_urls[server]}/chat",
                        params={"token": trace.token, "after": trace.last_event_id()},
                        heartbeat=None,
                    )
        except (aiohttp.ClientError, OSError):
            return False
        trace.server = server
        return True

    async def send(self, messages: int, sessions: Sequence[SessionTrace] | None = None) -> None:
        """Each session sends ``messages`` messages back to back, without waiting for
        replies; the sessions send concurrently."""

        async def send_all(trace: SessionTrace) -> None:
            for _ in range(messages):
                k = len(trace.sent) + 1
                await trace.say(f"s{trace.index}-m{k}-{uuid.uuid4().hex[:8]}")

        await asyncio.gather(*(send_all(t) for t in sessions or self.sessions))

    async def wait_replies(
        self, timeout_s: float, sessions: Sequence[SessionTrace] | None = None
    ) -> bool:
        """Wait until each session has a closing event (``done``, or ``error`` with a
        message id) per message sent and per revision, or its socket closed; False on
        timeout."""

        async def one(trace: SessionTrace) -> None:
            await trace.wait_until(lambda: trace.closed or trace.closing_count() >= trace.owed())

        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one(t) for t in sessions or self.sessions))
        except TimeoutError:
            return False
        return True

    async def fetch_histories(self) -> None:
        """Fill each session's ``history`` from ``GET /refresh_token`` on its server."""

        async def one(trace: SessionTrace) -> None:
            url = f"{self.server_urls[trace.server]}/refresh_token"
            async with self.http.get(url, params={"token": trace.token}) as response:
                assert response.status == 200, await response.text()
                trace.history = await response.json()

        await asyncio.gather(*(one(t) for t in self.sessions))

    async def close(self) -> None:
        """Close every socket and the HTTP session."""
        self._closing = True
        for trace in self.sessions:
            await trace.ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
