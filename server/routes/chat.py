"""``WS /chat``: a person's messages in, their session's reply events out.

One connection runs three tasks (as encode/broadcaster's example does): the receive
loop (commands and messages), the send loop (the session's events from the hub) and
the expiry watch. When any of them ends, the others are cancelled.

Events are relayed in ``event_id`` order with no duplicate: the connection keeps a
cursor (the last event id sent), replays from the session's event stream what lies
after it (on connect, on ``resume``, and when the hub says to resync), and drops live
events at or before it. A ``resume`` replays at most ``resume_max_events`` events; when
more remain, live events are held back (they stay in the stream) until a later resume
or resync reaches the newest event, so the client never sees a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, WebSocketException, status
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.websockets import WebSocketState

from protocol.event_ids import event_id_of, stream_id_key
from protocol.wire import (
    ErrorCode,
    ErrorEvent,
    FrameRefused,
    QueuedEvent,
    ResumeCommand,
    StopCommand,
    parse_frame,
)
from runtime.logs import fingerprint
from runtime.tasks import cancel_and_wait
from server.admission import admit_message
from server.config import ServerSettings
from server.deps import SESSION_GONE, ChatTokenDep, HubDep, LeasesDep, SettingsDep, StoreDep
from server.limits import TokenBucket
from server.metrics import (
    CLIENT_ERRORS,
    EVENTS_RELAYED,
    MESSAGES_ACCEPTED,
    SOCKETS,
    SOCKETS_REFUSED,
)
from storage import keys
from storage.hub import RESYNC, UNAVAILABLE, Hub, Subscription
from storage.store import Overloaded, SessionExpired, SessionFull, Store, TooManyPending

logger = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

UNAVAILABLE_DETAIL = (
    "Parley cannot reach its store right now; messages already queued will be answered "
    "when it is back, and new ones must be sent again then"
)
#: Bounds (s) of the exponential backoff while Redis is unreachable.
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
#: Events read from the stream at once by a replay.
_REPLAY_CHUNK = 500


class _Closed(Exception):
    """The connection must close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ChatSockets:
    """The accepted chat sockets of one server process, to close them all on shutdown."""

    def __init__(self) -> None:
        self._sockets: set[WebSocket] = set()

    def __len__(self) -> int:
        return len(self._sockets)

    @contextlib.contextmanager
    def track(self, websocket: WebSocket) -> Iterator[None]:
        """Hold ``websocket`` in the set while the block runs."""
        self._sockets.add(websocket)
        try:
            yield
        finally:
            self._sockets.discard(websocket)

    async def close_all(self, code: int, reason: str) -> int:
        """Close every socket with ``code`` and ``reason``; returns how many were open.

        All at once: a socket whose client stopped reading holds its close for up to
        ``ws_send_timeout_s`` and must not delay the others.
        """
        sockets = [ws for ws in self._sockets if ws.client_state == WebSocketState.CONNECTED]

        async def close(websocket: WebSocket) -> None:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason)

        await asyncio.gather(*(close(ws) for ws in sockets))
        return len(sockets)


@router.websocket("/chat")
async def chat(
    websocket: WebSocket,
    token: ChatTokenDep,
    store: StoreDep,
    hub: HubDep,
    leases: LeasesDep,
    settings: SettingsDep,
    after: Annotated[str | None, Query(description="Resume after this event_id.")] = None,
) -> None:
    """Chat over one WebSocket; see the README for the frames both ways.

    A session holding ``max_sockets_per_session`` sockets already (on any server) is
    refused at the handshake: HTTP 429 with a ``detail``.
    """
    try:
        lease = await leases.acquire(token)
    except (RedisError, OSError) as e:
        raise WebSocketException(
            status.WS_1011_INTERNAL_ERROR, reason="Redis unavailable; retry shortly"
        ) from e
    if lease is None:
        await _refuse_too_many(websocket, leases.max_sockets)
        return
    try:
        await websocket.accept()
        connection = ChatConnection(websocket, token, store, hub, settings)
        sockets: ChatSockets = websocket.app.state.chat_sockets
        with SOCKETS.track_inprogress(), sockets.track(websocket):
            await connection.run(after)
    finally:
        await leases.release(token, lease)


async def _refuse_too_many(websocket: WebSocket, max_sockets: int) -> None:
    """Refuse the handshake of a session's socket beyond ``max_sockets``: HTTP 429 where
    the ASGI server can send a response, else a close with 1008 (HTTP 403)."""
    detail = (
        f"this session already has {max_sockets} open sockets, the most allowed; "
        "close one, then connect again"
    )
    SOCKETS_REFUSED.inc()
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=429))
        return
    raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=detail)


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


