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

from protocol.wire import ErrorCode, ErrorEvent, utc_now
from storage import keys
from storage.models import StoredMessage
from storage.scripts import Arg, DueStatus, EnqueueStatus, LostStatus, ReviseStatus, Script
from storage.sessions import SessionExpired
from storage.streams import Streams


class TooManyPending(Exception):
    """The session already has the maximum number of messages waiting for a reply."""


class SessionFull(Exception):
    """The session holds ``max_session_messages`` user messages, or would hold more than
    ``max_session_bytes`` bytes with this message or revision: a new session must be
    started to go on.

    Attributes:
        held_bytes: the bytes the session holds (see ``session_size`` in
            ``library.lua``) when the bound of bytes refused it; None when the bound of
            messages did.
    """

    def __init__(self, held_bytes: int | None = None) -> None:
        super().__init__(
            "the session holds its most messages"
            if held_bytes is None
            else f"the session holds {held_bytes} bytes"
        )
        self.held_bytes = held_bytes


class Overloaded(Exception):
    """The session's partition already has ``max_backlog`` messages that the workers
    have not finished: the message is refused rather than accepted and left waiting."""


class ModelChanged(Exception):
    """The session's model is not the one the caller assumed (it was changed): nothing
    was done; do it again with :attr:`model`."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the session's model is {model!r}")
        self.model = model


class ReplyInProgress(Exception):
    """A reply of the session is being generated, or messages wait for one: a turn can
    be regenerated or edited only once every message is answered."""


class NotLastMessage(Exception):
    """Only the session's last user message can be edited or have its reply regenerated
    (and a session without messages has none)."""


class TooManyVersions(Exception):
    """The turn already keeps ``max_versions`` earlier versions."""


class TooManyAttempts(Exception):
    """The turn was regenerated or edited ``max_attempts`` times already (failed
    replies included): every attempt asks the model, so their number is bounded."""


class PromptTooLong(Exception):
    """The session's system prompt and the message cannot fit the model's context
    (``ModelOffer.context_tokens``), counted as admission counts them.

    Attributes:
        tokens: the prompt's tokens as counted.
        context: the model's context (tokens).
    """

    def __init__(self, tokens: int, context: int) -> None:
        super().__init__(f"a prompt of about {tokens} tokens; the model's context is {context}")
        self.tokens = tokens
        self.context = context


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


_REFUSALS: dict[EnqueueStatus, type[Exception]] = {
    EnqueueStatus.NO_SESSION: SessionExpired,
    EnqueueStatus.TOO_MANY_PENDING: TooManyPending,
    EnqueueStatus.OVERLOADED: Overloaded,
}

_REVISE_REFUSALS: dict[ReviseStatus, type[Exception]] = {
    ReviseStatus.NO_SESSION: SessionExpired,
    ReviseStatus.NOT_LAST_MESSAGE: NotLastMessage,
    ReviseStatus.IN_PROGRESS: ReplyInProgress,
    ReviseStatus.TOO_MANY_VERSIONS: TooManyVersions,
    ReviseStatus.TOO_MANY_ATTEMPTS: TooManyAttempts,
    ReviseStatus.OVERLOADED: Overloaded,
}

_LOST = ErrorEvent(
    code=ErrorCode.MESSAGE_LOST,
    detail="the message was removed from the queue before it was answered; please send it again",
)


def _queue_keys(token: str, model: str) -> list[str]:
    """The keys of queueing a message of session ``token`` for ``model``: the session,
    the model's message stream and waiting set in the session's partition, and the
    session's versions (whose TTL is the session's)."""
    return [
        keys.session_key(token),
        keys.message_stream_of(token, model),
        keys.waiting_key_of(token, model),
        keys.versions_key(token),
    ]


class Queue(Streams):
    """User messages in and lost ones out (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _enqueue(self) -> Script[EnqueueStatus]:
        return Script(self.redis, "enqueue.lua", EnqueueStatus, trims=True, wait=self.wait_replicas)

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
        self, token: str, content: str, max_pending: int, model: str = ""
    ) -> StoredMessage:
        """Record a user message in history and queue it for a reply, atomically, in
        the message stream of the session's model.

        The partition's message stream is trimmed in the same step, never removing an
        entry the workers have not acknowledged.

        Args:
            model: the session's model as the caller knows it ("": the catalog's
                default); checked in the same step.

        Returns:
            The stored message, with its ``seq`` and its stream entry id (``entry``).

        Raises:
            SessionExpired: no such session.
            SessionFull: the session holds ``max_session_messages`` messages, or would
                hold more than ``max_session_bytes`` bytes with this one.
            TooManyPending: ``max_pending`` messages already wait for a reply.
            Overloaded: the partition's backlog is at ``max_backlog``.
            ModelChanged: the session's model is another (nothing was done).
            PromptTooLong: the session's system prompt and ``content`` cannot fit the
                model's context (when the catalog gives it).
        """
        model = model or self.settings.default_model
        message = StoredMessage(
            id=str(uuid.uuid4()), role="user", content=content, timestamp=utc_now()
        )
        body = message.model_dump_json(include={"id", "role", "content", "timestamp"})
        status, queued = await self._enqueue(
            keys=_queue_keys(token, model),
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
                model,
                self.settings.default_model,
                self.settings.max_session_bytes,
                *self._fit_args(model, content),
            ],
        )
        if status is not EnqueueStatus.QUEUED:
            raise self._refused(status, queued, token, model)
        message.seq, message.entry = int(queued[0]), str(queued[1])
        return message

    def _refused(self, status: EnqueueStatus, payload: Any, token: str, model: str) -> Exception:
        """The exception of an ``enqueue.lua`` refusal (see :meth:`enqueue`)."""
        if status is EnqueueStatus.WRONG_MODEL:
            return ModelChanged(str(payload))
        if status is EnqueueStatus.TOO_LONG:
            return PromptTooLong(int(payload), self._context(model))
        if status is EnqueueStatus.SESSION_FULL:
            return SessionFull()
        if status is EnqueueStatus.TOO_LARGE:
            return SessionFull(int(payload))
        return _REFUSALS[status](token)

    def _context(self, model: str) -> int:
        """The context of ``model`` (tokens) as the catalog gives it; 0: unknown."""
        offer = self.settings.offer(model)
        return offer.context_tokens if offer is not None and offer.context_tokens else 0

    def _fit_args(self, model: str, content: str) -> list[Arg]:
        """The arguments of ``enqueue.lua``'s context check: the context of ``model``
        (tokens; 0: not checked), the bytes of the deployment's system prompt and of
        ``content``."""
        return [*self._fit(model, content)]

    def _fit(self, model: str, content: str) -> tuple[int, int, int]:
        """See :meth:`_fit_args`."""
        return (
            self._context(model),
            len(self.settings.system_prompt.encode(errors="replace")),
            len(content.encode(errors="replace")),
        )

    def _turn_bounds(self, model: str, max_attempts: int, content: str | None) -> dict[str, int]:
        """``revise.lua``'s bounds of a turn (its ``ARGV[16]``): attempts, and for an
        edit (``content``), the context check of :meth:`_fit_args`."""
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
    ) -> Revision:
        """Ask again for the reply to the session's last user message (regenerate), or
        replace its text first (edit), atomically (``revise.lua``).

        The reply it replaces, and an edit's old text, become an earlier version of the
        turn, kept beside the session (:func:`storage.keys.versions_key`); the message is
        queued again under the same ``seq`` and id, a ``revised`` event with that version
        goes to every socket, and the new reply is recorded exactly once.

        Args:
            max_versions: the most earlier versions a turn keeps.
            max_attempts: the most regenerates and edits of one turn, failed or not.
            edit: ``(message id, new content)`` to edit; None to regenerate.
            model: the session's model as the caller knows it ("": the default).

        Raises:
            SessionExpired: no such session.
            NotLastMessage: not the session's last user message (or it has none).
            ReplyInProgress: a message of the session waits for its reply.
            TooManyVersions: the turn keeps ``max_versions`` earlier versions.
            TooManyAttempts: the turn was regenerated or edited ``max_attempts`` times.
            PromptTooLong: the edit and the system prompt cannot fit the model's context.
            SessionFull: the session would hold more than ``max_session_bytes`` bytes.
            Overloaded: the partition's backlog is at ``max_backlog``.
            ModelChanged: the session's model is another (nothing was done).
        """
        model = model or self.settings.default_model
        message_id, content = edit if edit is not None else ("", None)
        status, revised = await self._revise(
            keys=[*_queue_keys(token, model), keys.events_key(token)],
            args=[
                message_id,
                json.dumps(content, ensure_ascii=False) if content is not None else "",
                utc_now(),
                max_versions,
                token,
                self.settings.session_ttl_seconds,
                self.settings.message_stream_maxlen,
                self.settings.max_backlog,
                keys.CONSUMER_GROUP,
                await self.trim_mode(),
                keys.channel(token),
                self.settings.events_maxlen,
                model,
                self.settings.default_model,
                self.settings.max_session_bytes,
                json.dumps(self._turn_bounds(model, max_attempts, content)),
            ],
        )
        if status is not ReviseStatus.REVISED:
            raise self._revise_refused(status, revised, model)
        return Revision(int(revised[0]), str(revised[1]), str(revised[2]), str(revised[3]))

    def _revise_refused(self, status: ReviseStatus, payload: Any, model: str) -> Exception:
        """The exception of a ``revise.lua`` refusal (see :meth:`revise`); no token in
        it: errors get logged."""
        if status is ReviseStatus.WRONG_MODEL:
            return ModelChanged(str(payload))
        if status is ReviseStatus.TOO_LONG:
            return PromptTooLong(int(payload), self._context(model))
        if status is ReviseStatus.TOO_LARGE:
            return SessionFull(int(payload))
        return _REVISE_REFUSALS[status]()

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
