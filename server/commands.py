"""What a chat socket's commands do: send a message, regenerate or edit the last turn,
stop a reply. Each is checked, admitted and stored, or refused with an ``error`` event;
the socket's connection (:mod:`server.connection`) reads the frames and relays events.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import WebSocket

from protocol.wire import EditCommand, ErrorCode, QueuedEvent, RegenerateCommand
from server.admission import message_limits, message_refused
from server.config import ServerSettings
from server.metrics import MESSAGES_ACCEPTED
from server.pending import PendingMessages
from server.pools import PoolWatch
from server.relay import EventRelay
from server.tracing import MessageTraces
from storage.admission import MessageLimits, Refused
from storage.connection import REDIS_DOWN
from storage.models import StoredMessage
from storage.store import ModelChanged, Refusal, Revision, Store

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SessionCommands(PendingMessages):
    """The commands of one socket of one session: the part of
    :class:`server.connection.ChatConnection` that carries them out, which sets the
    attributes they use (``websocket``, ``token``, ``session``, ``store``, ``settings``,
    ``relay``, ``pools``, ``model``, ``_limits``, ``_pending``). The messages it queues
    are kept until answered (:class:`server.pending.PendingMessages`).

    Every method raises :class:`storage.store.SessionExpired` when the session is gone
    (the connection then closes the socket), and tells the client of any other refusal.

    While tracing is on (``traces``), a command that queues a message is traced
    (:mod:`server.tracing`); off, the one test of ``traces`` per command is all it costs.
    """

    __slots__ = ("_limits", "model", "pools", "traces")

    websocket: WebSocket
    token: str
    session: str
    store: Store
    settings: ServerSettings
    relay: EventRelay
    pools: PoolWatch
    #: The session's model, as far as this socket knows: the enqueue script checks it,
    #: and a session whose model changed is told so (ModelChanged).
    model: str
    #: What admits the socket's messages (made on its first: an idle socket holds none).
    _limits: MessageLimits | None
    #: The spans of its messages while tracing is on; None while it is off.
    traces: MessageTraces | None

    async def _on_stop(self) -> None:
        """Ask for the reply being generated to stop (see ``stop.lua``)."""
        try:
            seq = await self.store.sessions.stop(self.token)
        except REDIS_DOWN as e:
            logger.warning("session=%s could not stop the reply: %s", self.session, e)
            await self.relay.send_error(ErrorCode.UNAVAILABLE, "the stop could not be sent; retry")
            return
        logger.info("session=%s seq=%d stop requested", self.session, seq)

    async def _content_refused(self, content: str) -> bool:
        """Whether ``content`` breaks a message's rules (empty, too long); if so the
        client got the error."""
        if not content.strip():
            await self.relay.send_error(ErrorCode.EMPTY_MESSAGE, "the message is empty")
            return True
        limit = self.settings.max_message_chars
        if len(content) > limit:
            await self.relay.send_error(
                ErrorCode.MESSAGE_TOO_LONG,
                f"the message has {len(content)} characters; at most {limit} are accepted",
            )
            return True
        return False

    async def _on_revise(self, command: RegenerateCommand | EditCommand) -> None:
        """Queue the last user message again, edited or not (see
        :meth:`storage.queue.Queue.revise`); the ``revised`` event reaches every socket
        of the session through its event stream. Admitted as a message is (a reply of
        the model costs the same), in the same script: a refusal spends nothing. A
        refusal is an ``error`` with ``message_id`` null: it ends no reply."""
        if self.traces is None:
            await self._revise_command(command, self._revise)
            return
        with self.traces.message(command.type):
            await self._revise_command(command, self._traced_revise)

    async def _revise_command(
        self,
        command: RegenerateCommand | EditCommand,
        revise: Callable[[tuple[str, str] | None], Awaitable[Revision | None]],
    ) -> None:
        """:meth:`_on_revise`, queueing with ``revise`` (:meth:`_revise`, or
        :meth:`_traced_revise`)."""
        edit = (command.message_id, command.content) if isinstance(command, EditCommand) else None
        if edit is not None and await self._content_refused(edit[1]):
            return
        revision = await self._told_if_refused(revise(edit))
        if revision is None:
            return
        self.track(revision.message_id, revision.entry)
        MESSAGES_ACCEPTED.inc()
        logger.info(
            "message_id=%s session=%s seq=%d %s queued",
            revision.message_id,
            self.session,
            revision.seq,
            command.type,
        )

    async def _revise(self, edit: tuple[str, str] | None, traceparent: str = "") -> Revision | None:
        """:meth:`storage.queue.Queue.revise` for the session's model as this socket knows it, once
        more if the session changed it; None if no worker serves it (the client was
        told). ``traceparent``: as :meth:`storage.queue.Queue.revise`'s.

        Raises:
            SessionExpired, ReplyInProgress, NotLastMessage, TooManyVersions,
            Overloaded, ModelChanged: as :meth:`storage.queue.Queue.revise`.
            TooManyPending: this socket keeps ``max_pending_messages`` unanswered.
        """
        await self.make_room()
        try:
            return await self._revise_once(edit, traceparent)
        except ModelChanged as changed:
            self.model = changed.model
        return await self._revise_once(edit, traceparent)

    async def _traced_revise(self, edit: tuple[str, str] | None) -> Revision | None:
        """:meth:`_revise` in a ``parley.enqueue`` span (tracing is on)."""
        assert self.traces is not None
        with self.traces.enqueue() as traceparent:
            revision = await self._revise(edit, traceparent)
        if revision is not None:
            self.traces.queued(revision.message_id, revision.seq, revision.entry)
        return revision

    async def _revise_once(self, edit: tuple[str, str] | None, traceparent: str) -> Revision | None:
        """:meth:`storage.queue.Queue.revise` for :attr:`model`; None if no worker serves it."""
        if await self._model_unserved():
            return None
        return await self.store.queue.revise(
            self.token,
            max_versions=self.settings.max_message_versions,
            max_attempts=self.settings.max_attempts_per_turn,
            edit=edit,
            model=self.model,
            limits=self.limits(),
            traceparent=traceparent,
        )

    async def _on_message(self, content: str) -> None:
        """Accept a user message: checked, admitted, stored and queued, then ``queued``;
        or refused with an error. Admission, storing and queueing are one script call
        (:meth:`storage.queue.Queue.enqueue`): a refusal spends nothing."""
        if self.traces is None:
            await self._accept(content, self._enqueue)
            return
        with self.traces.message("message"):
            await self._accept(content, self._traced_enqueue)

    async def _accept(
        self, content: str, enqueue: Callable[[str], Awaitable[StoredMessage | None]]
    ) -> None:
        """:meth:`_on_message`, queueing with ``enqueue`` (:meth:`_enqueue`, or
        :meth:`_traced_enqueue`)."""
        if await self._content_refused(content):
            return
        message = await self._told_if_refused(enqueue(content))
        if message is None:
            return
        # Kept before the client is told: from then on a loss is the client's to hear of.
        self.track(message.id, message.entry or "")
        MESSAGES_ACCEPTED.inc()
        logger.info("message_id=%s session=%s seq=%d queued", message.id, self.session, message.seq)
        await self.relay.send(
            QueuedEvent(message_id=message.id, message=message.public()).model_dump_json(
                exclude_none=True
            )
        )

    async def _traced_enqueue(self, content: str) -> StoredMessage | None:
        """:meth:`_enqueue` in a ``parley.enqueue`` span (tracing is on)."""
        assert self.traces is not None
        with self.traces.enqueue() as traceparent:
            message = await self._enqueue(content, traceparent)
        if message is not None:
            self.traces.queued(message.id, message.seq or 0, message.entry or "")
        return message

    async def _enqueue(self, content: str, traceparent: str = "") -> StoredMessage | None:
        """:meth:`storage.queue.Queue.enqueue` for the session's model as this socket knows it, once
        more if the session changed it since; None if no worker serves it (the client
        was told). ``traceparent``: as :meth:`storage.queue.Queue.enqueue`'s.

        Raises:
            SessionExpired, TooManyPending, SessionFull, Overloaded, ModelChanged,
                PromptTooLong: as :meth:`storage.queue.Queue.enqueue`; TooManyPending also when this
                socket keeps ``max_pending_messages`` unanswered.
        """
        await self.make_room()
        limit = self.settings.max_pending_messages
        if await self._model_unserved():
            return None
        try:
            return await self.store.queue.enqueue(
                self.token, content, limit, self.model, self.limits(), traceparent
            )
        except ModelChanged as changed:  # since this socket last sent one
            self.model = changed.model
        if await self._model_unserved():
            return None
        return await self.store.queue.enqueue(
            self.token, content, limit, self.model, self.limits(), traceparent
        )

    def limits(self) -> MessageLimits:
        """What admits the socket's messages (:func:`server.admission.message_limits`)."""
        if self._limits is None:
            self._limits = message_limits(self.websocket)
        return self._limits

    def _refusal(self, error: Refused) -> str:
        """The error event, as sent, of a message its admission refused."""
        event = message_refused(error, self.settings)
        return event.model_dump_json(exclude={"event_id"})

    async def _model_unserved(self) -> bool:
        """Whether no live worker serves the session's model (then the client got a
        ``model_unavailable`` error). A model found unserved is first read again from
        the session, which may have changed it.

        Raises:
            SessionExpired: the session is gone.
            redis.exceptions.RedisError: Redis is unreachable.
        """
        if await self.pools.served(self.model):
            return False
        actual = await self.store.sessions.session_model(self.token)
        if actual != self.model:
            self.model = actual
            if await self.pools.served(actual):
                return False
        await self.relay.send_error(
            ErrorCode.MODEL_UNAVAILABLE,
            f"no worker serves the model {actual!r} now: the message is not stored; "
            "choose another model (PATCH /session) or send it again later",
        )
        return True

    async def _told_if_refused(self, queueing: Awaitable[T]) -> T | None:
        """What ``queueing`` (a message, regenerate or edit queued) returns; None if it
        was refused, and then the client got its ``error``: an admission bound, a
        refusal of the store (its own code and detail), or Redis being down.

        Raises:
            SessionExpired: the session is gone.
        """
        try:
            return await queueing
        except Refused as e:
            await self.relay.send(self._refusal(e))
        except Refusal as e:
            await self.relay.send_error(e.code, e.detail)
        except REDIS_DOWN as e:
            await self._unavailable(e)
        return None

    async def _unavailable(self, error: Exception) -> None:
        """Tell the client its message could not be stored: Redis is unreachable."""
        logger.warning("session=%s could not queue a message: %s", self.session, error)
        await self.relay.send_error(
            ErrorCode.UNAVAILABLE, "the message could not be stored; send it again"
        )
