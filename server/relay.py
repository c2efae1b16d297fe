"""What goes out on one chat socket: its session's events, in order, and error events.

Events are relayed in ``event_id`` order with no duplicate: the relay keeps a cursor
(the last event id sent), replays from the session's event stream what lies after it
(on connect, on ``resume``, and when the hub says to resync), and drops live events at
or before it. A replay may be capped (a ``resume`` sends at most ``resume_max_events``);
when more remain, live events are held back (they stay in the stream) until a later
replay reaches the newest event, so the client never sees a gap.

The stream keeps only the newest ``EVENTS_MAXLEN`` events: a replay whose cursor is
older than the oldest one kept cannot send everything after it, and says so first with a
``gap`` event (:class:`protocol.wire.GapEvent`) naming the oldest event kept.

Every send takes one lock, so a replay and live events never interleave.

A live event can also be sent at once, from the hub's listener, while the socket's
send loop waits for its next message (:meth:`EventRelay.deliver_now`): only where that
is exactly what :meth:`EventRelay.deliver` would do, and without waiting for anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from protocol.event_ids import event_id_of, stream_id_key
from protocol.wire import ErrorCode, ErrorEvent, GapEvent
from runtime.logs import fingerprint
from runtime.retry import retrying
from server.metrics import CLIENT_ERRORS, EVENTS_RELAYED, RESUME_GAPS
from storage.connection import REDIS_DOWN
from storage.hub import RESYNC, UNAVAILABLE
from storage.store import Store

logger = logging.getLogger(__name__)

UNAVAILABLE_DETAIL = (
    "Parley cannot reach its store right now; messages already queued will be answered "
    "when it is back, and new ones must be sent again then"
)
#: Bounds (s) of the backoff between tries while Redis is unreachable.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
#: Events read from the stream at once by a replay.
_REPLAY_CHUNK = 500


class _SendLock(asyncio.Lock):
    """The relay's lock, first come first served, and how many tasks hold it or wait
    for it (``claims``): a live event relayed at once must not overtake a send that
    waits its turn, as its own turn would not have."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def acquire(self) -> Literal[True]:
        """Wait for the lock and take it (as :meth:`asyncio.Lock.acquire`)."""
        self.claims += 1
        try:
            return await super().acquire()
        except BaseException:
            self.claims -= 1
            raise

    def release(self) -> None:
        """Release the lock (as :meth:`asyncio.Lock.release`)."""
        super().release()
        self.claims -= 1


