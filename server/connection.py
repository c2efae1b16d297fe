"""One accepted chat socket: a person's messages in, their session's reply events out.

A connection runs two tasks (as encode/broadcaster's example does): the receive loop
(frames, whose commands :class:`server.commands.SessionCommands` carries out) and the
send loop (the session's events from the hub, relayed by
:class:`server.relay.EventRelay`, and between them the session's expiry watch). When
either ends, the other is cancelled. Redis is reached only through the
:class:`storage.store.Store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect, status
from starlette.websockets import WebSocketState

from protocol.event_ids import stream_id_key
from protocol.frames import FrameRefused, parse_frame
from protocol.wire import (
    EditCommand,
    ErrorCode,
    RegenerateCommand,
    ResumeCommand,
    StopCommand,
)
from runtime.logs import fingerprint
from runtime.retry import retrying
from runtime.tasks import cancel_and_wait
from runtime.tracing import current_tracer
from server.commands import SessionCommands
from server.config import ServerSettings
from server.deps import SESSION_GONE
from server.limits import TokenBucket
from server.pools import PoolWatch
from server.relay import BACKOFF_MAX_S, BACKOFF_MIN_S, UNAVAILABLE_DETAIL, EventRelay
from server.tracing import MessageTraces
from server.websocket import SEND_NOW
from storage import keys
from storage.connection import REDIS_DOWN
from storage.hub import CHECK, RESYNC, Hub, Subscription
from storage.store import (
    SessionExpired,
    Store,
)

logger = logging.getLogger(__name__)


#: Put on the socket's subscription queue when the session's expiry is due a look.
_WAKE = "\x00wake"
#: Why a socket whose ID token expired is closed (the detail of its ``auth_expired``).
IDENTITY_EXPIRED = "identity token expired; reconnect with a fresh one, ?after= the last event_id"


class _Closed(Exception):
    """The connection must close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _cursor_problem(after: str, last: str) -> str | None:
    """Why ``after`` cannot be a session's resume cursor, or None if it can.

    Args:
        after: what the client sent.
        last: the session's newest event id (``"0"``: it has none).
    """
    try:
        key = stream_id_key(after)
    except ValueError:
        return "must be an event_id such as 1700000000000-0"
    newest = stream_id_key(last) if last != "0" else (0, 0)
    if key > newest:
        return f"{after} is beyond the session's newest event ({last})"
    return None


