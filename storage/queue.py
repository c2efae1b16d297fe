"""Accepting user messages into history and the queue, and closing those lost from it.

Accepting a message is one script (``enqueue.lua``): it is numbered, appended to the
session's history and added to its partition's message stream in one step, so a message
is in history if and only if it is queued; bounds refuse it without any change. A
message whose stream entry is gone all the same (deleted or trimmed by hand, lost in a
failover) is closed with a ``message_lost`` error (``lost.lua``), found by the worker
waiting behind it or by the sweep of sessions waiting for replies.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from redis.asyncio import Redis

from protocol.wire import ErrorCode, ErrorEvent, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.admission import (
    CLIENT_TOKENS,
    SESSION_TOKENS,
    UNLIMITED,
    Limiter,
    MessageLimits,
    Refused,
    limit_key,
)
from storage.base import StoreBase
from storage.batching import BatchScript
from storage.connection import is_cluster
from storage.models import StoredMessage
from storage.refusals import (
    NotLastMessage,
    Overloaded,
    PromptTooLong,
    ReplyInProgress,
    SessionFull,
    TooManyAttempts,
    TooManyPending,
    TooManyVersions,
)
from storage.scripts import DueStatus, EnqueueStatus, LostStatus, ReviseStatus, Script
from storage.sessions import SessionExpired
from storage.streams import Streams


class ModelChanged(Exception):
    """The session's model is not the one the caller assumed (it was changed): nothing
    was done; do it again with :attr:`model`."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the session's model is {model!r}")
        self.model = model


@dataclass(frozen=True)
class Revision:
    """A turn queued again by :meth:`Queue.revise`.

    Attributes:
        seq: the user message's number (unchanged).
        message_id: the user message's id (unchanged).
        entry: its new entry id in the partition's message stream.
        event_id: the ``revised`` event's id in the session's event stream.
    """

    seq: int
    message_id: str
    entry: str
    event_id: str


#: The limit names of :class:`Refused`, by the names of the admission statuses of the
#: scripts that queue (``enqueue.lua``, ``revise.lua``).
_ADMISSION_REFUSALS: dict[str, str] = {
    "RATE_LIMITED": "messages",
    "SESSION_QUOTA": SESSION_TOKENS,
    "CLIENT_QUOTA": CLIENT_TOKENS,
}

_LOST = ErrorEvent(
    code=ErrorCode.MESSAGE_LOST,
    detail="the message was removed from the queue before it was answered; please send it again",
)