class EventRelay:
    """The sending side of one accepted WebSocket of session ``token``.

    ``send_now``: the server's way to send a text frame without an await, if it has
    one (:data:`server.websocket.SEND_NOW`), for :meth:`deliver_now`: it sends and
    returns True, or does nothing and returns False.
    """

    __slots__ = (
        "_cursor",
        "_held_back",
        "_lock",
        "_send_now",
        "_session",
        "_store",
        "_token",
        "_told_unavailable",
        "_websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        token: str,
        store: Store,
        send_now: Callable[[str], bool] | None = None,
    ) -> None:
        self._websocket = websocket
        self._token = token
        self._session = fingerprint(token)  # what logs name the session by
        self._store = store
        self._lock = _SendLock()
        self._cursor: tuple[int, int] = (0, 0)
        self._told_unavailable = False
        # A capped replay left events unsent: live events wait (they are in the
        # stream) until a replay reaches the newest event.
        self._held_back = False
        self._send_now = send_now

    @property
    def held_back(self) -> bool:
        """Whether the last replay was capped with events left to send."""
        return self._held_back

    async def send(self, text: str) -> None:
        """Send one text frame."""
        async with self._lock:
            await self._send_text(text)

    async def send_error(self, code: ErrorCode, detail: str) -> None:
        """Send an ``error`` event that belongs to no reply (``message_id`` null)."""
        event = ErrorEvent(message_id=None, code=code, detail=detail)
        CLIENT_ERRORS.labels(code.value).inc()
        await self.send(event.model_dump_json(exclude={"event_id"}))

    async def tell_unavailable(self) -> None:
        """Send one ``unavailable`` error per outage (the hub and the expiry watch both
        notice one; the hub's resync ends it)."""
        if not self._told_unavailable:
            self._told_unavailable = True
            await self.send_error(ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL)

    async def replay(
        self, after: str | None = None, limit: int | None = None, *, check_gap: bool = True
    ) -> None:
        """Send the stored events after the cursor, moving it as they go.

        When events after the cursor were trimmed away (it is older than the oldest event
        kept), a ``gap`` event goes first (:meth:`storage.events.Events.events_since`).

        Args:
            after: move the cursor to this event id first (``"0"``: the beginning);
                None keeps it (a resync after missed live events).
            limit: send at most this many events; if more remain, hold live events
                back until a later replay reaches the newest event. None: every event.
            check_gap: look for a gap (False: the cursor is the server's own choice, not
                something the client saw). A cursor at the beginning never has one.

        Raises:
            redis.exceptions.RedisError, OSError: Redis could not be read.
        """
        async with self._lock:
            if after is not None:
                self._cursor = stream_id_key(after) if after != "0" else (0, 0)
            first = limit + 1 if limit is not None else _REPLAY_CHUNK
            if check_gap and self._cursor != (0, 0):
                since = await self._store.events.events_since(self._token, self._cursor_id(), first)
                payloads = since.payloads
                if since.gap is not None:
                    await self._send_gap(since.gap)
            else:
                payloads = await self._store.events.events_after(
                    self._token, self._cursor_id(), first
                )
            if limit is not None:
                self._held_back = len(payloads) > limit
                await self._send_stored(payloads[:limit])
                return
            self._held_back = False
            while True:
                await self._send_stored(payloads)
                if len(payloads) < _REPLAY_CHUNK:
                    return
                payloads = await self._store.events.events_after(
                    self._token, self._cursor_id(), _REPLAY_CHUNK
                )

    async def _send_gap(self, oldest: str) -> None:
        """Tell the client that events after its cursor are gone; the lock is held."""
        after = self._cursor_id()
        logger.info(
            "session=%s resume after %s: older than the oldest event kept (%s)",
            self._session,
            after,
            oldest,
        )
        RESUME_GAPS.inc()
        event = GapEvent(
            oldest_event_id=oldest,
            detail=(
                f"events after {after} are no longer kept (the session keeps its newest "
                f"EVENTS_MAXLEN); the replay starts at {oldest}: reload the history "
                "(GET /refresh_token) for the replies that finished meanwhile"
            ),
        )
        await self._send_text(event.model_dump_json())

    async def deliver(self, payload: str) -> None:
        """Relay one of the hub's messages for the session (:class:`storage.hub.Subscription`):
        a live event, a resync (replay what may have been missed) or an outage (tell the
        client)."""
        if payload == RESYNC:
            self._told_unavailable = False
            await self._resync()
        elif payload == UNAVAILABLE:
            await self.tell_unavailable()
        elif "\n" in payload:  # events announced together, one a line (finish.lua)
            for event in payload.split("\n"):
                await self._send_live(event)
        else:
            await self._send_live(payload)

    def deliver_now(self, payload: str) -> bool:
        """Relay the hub's ``payload`` at once, without waiting, if it is a single live
        event and that can be done exactly as :meth:`deliver` would: in order (no send
        or replay holds the lock or waits for it) and at once (the socket's write
        buffer has room); whether it was relayed (sent, or dropped as :meth:`deliver`
        drops it).

        False, with nothing done, for anything else: resyncs, outages, events announced
        together, an ``event_id`` that is not a stream id, a socket that is full,
        closing or closed, a server that cannot send without an await; pass those to
        :meth:`deliver`. Never raises.
        """
        if (
            self._send_now is None
            or self._lock.claims
            or not payload.startswith("{")
            or "\n" in payload
        ):
            return False
        event_id = event_id_of(payload)
        if event_id is None:
            key = None
        else:
            try:
                key = stream_id_key(event_id)
            except ValueError:
                return False  # deliver raises it, as it always has
            if self._held_back or key <= self._cursor:
                return True  # dropped, as _send_live drops it
        if not self._sent_at_once(payload):
            return False
        if key is not None:
            self._cursor = key
        EVENTS_RELAYED.inc()
        return True

    def _sent_at_once(self, text: str) -> bool:
        """Send one text frame without an await if the server can (``send_now``), as
        Starlette's ``send_text`` would send it; whether it did (False: nothing sent)."""
        send_now = self._send_now
        return (
            send_now is not None
            and self._websocket.application_state is WebSocketState.CONNECTED
            and send_now(text)
        )

    async def _send_text(self, text: str) -> None:
        """Send one text frame, at once when the server can; the lock is held."""
        if not self._sent_at_once(text):
            await self._websocket.send_text(text)

    def _cursor_id(self) -> str:
        return f"{self._cursor[0]}-{self._cursor[1]}" if self._cursor != (0, 0) else "0"

    async def _send_stored(self, payloads: list[str]) -> None:
        """Send events read from the stream, moving the cursor; the lock is held."""
        EVENTS_RELAYED.inc(len(payloads))
        for payload in payloads:
            await self._send_text(payload)
            event_id = event_id_of(payload)
            if event_id is not None:
                self._cursor = stream_id_key(event_id)

    async def _send_live(self, payload: str) -> None:
        event_id = event_id_of(payload)
        async with self._lock:
            if event_id is not None:
                if self._held_back:
                    return  # a later resume replays it from the stream
                key = stream_id_key(event_id)
                if key <= self._cursor:
                    return  # already sent by a replay
                self._cursor = key
            await self._send_text(payload)
        EVENTS_RELAYED.inc()

    async def _resync(self) -> None:
        """Replay what live delivery may have missed, retrying while Redis is unreachable."""
        async for attempt in retrying(
            on=REDIS_DOWN, wait_initial_s=BACKOFF_MIN_S, wait_max_s=BACKOFF_MAX_S
        ):
            with attempt:
                try:
                    await self.replay()
                except REDIS_DOWN as e:
                    logger.warning("session=%s resync failed: %s", self._session, e)
                    raise