async def _first_of(*loops: Coroutine[Any, Any, None]) -> None:
    """Run ``loops`` until the first one ends; cancel the others; re-raise its error.

    The others are cancelled with :func:`cancel_and_wait` rather than in a task group,
    which could wait for good on a task that absorbed its cancellation.
    """
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class ChatConnection(SessionCommands):
    """One accepted WebSocket of one session (its commands: :class:`SessionCommands`).

    ``expires_at`` is when the ID token the socket was opened with stops being accepted
    (Unix time, s; :class:`server.identity.Person`); None: it was opened without one.
    """

    __slots__ = (
        "_resumes",
        "expires_at",
        "hub",
        "relay",
        "session",
        "settings",
        "store",
        "token",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        token: str,
        store: Store,
        hub: Hub,
        settings: ServerSettings,
        pools: PoolWatch,
        expires_at: float | None = None,
    ) -> None:
        self.websocket = websocket
        self.expires_at = expires_at
        self.token = token
        self.session = fingerprint(token)  # what logs name the session by
        self.store = store
        self.hub = hub
        self.settings = settings
        extensions = websocket.scope.get("extensions") or {}
        self.relay = EventRelay(websocket, token, store, extensions.get(SEND_NOW))
        self._resumes = TokenBucket(settings.resume_rate_per_s, settings.resume_burst)
        self.pools = pools
        self.model = settings.default_model
        self._limits = None
        self._pending = None
        tracer = current_tracer()
        self.traces = MessageTraces(tracer, self.session) if tracer is not None else None

    async def run(self, after: str | None) -> None:
        """Serve the connection until the client leaves or it must close.

        Args:
            after: the event id to resume after (``?after=``); None: live events only,
                from the newest.
        """
        close: _Closed | None = None
        try:
            async with self.hub.subscribe(keys.channel(self.token)) as sub:
                start = await self.store.events.last_event_id(self.token)
                problem = _cursor_problem(after, start) if after is not None else None
                if after is not None and problem is None:
                    start = after
                await asyncio.wait_for(sub.ready.wait(), timeout=10)
                if problem is not None:
                    await self.relay.send_error(
                        ErrorCode.INVALID_FRAME, f"after {problem}; live events only"
                    )
                # A gap matters only after a cursor the client saw: the newest event
                # (no cursor, or a refused one) is the server's own starting point.
                await self.relay.replay(start, check_gap=after is not None and problem is None)
                await _first_of(self._receive_loop(), self._send_loop(sub))
        except WebSocketDisconnect:
            pass
        except _Closed as e:
            close = e
        except (*REDIS_DOWN, TimeoutError) as e:
            logger.warning("session=%s connection failed: %s", self.session, e)
            close = _Closed(status.WS_1011_INTERNAL_ERROR, "Redis unavailable; reconnect")
        finally:
            if self.traces is not None:  # the spans of replies it did not relay to the end
                self.traces.close()
        if close is not None and self.websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(close.code, close.reason)

    async def _session_gone(self) -> _Closed:
        """Tell the client its session is gone; the error that closes the socket (1008)."""
        await self.relay.send_error(ErrorCode.SESSION_EXPIRED, SESSION_GONE)
        return _Closed(status.WS_1008_POLICY_VIOLATION, SESSION_GONE)

    async def _identity_expired(self) -> _Closed:
        """Tell the client its ID token expired; the error that closes the socket (1008)."""
        await self.relay.send_error(ErrorCode.AUTH_EXPIRED, IDENTITY_EXPIRED)
        return _Closed(status.WS_1008_POLICY_VIOLATION, IDENTITY_EXPIRED)

    async def _send_loop(self, sub: Subscription) -> None:
        """Relay the hub's messages for the session until cancelled; between them, close
        the socket (error ``session_expired``, then 1008) once the session has expired,
        or (error ``auth_expired``, then 1008) once the ID token it was opened with has;
        at each such look and after each resync, tell the client of the messages it
        queued that are gone from history (:meth:`check_pending`).

        A session's TTL only grows with activity, so nothing can expire before the TTL
        last read runs out: the session is looked at again then (or after 60 s at most),
        woken by one timer handle rather than a task of its own, or at once when its
        channel says :data:`storage.hub.CHECK` (the session was deleted). While Redis is
        unreachable the client gets one ``unavailable`` error and the socket stays open;
        the check is retried with exponential backoff.
        """
        loop = asyncio.get_running_loop()
        # Chosen once: with tracing off, events go straight to the relay, and while
        # this loop waits for the next message the hub's listener relays them itself
        # (the sink), sparing this task a wake-up per event.
        deliver = (
            self.relay.deliver
            if self.traces is None
            else functools.partial(self.traces.deliver, self.relay)
        )
        if self.traces is None:
            sub.sink = self._relay_now
        check_at = loop.time()
        wake: asyncio.TimerHandle | None = None
        woken = True
        try:
            while True:
                # Woken by the timer (which may run a hair early), or the time has come
                # while events kept the loop busy.
                if woken or loop.time() >= check_at:
                    if self.expires_at is not None and time.time() >= self.expires_at:
                        raise await self._identity_expired()
                    pttl = await self._session_ttl_ms()
                    if pttl == -2:
                        raise await self._session_gone()
                    check_at = loop.time() + (min(pttl / 1000 + 0.05, 60.0) if pttl > 0 else 60.0)
                    if self.expires_at is not None:
                        # Wall clock to loop clock: the token's end is a Unix time.
                        token_end = loop.time() + self.expires_at - time.time() + 0.05
                        check_at = min(check_at, token_end)
                    if wake is not None:
                        wake.cancel()
                    # A timer handle, not a timeout around each wait: an idle socket
                    # holds this one small object. A full queue that drops the wake-up
                    # puts RESYNC in its place, which also leads to a check.
                    wake = loop.call_at(check_at, sub.deliver, _WAKE)
                    await self._check_pending()
                payload = await sub.queue.get()
                woken = payload in (_WAKE, RESYNC, CHECK)
                if payload not in (_WAKE, CHECK):
                    await deliver(payload)
                    self.forget_answered(payload)
        finally:
            sub.sink = None
            if wake is not None:
                wake.cancel()

    def _relay_now(self, payload: str) -> bool:
        """The send loop's work for one of the hub's messages, done at once by the hub's
        listener while the loop waits (:attr:`storage.hub.Subscription.sink`): whether
        :meth:`server.relay.EventRelay.deliver_now` relayed it; the loop gets the rest."""
        if not self.relay.deliver_now(payload):
            return False
        self.forget_answered(payload)
        return True

    async def _check_pending(self) -> None:
        """:meth:`check_pending`, from the send loop: a Redis that cannot be read leaves
        the messages for the next look (the resync after the outage)."""
        try:
            await self.check_pending()
        except SessionExpired as e:
            raise await self._session_gone() from e
        except REDIS_DOWN as e:
            logger.warning("session=%s pending messages not checked: %s", self.session, e)

    async def _session_ttl_ms(self) -> int:
        """The session's TTL (ms; -2: gone), retried while Redis is unreachable."""
        async for attempt in retrying(
            on=REDIS_DOWN, wait_initial_s=BACKOFF_MIN_S, wait_max_s=BACKOFF_MAX_S
        ):
            with attempt:
                try:
                    pttl = await self.store.sessions.session_ttl_ms(self.token)
                except REDIS_DOWN as e:
                    logger.warning("session=%s Redis unreachable: %s", self.session, e)
                    await self.relay.tell_unavailable()
                    raise
        return pttl

    # -- incoming ------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            frame = await self.websocket.receive()
            if frame["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(frame.get("code", 1000))
            text = frame.get("text")
            if text is None:
                await self.relay.send_error(
                    ErrorCode.INVALID_FRAME, "binary frames are not accepted; send text"
                )
                continue
            await self._on_text(text)

    async def _on_text(self, text: str) -> None:
        try:
            command = parse_frame(text, max_message_chars=self.settings.max_message_chars)
        except FrameRefused as e:
            await self.relay.send_error(e.code, e.detail)
            return
        try:
            if isinstance(command, ResumeCommand):
                await self._on_resume(command.after)
            elif isinstance(command, StopCommand):
                await self._on_stop()
            elif isinstance(command, RegenerateCommand | EditCommand):
                await self._on_revise(command)
            else:
                await self._on_message(command.content)
        except SessionExpired as e:
            raise await self._session_gone() from e

    async def _on_resume(self, after: str) -> None:
        """Replay at most ``resume_max_events`` events after ``after``, a few times a second.

        A cursor that is not an event id, or lies beyond the session's newest event, is
        refused with ``invalid_frame`` and the socket goes on from where it was.
        """
        if not self._resumes.take():
            await self.relay.send_error(
                ErrorCode.TOO_MANY_RESUMES,
                f"at most {self.settings.resume_burst} resumes at once and "
                f"{self.settings.resume_rate_per_s:g} a second; wait, then resume again",
            )
            return
        limit = self.settings.resume_max_events
        try:
            problem = _cursor_problem(after, await self.store.events.last_event_id(self.token))
            if problem is None:
                await self.relay.replay(after, limit=limit)
        except REDIS_DOWN as e:
            logger.warning("resume failed, Redis unavailable: %s", e)
            await self.relay.send_error(ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL)
            return
        if problem is not None:
            await self.relay.send_error(ErrorCode.INVALID_FRAME, f"resume.after {problem}")
        elif self.relay.held_back:
            await self.relay.send_error(
                ErrorCode.RESUME_TRUNCATED,
                f"replayed {limit} events and more remain; resume again after the last "
                "event_id received (live events wait until a resume reaches the newest)",
            )