class Queue(StoreBase):
    """Messages in, lost ones out; needs ``streams`` (a part of :class:`storage.store.Store`)."""

    def __init__(self, redis: Redis[str], settings: CommonSettings, streams: Streams) -> None:
        super().__init__(redis, settings)
        self.streams = streams

    @cached_property
    def _enqueue(self) -> BatchScript[EnqueueStatus]:
        return BatchScript(
            self.redis, "enqueue.lua", EnqueueStatus, trims=True, wait=self.wait_replicas
        )

    @cached_property
    def _revise(self) -> Script[ReviseStatus]:
        return Script(self.redis, "revise.lua", ReviseStatus, trims=True, wait=self.wait_replicas)

    @cached_property
    def _lost(self) -> Script[LostStatus]:
        return Script(self.redis, "lost.lua", LostStatus)

    @cached_property
    def _due(self) -> Script[DueStatus]:
        return Script(self.redis, "due.lua", DueStatus)

    async def enqueue(
        self,
        token: str,
        content: str,
        max_pending: int,
        model: str = "",
        limits: MessageLimits | None = None,
        traceparent: str = "",
    ) -> StoredMessage:
        """Admit a user message, record it in history and queue it for a reply,
        atomically, in the message stream of the session's model: one script call
        (``enqueue.lua``), and a refusal changes nothing, so it spends nothing. The
        stream is trimmed now and then in the same step (acknowledged entries only).

        Args:
            model: the session's model as the caller knows it ("": the catalog's
                default); checked in the same step.
            limits: the session's admission (its rate window, its quota and its
                client's; see :class:`storage.admission.MessageLimits`); None: none.
            traceparent: the W3C traceparent the stream entry carries, for the worker
                to continue the message's trace ("": none, tracing is off).

        Returns:
            The stored message, with its ``seq`` and its stream entry id (``entry``).

        Raises:
            SessionExpired: no such session.
            Refused: an admission bound is reached (``limit``: ``"messages"``,
                ``SESSION_TOKENS`` or ``CLIENT_TOKENS``; ``retry_after_s``).
            ModelChanged: the session's model is another (nothing was done).
            SessionFull, TooManyPending, Overloaded, PromptTooLong: the
                :mod:`storage.refusals` of a message: the session's bounds of messages
                and bytes, ``max_pending``, the partition's ``max_backlog``, the model's
                context (when the catalog gives it).
        """
        model = model or self.settings.default_model
        limits = limits or UNLIMITED
        message = StoredMessage(
            id=str(uuid.uuid4()), role="user", content=content, timestamp=utc_now()
        )
        body = message.model_dump_json(include={"id", "role", "content", "timestamp"})
        context, system_bytes, content_bytes = self._fit(model, content)
        params = {
            **await self._queue_params(token, model, limits, traceparent),
            "max_pending": max_pending,
            "message_id": message.id,
            "max_messages": self.settings.max_session_messages,
            "context": context,
            "system_bytes": system_bytes,
            "content_bytes": content_bytes,
        }
        status, queued = await self._enqueue(
            keys=[*keys.queue_keys(token, model), *await self._client_quota_key(limits)],
            args=[body, json.dumps(params)],
        )
        if status is not EnqueueStatus.QUEUED:
            raise self._refused(status, queued, token, model, max_pending)
        message.seq, message.entry = int(queued[0]), str(queued[1])
        return message

    async def _queue_params(
        self, token: str, model: str, limits: MessageLimits, traceparent: str
    ) -> dict[str, Any]:
        """What ``enqueue.lua`` and ``revise.lua`` both take (in their ``ARGV`` object):
        the session, its model, the bounds of its stream and of its size, its
        admission, and the entry's ``traceparent`` if it has one."""
        params = {
            "token": token,
            "ttl": self.settings.session_ttl_seconds,
            "maxlen": self.settings.message_stream_maxlen,
            "max_backlog": self.settings.max_backlog,
            "group": keys.CONSUMER_GROUP,
            "trim_mode": await self.streams.trim_mode(),
            "model": model,
            "default_model": self.settings.default_model,
            "max_bytes": self.settings.max_session_bytes,
            **limits.params(),
        }
        if traceparent:  # only while the server traces (runtime.tracing)
            params["traceparent"] = traceparent
        return params

    async def _client_quota_key(self, limits: MessageLimits) -> list[str]:
        """The client's quota key, checked inside the script on a single Redis; on a
        Redis Cluster it lives in another slot, so it is checked here first, by one
        call of its own.

        Raises:
            Refused: the client's quota is used up.
        """
        if not limits.client or not limits.client_quota:
            return []
        if not is_cluster(self.redis):
            return [limit_key(CLIENT_TOKENS, limits.client)]
        await Limiter(self.redis).check_quota(CLIENT_TOKENS, limits.client, limits.client_quota)
        return []

    def _refused(
        self, status: EnqueueStatus, payload: Any, token: str, model: str, max_pending: int
    ) -> Exception:
        """The exception of an ``enqueue.lua`` refusal (see :meth:`enqueue`)."""
        settings = self.settings
        match status:
            case EnqueueStatus.NO_SESSION:
                return SessionExpired(token)
            case EnqueueStatus.WRONG_MODEL:
                return ModelChanged(str(payload))
            case EnqueueStatus.TOO_LONG:
                return PromptTooLong(int(payload), self._context(model))
            case EnqueueStatus.SESSION_FULL:
                return SessionFull(max_messages=settings.max_session_messages)
            case EnqueueStatus.TOO_LARGE:
                return SessionFull(held_bytes=int(payload), max_bytes=settings.max_session_bytes)
            case EnqueueStatus.TOO_MANY_PENDING:
                return TooManyPending(max_pending)
            case EnqueueStatus.OVERLOADED:
                return Overloaded()
        return Refused(_ADMISSION_REFUSALS[status.name], int(payload) / 1000)

    def _context(self, model: str) -> int:
        """The context of ``model`` (tokens) as the catalog gives it; 0: unknown."""
        offer = self.settings.offer(model)
        return offer.context_tokens if offer is not None and offer.context_tokens else 0

    def _fit(self, model: str, content: str) -> tuple[int, int, int]:
        """The figures of the scripts' context check: the context of ``model`` (tokens;
        0: not checked), the bytes of the deployment's system prompt and of ``content``."""
        return (
            self._context(model),
            len(self.settings.system_prompt.encode(errors="replace")),
            len(content.encode(errors="replace")),
        )

    def _turn_bounds(self, model: str, max_attempts: int, content: str | None) -> dict[str, int]:
        """``revise.lua``'s bounds of a turn: attempts, and for an
        edit (``content``), the context check of :meth:`_fit`."""
        context, system_bytes, content_bytes = self._fit(model, content or "")
        return {
            "max_attempts": max_attempts,
            "context": context if content is not None else 0,
            "system_bytes": system_bytes,
            "content_bytes": content_bytes,
        }

    async def revise(
        self,
        token: str,
        *,
        max_versions: int,
        max_attempts: int,
        edit: tuple[str, str] | None = None,
        model: str = "",
        limits: MessageLimits | None = None,
        traceparent: str = "",
    ) -> Revision:
        """Ask again for the reply to the session's last user message (regenerate), or
        replace its text first (edit), atomically (``revise.lua``).

        The reply it replaces, and an edit's old text, become an earlier version of the
        turn (:func:`storage.keys.versions_key`); the message is queued again under the
        same ``seq`` and id, and a ``revised`` event goes to every socket.

        Args:
            max_versions: the most earlier versions a turn keeps.
            max_attempts: the most regenerates and edits of one turn, failed or not.
            edit: ``(message id, new content)`` to edit; None to regenerate.
            model: the session's model as the caller knows it ("": the default).
            limits: the session's admission, as :meth:`enqueue`'s.
            traceparent: as :meth:`enqueue`'s.

        Raises:
            SessionExpired: no such session.
            Refused: an admission bound is reached (as :meth:`enqueue`).
            ModelChanged: the session's model is another (nothing was done).
            NotLastMessage, ReplyInProgress, TooManyVersions, TooManyAttempts,
                PromptTooLong, SessionFull, Overloaded: the :mod:`storage.refusals` of a
                turn asked again (a message waits; ``max_versions``; ``max_attempts``;
                the edit cannot fit the context; the session's bytes; the backlog).
        """
        model = model or self.settings.default_model
        limits = limits or UNLIMITED
        message_id, content = edit if edit is not None else ("", None)
        params = {
            **await self._queue_params(token, model, limits, traceparent),
            "call": uuid.uuid4().hex,  # the same call sent again changes nothing
            "message_id": message_id,
            "timestamp": utc_now(),
            "max_versions": max_versions,
            "channel": keys.channel(token),
            "events_maxlen": self.settings.events_maxlen,
            **self._turn_bounds(model, max_attempts, content),
        }
        status, revised = await self._revise(
            keys=[
                *keys.queue_keys(token, model),
                keys.events_key(token),
                *await self._client_quota_key(limits),
            ],
            args=[json.dumps(params), json.dumps(content, ensure_ascii=False) if edit else ""],
        )
        if status is not ReviseStatus.REVISED:
            bounds = (max_versions, max_attempts)
            raise self._revise_refused(status, revised, model, edit is not None, bounds)
        return Revision(int(revised[0]), str(revised[1]), str(revised[2]), str(revised[3]))

    def _revise_refused(
        self, status: ReviseStatus, payload: Any, model: str, edit: bool, bounds: tuple[int, int]
    ) -> Exception:
        """The exception of a ``revise.lua`` refusal (see :meth:`revise`); ``bounds``:
        its ``(max_versions, max_attempts)``. No token in it: errors get logged."""
        command = "edit" if edit else "regenerate"
        match status:
            case ReviseStatus.NO_SESSION:
                return SessionExpired()
            case ReviseStatus.WRONG_MODEL:
                return ModelChanged(str(payload))
            case ReviseStatus.TOO_LONG:
                return PromptTooLong(int(payload), self._context(model))
            case ReviseStatus.TOO_LARGE:
                held = int(payload)
                return SessionFull(held_bytes=held, max_bytes=self.settings.max_session_bytes)
            case ReviseStatus.NOT_LAST_MESSAGE:
                return NotLastMessage(command)
            case ReviseStatus.IN_PROGRESS:
                return ReplyInProgress(command)
            case ReviseStatus.TOO_MANY_VERSIONS:
                return TooManyVersions(bounds[0])
            case ReviseStatus.TOO_MANY_ATTEMPTS:
                return TooManyAttempts(bounds[1])
            case ReviseStatus.OVERLOADED:
                return Overloaded()
        return Refused(_ADMISSION_REFUSALS[status.name], int(payload) / 1000)

    async def close_if_lost(self, token: str, model: str = "") -> tuple[int, int]:
        """Close the session's oldest unanswered message with a ``message_lost`` error if
        its stream entry is gone and no consumer holds it (see ``lost.lua``).

        Args:
            model: the session's model ("": the default): its waiting messages are all
                in that model's streams, as a session's model changes only while none
                waits (``set_model.lua``).

        Returns:
            ``(replied_seq, seq closed)``, the latter 0 if nothing was lost.

        Raises:
            SessionExpired: no such session.
        """
        status, replied = await self._lost(
            keys=[
                keys.session_key(token),
                keys.events_key(token),
                keys.message_stream_of(token, model or self.settings.default_model),
                keys.waiting_key_of(token, model or self.settings.default_model),
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

    async def due_for_sweep(
        self, part: str, older_than_ms: int, count: int = 100, model: str = ""
    ) -> list[str]:
        """Sessions of partition ``part`` that may wait for replies of ``model`` ("": the
        default) and were not checked (or sent a message) for ``older_than_ms``; they
        count as checked now, so several workers sweeping share the work. Check each
        with :meth:`close_if_lost`.
        """
        waiting = keys.waiting_key(part, model or self.settings.default_model)
        _, tokens = await self._due(keys=[waiting], args=[older_than_ms, count])
        return [str(token) for token in tokens]
