"""A Parley chat client: REST for the session, one WebSocket that reconnects and resumes.

:class:`ChatClient` creates or loads a session, then :meth:`ChatClient.send` sends
messages while :meth:`ChatClient.events` yields the server's events. When the socket
drops, ``events`` reconnects with backoff and sends ``{"type": "resume", "after": <last
event id>}`` as the first frame, so a reply in progress continues where it stopped;
events seen before are dropped (:class:`ResumeCursor`), so nothing prints twice.

When the client was away for longer than the session keeps events, the server says so
with a ``gap`` event before its replay: :meth:`ChatClient.catch_up` then reloads the
history, and the reply whose first tokens were lost shows when its ``done`` comes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp
from pydantic import BaseModel, ValidationError

from protocol.event_ids import stream_id_key
from protocol.wire import (
    SERVER_EVENT,
    DoneEvent,
    ErrorEvent,
    GapEvent,
    MessageCommand,
    ResumeCommand,
    RevisedEvent,
    ServerEvent,
    SessionView,
    TokenEvent,
)
from runtime.retry import retrying
from terminal.api import ApiError, ChatClientError, Choice, ParleyApi

__all__ = [
    "ApiError",
    "Backoff",
    "ChatClient",
    "ChatClientError",
    "ClientClosed",
    "ConnectionLost",
    "ResumeCursor",
    "SessionGone",
]

logger = logging.getLogger(__name__)

_POLICY_VIOLATION = 1008  # the server closes with this code when the session is gone
#: What a failed reconnect attempt raises: the server is unreachable or dropped the socket.
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
_ENDS = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)


class SessionGone(ChatClientError):
    """The server refused the session's socket (expired or unknown token)."""


class ConnectionLost(ChatClientError):
    """The socket dropped and every reconnect attempt failed."""


class ClientClosed(ChatClientError):
    """The client was closed."""


@dataclass(frozen=True)
class Backoff:
    """Reconnect policy: waits (s) from ``initial`` doubling up to ``maximum``, plus up to
    ``jitter`` (s) of random jitter, for at most ``attempts`` tries (see
    :func:`runtime.retry.retrying`)."""

    initial: float = 0.5
    maximum: float = 10.0
    jitter: float = 0.1
    attempts: int = 10


