"""Accepting user messages into history and the queue, and closing those lost from it.

Accepting a message is one script (``enqueue.lua``): it is numbered, appended to the
session's history and added to its partition's message stream in one step, so a message
is in history if and only if it is queued; bounds refuse it without any change. A
message whose stream entry is gone all the same (deleted or trimmed by hand, lost in a
failover) is closed with a ``message_lost`` error (``lost.lua``), found by the worker
waiting behind it or by the sweep of sessions waiting for replies.
"""

from __future__ import annotations

import uuid
from functools import cached_property

from protocol.wire import ErrorCode, ErrorEvent, utc_now
from storage import keys
from storage.models import StoredMessage
from storage.scripts import DueStatus, EnqueueStatus, LostStatus, Script
from storage.sessions import SessionExpired
from storage.streams import Streams


class TooManyPending(Exception):
    """The session already has the maximum number of messages waiting for a reply."""


class SessionFull(Exception):
    """The session holds ``max_session_messages`` user messages: a new session must be
    started to go on."""


class Overloaded(Exception):
    """The session's partition already has ``max_backlog`` messages that the workers
    have not finished: the message is refused rather than accepted and left waiting."""


_REFUSALS: dict[EnqueueStatus, type[Exception]] = {
    EnqueueStatus.NO_SESSION: SessionExpired,
    EnqueueStatus.TOO_MANY_PENDING: TooManyPending,
    EnqueueStatus.SESSION_FULL: SessionFull,
    EnqueueStatus.OVERLOADED: Overloaded,
}

_LOST = ErrorEvent(
    code=ErrorCode.MESSAGE_LOST,
    detail="the message was removed from the queue before it was answered; please send it again",
)


class Queue(Streams):
    """User messages in and lost ones out (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _enqueue(self) -> Script[EnqueueStatus]:
        return Script(self.redis, "enqueue.lua", EnqueueStatus, trims=True)

    @cached_property
    def _lost(self) -> Script[LostStatus]:
        return Script(self.redis, "lost.lua", LostStatus)

    @cached_property
    def _due(self) -> Script[DueStatus]:
        return Script(self.redis, "due.lua", DueStatus)

    async def enqueue(self, token: str, content: str, max_pending: int) -> StoredMessage:
        """Record a user message in history and queue it for a reply, atomically.

        The partition's message stream is trimmed in the same step, never removing an
        entry the workers have not acknowledged.

        Returns:
            The stored message, with its ``seq`` and its stream entry id (``entry``).

        Raises:
            SessionExpired: no such session.
            SessionFull: the session holds ``max_session_messages`` messages.
            TooManyPending: ``max_pending`` messages already wait for a reply.
            Overloaded: the partition's backlog is at ``max_backlog``.
        """
        message = StoredMessage(
            id=str(uuid.uuid4()), role="user", content=content, timestamp=utc_now()
        )
        body = message.model_dump_json(include={"id", "role", "content", "timestamp"})
        status, queued = await self._enqueue(
            keys=[
                keys.session_key(token),
                keys.message_stream_of(token),
                keys.waiting_key_of(token),
            ],
            args=[
                body,
                self.settings.session_ttl_seconds,
                max_pending,
                self.settings.message_stream_maxlen,
                token,
                message.id,
                self.settings.max_session_messages,
                self.settings.max_backlog,
                keys.CONSUMER_GROUP,
                await self.trim_mode(),
            ],
        )
        if (refusal := _REFUSALS.get(status)) is not None:
            raise refusal(token)
        message.seq, message.entry = int(queued[0]), str(queued[1])
        return message

    async def close_if_lost(self, token: str) -> tuple[int, int]:
        """Close the session's oldest unanswered message with a ``message_lost`` error if
        its stream entry is gone and no consumer holds it (see ``lost.lua``).

        Returns:
            ``(replied_seq, seq closed)``, the latter 0 if nothing was lost.

        Raises:
            SessionExpired: no such session.
        """
        status, replied = await self._lost(
            keys=[
                keys.session_key(token),
                keys.events_key(token),
                keys.message_stream_of(token),
                keys.waiting_key_of(token),
            ],
            args=[
                keys.CONSUMER_GROUP,
                *self.event_args(token, _LOST.model_dump_json(exclude_none=True)),
                token,
            ],
        )
        if status is LostStatus.NO_SESSION:
            raise SessionExpired(token)
        return int(replied), int(replied) if status is LostStatus.CLOSED else 0

    async def due_for_sweep(self, part: str, older_than_ms: int, count: int = 100) -> list[str]:
        """Sessions of partition ``part`` that may wait for replies and were not checked
        (or sent a message) for ``older_than_ms``; they count as checked now, so
        several workers sweeping share the work. Check each with :meth:`close_if_lost`.
        """
        _, tokens = await self._due(keys=[keys.waiting_key(part)], args=[older_than_ms, count])
        return [str(token) for token in tokens]
