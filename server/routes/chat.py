"""``WS /chat``: a person's messages in, their session's reply events out.

One connection runs three tasks (as encode/broadcaster's example does): the receive
loop (commands and messages), the send loop (the session's events from the hub) and
the expiry watch. When any of them ends, the others are cancelled.

Events are relayed in ``event_id`` order with no duplicate: the connection keeps a
cursor (the last event id sent), replays from the session's event stream what lies
after it (on connect, on ``resume``, and when the hub says to resync), and drops live
events at or before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketState

from protocol import keys
from protocol.hub import RESYNC, UNAVAILABLE, Hub, Subscription
from protocol.store import (
    Overloaded,
    SessionExpired,
    SessionFull,
    Store,
    TooManyPending,
    event_id_of,
    stream_id_key,
    valid_stream_id,
)
from protocol.tasks import cancel_and_wait
from protocol.wire import (
    CLIENT_COMMAND,
    ErrorCode,
    ErrorEvent,
    MessageCommand,
    QueuedEvent,
    ResumeCommand,
    StopCommand,
)
from server.config import ServerSettings
from server.deps import SESSION_GONE, ChatTokenDep, HubDep, SettingsDep, StoreDep
from server.metrics import CLIENT_ERRORS, EVENTS_RELAYED, MESSAGES_ACCEPTED, SOCKETS

logger = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

UNAVAILABLE_DETAIL = (
    "Parley cannot reach its store right now; messages already queued will be answered "
    "when it is back, and new ones must be sent again then"
)
#: Bounds (s) of the exponential backoff while Redis is unreachable.
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0


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
        """Close every socket with ``code`` and ``reason``; returns how many were open."""
        sockets = [ws for ws in self._sockets if ws.client_state == WebSocketState.CONNECTED]
        for websocket in sockets:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason)
        return len(sockets)


@router.websocket("/chat")
async def chat(
    websocket: WebSocket,
    token: ChatTokenDep,
    store: StoreDep,
    hub: HubDep,
    settings: SettingsDep,
    after: Annotated[str | None, Query(description="Resume after this event_id.")] = None,
) -> None:
    """Chat over one WebSocket; see the README for the frames both ways."""
    await websocket.accept()
    connection = ChatConnection(websocket, token, store, hub, settings)
    sockets: ChatSockets = websocket.app.state.chat_sockets
    with SOCKETS.track_inprogress(), sockets.track(websocket):
        await connection.run(after)


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
        self.store = store
        self.hub = hub
        self.settings = settings
        self._send_lock = asyncio.Lock()
        self._cursor: tuple[int, int] = (0, 0)
        self._told_unavailable = False

    async def run(self, after: str | None) -> None:
        """Serve the connection until the client leaves or it must close."""
        close: _Closed | None = None
        try:
            async with self.hub.subscribe(keys.channel(self.token)) as sub:
                start = after if after is not None and valid_stream_id(after) else None
                if start is None:
                    start = await self.store.last_event_id(self.token)
                await asyncio.wait_for(sub.ready.wait(), timeout=10)
                if after is not None and start != after:
                    await self._send_error(
                        None, ErrorCode.INVALID_FRAME, "after must be an event_id; live events only"
                    )
                await self._replay(start)
                await _first_of(self._receive_loop(), self._send_loop(sub), self._watch_expiry())
        except WebSocketDisconnect:
            pass
        except _Closed as e:
            close = e
        except (RedisError, OSError, TimeoutError) as e:
            logger.warning("token=%s connection failed: %s", self.token, e)
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

    async def _replay(self, after: str | None = None) -> None:
        """Send the stored events after the cursor, moving it as they go.

        Args:
            after: move the cursor to this event id first (``"0"``: the beginning);
                None keeps it (a resync after missed live events).
        """
        async with self._send_lock:
            if after is not None:
                self._cursor = stream_id_key(after) if after != "0" else (0, 0)
            while True:
                cursor = f"{self._cursor[0]}-{self._cursor[1]}" if self._cursor != (0, 0) else "0"
                payloads = await self.store.events_after(self.token, cursor, count=500)
                EVENTS_RELAYED.inc(len(payloads))
                for payload in payloads:
                    await self.websocket.send_text(payload)
                    event_id = event_id_of(payload)
                    if event_id is not None:
                        self._cursor = stream_id_key(event_id)
                if len(payloads) < 500:
                    return

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
                    "token=%s resync failed (%s); retrying in %.1f s", self.token, e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _watch_expiry(self) -> None:
        """Close the socket (error ``session_expired``, then 1008) when the session expires.

        While Redis is unreachable the client gets one ``unavailable`` error and the
        socket stays open; the check is retried with exponential backoff.
        """
        session_key = keys.session_key(self.token)
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                pttl = await self.store.redis.pttl(session_key)
            except (RedisError, OSError) as e:
                logger.warning("token=%s Redis unreachable: %s", self.token, e)
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
        command = self._parse(text)
        if isinstance(command, ErrorEvent):
            CLIENT_ERRORS.labels(command.code.value).inc()
            await self._send(command.model_dump_json(exclude={"event_id"}))
        elif isinstance(command, ResumeCommand):
            if not valid_stream_id(command.after):
                await self._send_error(
                    None, ErrorCode.INVALID_FRAME, "resume.after must be an event_id"
                )
                return
            try:
                await self._replay(command.after)
            except (RedisError, OSError) as e:
                logger.warning("token=%s resume failed: %s", self.token, e)
                await self._send_error(None, ErrorCode.UNAVAILABLE, UNAVAILABLE_DETAIL)
        elif isinstance(command, StopCommand):
            await self._on_stop()
        else:
            await self._on_message(command.content)

    def _parse(self, text: str) -> MessageCommand | ResumeCommand | StopCommand | ErrorEvent:
        """A text frame as a command; plain text (anything but a JSON object with a
        ``type``) is the message content itself."""
        try:
            data = json.loads(text)
        except ValueError:
            return MessageCommand(content=text)
        if not isinstance(data, dict) or "type" not in data:
            return MessageCommand(content=text)
        try:
            return CLIENT_COMMAND.validate_python(data)
        except ValidationError as e:
            if any(err["type"] == "union_tag_invalid" for err in e.errors()):
                return ErrorEvent(
                    code=ErrorCode.UNKNOWN_COMMAND,
                    detail=f"unknown command type {data['type']!r}; known: message, resume, stop",
                )
            detail = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors()
            )
            return ErrorEvent(code=ErrorCode.INVALID_FRAME, detail=f"invalid command: {detail}")

    async def _on_stop(self) -> None:
        try:
            seq = await self.store.stop(self.token)
        except SessionExpired as e:
            await self._send_error(None, ErrorCode.SESSION_EXPIRED, SESSION_GONE)
            raise _Closed(status.WS_1008_POLICY_VIOLATION, SESSION_GONE) from e
        except (RedisError, OSError) as e:
            logger.warning("token=%s could not stop the reply: %s", self.token, e)
            await self._send_error(None, ErrorCode.UNAVAILABLE, "the stop could not be sent; retry")
            return
        logger.info("token=%s seq=%d stop requested", self.token, seq)

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
            logger.warning("token=%s could not queue a message: %s", self.token, e)
            await self._send_error(
                None, ErrorCode.UNAVAILABLE, "the message could not be stored; send it again"
            )
            return
        MESSAGES_ACCEPTED.inc()
        logger.info("message_id=%s token=%s seq=%d queued", message.id, self.token, message.seq)
        await self._send(
            QueuedEvent(message_id=message.id, message=message.public()).model_dump_json(
                exclude_none=True
            )
        )