def _stream_order(event_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (:func:`stream_id_key`); malformed ids sort first."""
    try:
        return stream_id_key(event_id)
    except ValueError:
        return -1, -1


@dataclass
class ResumeCursor:
    """Where the client is in the session's event stream, and which replies it has seen.

    ``last_event_id`` is what a resume asks to continue after. ``finished`` holds the
    user-message ids whose reply ended (``done`` or ``error``); a resume from the start
    of the stream ("0") replays them, and they are dropped. ``versions`` counts the
    earlier versions known of each turn, so that a replayed ``revised`` event already
    reflected in the history loaded is dropped too, while a new one reopens its turn.

    After a ``gap`` event, the replay starts at the oldest event kept, which may be in
    the middle of a reply (replies of a session come one at a time, so at most one):
    when the first event after the gap is a ``token``, that reply's tokens are dropped
    (``partial``) until its ``done``, ``error`` or ``restart``, which are whole.
    """

    last_event_id: str | None = None
    finished: set[str] = field(default_factory=set)
    versions: dict[str, int] = field(default_factory=dict)
    partial: str | None = None
    _after_gap: bool = False

    def after(self) -> str:
        """The ``after`` of the next resume: the last event seen, or the stream's start."""
        return self.last_event_id or "0-0"

    def accept(self, event: ServerEvent) -> bool:
        """Record ``event``; False if it was seen before and must be dropped (a ``gap``:
        if nothing was missed, as when a second replay of the same resume reports it)."""
        if isinstance(event, GapEvent):
            last = self.last_event_id
            if last is not None and _stream_order(last) >= _stream_order(event.oldest_event_id):
                return False
            self._after_gap = True
            return True
        event_id = getattr(event, "event_id", None)
        if event_id is None:
            return True  # not from the event stream (``queued``, refusals): never replayed
        last = self.last_event_id
        if last is not None and _stream_order(event_id) <= _stream_order(last):
            return False
        # Seen from here on, even if not shown: a resume continues after it.
        self.last_event_id = event_id
        if self._after_gap:
            self._after_gap = False
            if isinstance(event, TokenEvent):
                self.partial = event.message_id  # its first tokens were trimmed away
        if self.partial is not None and event.message_id == self.partial:
            if isinstance(event, TokenEvent):
                return False
            self.partial = None  # done, error, restart or revised: whole from here
        if isinstance(event, RevisedEvent):
            count = len(event.message.versions or [])
            if count <= self.versions.get(event.message_id, 0):
                return False  # a revision the history loaded already holds
            self.versions[event.message_id] = count
            self.finished.discard(event.message_id)  # its new reply follows
        elif event.message_id in self.finished:
            return False
        if isinstance(event, DoneEvent | ErrorEvent) and event.message_id is not None:
            self.finished.add(event.message_id)
        return True

    def seed(self, view: SessionView) -> None:
        """Mark the user messages answered in ``view``'s history as finished, and note
        each turn's earlier versions."""
        for message, following in zip(view.messages, view.messages[1:], strict=False):
            if message.role == "user" and following.role == "assistant":
                self.finished.add(message.id)
        for message in view.messages:
            if message.role == "user":
                self.versions[message.id] = len(message.versions or [])


class ChatClient:
    """One Parley session: REST calls, a self-healing WebSocket, ``send`` and ``events``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        http: an aiohttp session to use (the client makes and closes its own if None).
        backoff: reconnect policy.
        heartbeat: WebSocket ping interval (s), to notice a dead connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: aiohttp.ClientSession | None = None,
        backoff: Backoff | None = None,
        heartbeat: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.backoff = backoff or Backoff()
        self.heartbeat = heartbeat
        self.token: str | None = None
        self.cursor = ResumeCursor()
        self._http = http
        self._owns_http = http is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The aiohttp session (created on first use)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # --- REST -------------------------------------------------------------------------

    async def create_session(
        self, name: str, owner: str | None = None, choice: Choice | None = None
    ) -> SessionView:
        """Start a new session (``POST /token``), one of ``owner``'s conversations if
        given, with ``choice``'s model and system prompt, and make it this client's.

        Raises:
            ApiError: the server refused (e.g. 400 for a blank or too long name, an
                owner that expired, an unknown model or a system prompt too long; 409
                when the owner has too many conversations).
        """
        api = ParleyApi(self.base_url, self.http)
        view = await api.create_session(name, owner, choice)
        self.token = view.token
        return view

    async def load_session(self, token: str) -> SessionView:
        """Load an existing session with its history (``GET /refresh_token``).

        Raises:
            ApiError: 400 if the session expired or does not exist.
        """
        view = await ParleyApi(self.base_url, self.http).load_session(token)
        self.token = view.token
        self.cursor.seed(view)
        return view

    async def catch_up(self) -> SessionView:
        """Reload the session's history after a ``gap`` event (``GET /refresh_token``):
        it holds the replies that finished while the client was away, and their events,
        if replayed, are dropped from now on.

        Raises:
            ApiError: the history could not be loaded (400 if the session is gone).
        """
        if self.token is None:
            raise ChatClientError("no session: call create_session or load_session first")
        return await self.load_session(self.token)

    # --- WebSocket --------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session's socket.

        Raises:
            SessionGone: the server refused the token.
            ConnectionLost: the server could not be reached.
        """
        try:
            self._ws = await self._open()
        except _NETWORK_ERRORS as e:
            # Only the error's type: aiohttp's messages quote the URL, token included.
            raise ConnectionLost(f"cannot open the chat socket ({type(e).__name__})") from e
        self._connected.set()

    async def _open(self, after: str | None = None) -> aiohttp.ClientWebSocketResponse:
        if self.token is None:
            raise ChatClientError("no session: call create_session or load_session first")
        url = self.base_url.replace("http", "ws", 1) + "/chat"
        params = {"token": self.token} | ({"after": after} if after else {})
        try:
            return await self.http.ws_connect(url, params=params, heartbeat=self.heartbeat)
        except aiohttp.WSServerHandshakeError as e:
            if e.status in (400, 403):
                raise SessionGone(f"the server refused the session (HTTP {e.status})") from e
            raise

    async def _reconnect(self) -> None:
        """Open a new socket and resume after the last event seen, with backoff.

        Raises:
            ClientClosed: the client was closed meanwhile.
            ConnectionLost: every attempt of :attr:`backoff` failed.
        """
        policy = self.backoff
        logger.warning("connection lost; reconnecting")
        try:
            async for attempt in retrying(
                on=_NETWORK_ERRORS,
                wait_initial_s=policy.initial,
                wait_max_s=policy.maximum,
                wait_jitter_s=policy.jitter,
                attempts=policy.attempts,
            ):
                with attempt:
                    ws = await self._resume()
        except _NETWORK_ERRORS as e:
            raise ConnectionLost(f"no connection after {policy.attempts} attempts") from e
        self._ws = ws
        self._connected.set()
        logger.warning("reconnected")

    async def _resume(self) -> aiohttp.ClientWebSocketResponse:
        """A new socket that resumes after the last event seen (one reconnect attempt)."""
        if self._closed:
            raise ClientClosed
        # ``?after=`` has the server replay what we missed before it goes live, so no live
        # event overtakes the replay; the resume command (the public contract's way)
        # follows as the first frame for servers without it. Events seen twice are
        # dropped by the cursor. Sends wait on _connected.
        after = self.cursor.after()
        ws = await self._open(after)
        await ws.send_str(ResumeCommand(after=after).model_dump_json())
        return ws

    async def reconnect(self) -> None:
        """Drop the current socket; :meth:`events` opens a new one and resumes."""
        self._connected.clear()
        if self._ws is not None:
            await self._ws.close()

    async def send(self, content: str) -> None:
        """Send a user message, waiting for the socket if it is reconnecting.

        Raises:
            ClientClosed: the client was closed.
        """
        await self.send_command(MessageCommand(content=content))

    async def send_command(self, command: BaseModel) -> None:
        """Send a command (a wire model), waiting for the socket if it is reconnecting.

        Raises:
            ClientClosed: the client was closed.
        """
        frame = command.model_dump_json()
        while True:
            await self._connected.wait()
            ws = self._ws
            if self._closed or ws is None:
                raise ClientClosed
            try:
                await ws.send_str(frame)
                return
            except ConnectionError:
                # A socket that is closing cannot have sent the frame: send it again on
                # the next one. The receive side (events) notices the drop and reconnects.
                if self._ws is ws:
                    self._connected.clear()

    async def events(self) -> AsyncIterator[ServerEvent]:
        """The server's events, new ones only, across reconnects, until :meth:`aclose`.

        Raises:
            SessionGone: the server closed the socket because the session is gone.
            ConnectionLost: the socket dropped and could not be re-established.
        """
        while not self._closed:
            ws = self._ws
            if ws is None:
                raise ChatClientError("not connected: call connect() first")
            while True:
                frame = await ws.receive()
                if frame.type is aiohttp.WSMsgType.TEXT:
                    event = self._parse(frame.data)
                    if event is not None and self.cursor.accept(event):
                        yield event
                elif frame.type in _ENDS:
                    break
            if self._closed:
                return
            self._connected.clear()
            if ws.close_code == _POLICY_VIOLATION:
                reason = frame.extra if frame.type is aiohttp.WSMsgType.CLOSE else None
                raise SessionGone(reason or "session expired or does not exist")
            await self._reconnect()

    @staticmethod
    def _parse(data: str) -> ServerEvent | None:
        try:
            return SERVER_EVENT.validate_json(data)
        except ValidationError:
            logger.warning("ignoring a frame that is not a server event: %.200s", data)
            return None

    async def aclose(self) -> None:
        """Close the socket (and the aiohttp session if the client made it)."""
        self._closed = True
        self._connected.set()  # wake senders: they see _closed
        if self._ws is not None:
            await self._ws.close()
        if self._owns_http and self._http is not None:
            await self._http.close()
