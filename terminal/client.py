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
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
from pydantic import BaseModel, ValidationError

from protocol.subprotocols import bearer_subprotocols
from protocol.wire import (
    SERVER_EVENT,
    ErrorCode,
    ErrorEvent,
    MessageCommand,
    ResumeCommand,
    ServerEvent,
    SessionView,
)
from runtime.retry import retrying
from terminal.api import ApiError, ChatClientError, Choice, ParleyApi
from terminal.cursor import ResumeCursor

__all__ = [
    "ApiError",
    "Backoff",
    "ChatClient",
    "ChatClientError",
    "ClientClosed",
    "ConnectionLost",
    "IdentityRefused",
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


class IdentityRefused(ChatClientError):
    """The server refused the person's ID token (``PARLEY_ID_TOKEN``), or it expired."""


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


class ChatClient:
    """One Parley session: REST calls, a self-healing WebSocket, ``send`` and ``events``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        http: an aiohttp session to use (the client makes and closes its own if None).
        backoff: reconnect policy.
        heartbeat: WebSocket ping interval (s), to notice a dead connection.
        id_token: a person's ID token from the server's identity provider, offered on
            every socket (:mod:`protocol.subprotocols`), never in its URL.
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: aiohttp.ClientSession | None = None,
        backoff: Backoff | None = None,
        heartbeat: float = 20.0,
        id_token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.id_token = id_token
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
        offered = bearer_subprotocols(self.id_token) if self.id_token else ()
        try:
            return await self.http.ws_connect(
                url, params=params, heartbeat=self.heartbeat, protocols=offered
            )
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                raise IdentityRefused(
                    "the server refused your identity token (PARLEY_ID_TOKEN)"
                ) from e
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
            IdentityRefused: it closed the socket because the ID token expired.
            ConnectionLost: the socket dropped and could not be re-established.
        """
        expired = False
        while not self._closed:
            ws = self._ws
            if ws is None:
                raise ChatClientError("not connected: call connect() first")
            while True:
                frame = await ws.receive()
                if frame.type is aiohttp.WSMsgType.TEXT:
                    event = self._parse(frame.data)
                    if isinstance(event, ErrorEvent) and event.code is ErrorCode.AUTH_EXPIRED:
                        expired = True
                    if event is not None and self.cursor.accept(event):
                        yield event
                elif frame.type in _ENDS:
                    break
            if self._closed:
                return
            self._connected.clear()
            if expired:
                raise IdentityRefused(
                    "your identity token expired: set a fresh PARLEY_ID_TOKEN and start again"
                )
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