class ChatConnection:
    """One accepted WebSocket of one session."""

    def __init__(
        self, websocket: WebSocket, token: str, store: Store, hub: Hub, settings: ServerSettings
    ) -> None:
        self.websocket = websocket
        self.token = token
        self.session = fingerprint(token)  # what logs name the session by
        self.store = store
        self.hub = hub
        self.settings = settings
        self._send_lock = asyncio.Lock()
        self._cursor: tuple[int, int] = (0, 0)
        self._told_unavailable = False
        # A resume replayed its maximum and more remain: live events wait (they are in
        # the stream) until a replay reaches the newest event.
        self._held_back = False
        self._resumes = TokenBucket(settings.resume_rate_per_s, settings.resume_burst)

    async def run(self, after: str | None) -> None:
        """Serve the connection until the client leaves or it must close."""
        close: _Closed | None = None
        try:
            async with self.hub.subscribe(keys.channel(self.token)) as sub:
                start = await self.store.last_event_id(self.token)
                problem = _cursor_problem(after, start) if after is not None else None
                if after is not None and problem is None:
                    start = after
                await asyncio.wait_for(sub.ready.wait(), timeout=10)
                if problem is not None:
                    await self._send_error(
                        None, ErrorCode.INVALID_FRAME, f"after {problem}; live events only"
                    )
                await self._replay(start)
                await _first_of(self._receive_loop(), self._send_loop(sub), self._watch_expiry())
        except WebSocketDisconnect:
            pass
        except _Closed as e:
            close = e
        except (RedisError, OSError, TimeoutError) as e:
            logger.warning("session=%s connection failed: %s", self.session, e)
            close = _Closed(status.WS_1011_INTERNAL_ERROR, "Redis unavailable; reconnect")
        if close is not None and self.websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(close.code, close.reason)

    # -- outgoing ------------------------------------------------------------------

    async def _send(self, text: str) -> None:
        async with self._send_lock:
            await self.websocket.send_text(text)

    async def _send_error(self, message_id: str | None, code: ErrorCode, detail: str) -> None:
        event = ErrorEvent(message_id=message_id, code=code, detail=detail)
        CLIENT_ERRORS.labels(code.value).inc()
        await self._send(event.model_dump_json(exclude={"event_id"}))

    async def _replay(self, after: str | None = None, limit: int | None = None) -> None:
        """Send the stored events after the cursor, moving it as they go.

        Args:
            after: move the cursor to this event id first (``"0"``: the beginning);
                None keeps it (a resync after missed live events).
            limit: send at most this many events; if more remain, hold live events
                back until a later replay reaches the newest event. None: every event.
        """
        async with self._send_lock:
            if after is not None:
                self._cursor = stream_id_key(after) if after != "0" else (0, 0)
            if limit is not None:
                payloads = await self.store.events_after(self.token, self._cursor_id(), limit + 1)
                self._held_back = len(payloads) > limit
                await self._send_stored(payloads[:limit])
                return
            self._held_back = False
            while True:
                payloads = await self.store.events_after(
                    self.token, self._cursor_id(), _REPLAY_CHUNK
                )
                await self._send_stored(payloads)
                if len(payloads) < _REPLAY_CHUNK:
                    return

    def _cursor_id(self) -> str:
        return f"{self._cursor[0]}-{self._cursor[1]}" if self._cursor != (0, 0) else "0"

    async def _send_stored(self, payloads: list[str]) -> None:
        """Send events read from the stream, moving the cursor; the send lock is held."""
        EVENTS_RELAYED.inc(len(payloads))
        for payload in payloads:
            await self.websocket.send_text(payload)
            event_id = event_id_of(payload)
            if event_id is not None:
                self._cursor = stream_id_key(event_id)

    async def _send_loop(self, sub: Subscription) -> None:
        while True:
            payload = await sub.queue.get()
            if payload == RESYNC:
                self._told_unavailable = False
                await self._resync()
                continue
            if payload == UNAVAILABLE:
                await self._tell_unavailable()
                continue
            event_id = event_id_of(payload)
            async with self._send_lock:
                if event_id is not None:
                    if self._held_back:
                        continue  # a later resume replays it from the stream
                    key = stream_id_key(event_id)
                    if key <= self._cursor:
                        continue  # already sent by a replay
                    self._cursor = key
                await self.websocket.send_text(payload)
            EVENTS_RELAYED.inc()

    async def _tell_unavailable(self) -> None:
        """Send one ``unavailable`` error per outage (the hub and the expiry watch both notice)."""
        if not self._told_unavailable:
            self._told_unavailable = True
            await self._send_error(None, ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL)

    async def _resync(self) -> None:
        """Replay what live delivery may have missed, retrying while Redis is unreachable."""
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                await self._replay()
                return
            except (RedisError, OSError) as e:
                logger.warning(
                    "session=%s resync failed (%s); retrying in %.1f s", self.session, e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _watch_expiry(self) -> None:
        """Close the socket (error ``session_expired``, then 1008) when the session expires.

        While Redis is unreachable the client gets one ``unavailable`` error and the
        socket stays open; the check is retried with exponential backoff.
        """
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                pttl = await self.store.session_ttl_ms(self.token)
            except (RedisError, OSError) as e:
                logger.warning("session=%s Redis unreachable: %s", self.session, e)
                await self._tell_unavailable()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_MIN_S
            if pttl == -2:
                await self._send_error(None, ErrorCode.SESSION_EXPIRED, SESSION_GONE)
                raise _Closed(status.WS_1008_POLICY_VIOLATION, SESSION_GONE)
            # The TTL only grows with activity, so nothing can expire before it runs out.
            await asyncio.sleep(min(max(pttl, 0) / 1000 + 0.05, 60.0) if pttl > 0 else 60.0)

    # -- incoming ------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            frame = await self.websocket.receive()
            if frame["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(frame.get("code", 1000))
            text = frame.get("text")
            if text is None:
                await self._send_error(
                    None, ErrorCode.INVALID_FRAME, "binary frames are not accepted; send text"
                )
                continue
            await self._on_text(text)

    async def _on_text(self, text: str) -> None:
        try:
            command = parse_frame(text, max_message_chars=self.settings.max_message_chars)
        except FrameRefused as e:
            await self._send_error(None, e.code, e.detail)
            return
        if isinstance(command, ResumeCommand):
            await self._on_resume(command.after)
        elif isinstance(command, StopCommand):
            await self._on_stop()
        else:
            await self._on_message(command.content)

    async def _on_resume(self, after: str) -> None:
        """Replay at most ``resume_max_events`` events after ``after``, a few times a second.

        A cursor that is not an event id, or lies beyond the session's newest event, is
        refused with ``invalid_frame`` and the socket goes on from where it was.
        """
        if not self._resumes.take():
            await self._send_error(
                None,
                ErrorCode.TOO_MANY_RESUMES,
                f"at most {self.settings.resume_burst} resumes at once and "
                f"{self.settings.resume_rate_per_s:g} a second; wait, then resume again",
            )
            return
        limit = self.settings.resume_max_events
        try:
            problem = _cursor_problem(after, await self.store.last_event_id(self.token))
            if problem is None:
                await self._replay(after, limit=limit)
        except (RedisError, OSError) as e:
            logger.warning("resume failed, Redis unavailable: %s", e)
            await self._send_error(None, ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL)
            return
        if problem is not None:
            await self._send_error(None, ErrorCode.INVALID_FRAME, f"resume.after {problem}")
        elif self._held_back:
            await self._send_error(
                None,
                ErrorCode.RESUME_TRUNCATED,
                f"replayed {limit} events and more remain; resume again after the last "
                "event_id received (live events wait until a resume reaches the newest)",
            )

    async def _on_stop(self) -> None:
        try:
            seq = await self.store.stop(self.token)
        except SessionExpired as e:
            await self._send_error(None, ErrorCode.SESSION_EXPIRED, SESSION_GONE)
            raise _Closed(status.WS_1008_POLICY_VIOLATION, SESSION_GONE) from e
        except (RedisError, OSError) as e:
            logger.warning("session=%s could not stop the reply: %s", self.session, e)
            await self._send_error(None, ErrorCode.UNAVAILABLE, "the stop could not be sent; retry")
            return
        logger.info("session=%s seq=%d stop requested", self.session, seq)

    async def _on_message(self, content: str) -> None:
        if not content.strip():
            await self._send_error(None, ErrorCode.EMPTY_MESSAGE, "the message is empty")
            return
        limit = self.settings.max_message_chars
        if len(content) > limit:
            await self._send_error(
                None,
                ErrorCode.MESSAGE_TOO_LONG,
                f"the message has {len(content)} characters; at most {limit} are accepted",
            )
            return
        refusal = await admit_message(self.websocket, self.token)
        if refusal is not None:
            await self._send(refusal.model_dump_json(exclude={"event_id"}))
            return
        try:
            message = await self.store.enqueue(
                self.token, content, self.settings.max_pending_messages
            )
        except SessionExpired as e:
            await self._send_error(None, ErrorCode.SESSION_EXPIRED, SESSION_GONE)
            raise _Closed(status.WS_1008_POLICY_VIOLATION, SESSION_GONE) from e
        except TooManyPending:
            await self._send_error(
                None,
                ErrorCode.TOO_MANY_PENDING,
                f"{self.settings.max_pending_messages} messages already wait for a reply; "
                "wait for one before sending more",
            )
            return
        except SessionFull:
            await self._send_error(
                None,
                ErrorCode.SESSION_FULL,
                f"the session holds {self.settings.max_session_messages} messages, its "
                "most; start a new session to go on",
            )
            return
        except Overloaded:
            await self._send_error(
                None,
                ErrorCode.OVERLOADED,
                "too many messages wait for the workers; send it again in a while",
            )
            return
        except (RedisError, OSError) as e:
            logger.warning("session=%s could not queue a message: %s", self.session, e)
            await self._send_error(
                None, ErrorCode.UNAVAILABLE, "the message could not be stored; send it again"
            )
            return
        MESSAGES_ACCEPTED.inc()
        logger.info("message_id=%s session=%s seq=%d queued", message.id, self.session, message.seq)
        await self._send(
            QueuedEvent(message_id=message.id, message=message.public()).model_dump_json(
                exclude_none=True
            )
        )
