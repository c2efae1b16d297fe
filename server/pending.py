"""The messages one socket was told ``queued`` for and has not seen answered, and the
check that tells it of those a Redis failover made vanish.

Redis replicates asynchronously: a failover can promote a replica that never got the
primary's last writes. ``enqueue.lua`` writes a message to history and its entry to the
partition's message stream in one script, so such a loss takes both, and rolls the
session's ``seq`` back: nothing is left in Redis for the lost-entry sweep (``lost.lua``)
to find, and the client that was told ``queued`` would wait for its reply for good. Only
the socket that said ``queued`` knows the message existed.

So each socket keeps the id of every message it was told ``queued`` for (and of each
``regenerate`` or ``edit`` it sent: they reuse the message's id), with the stream entry
history gave it, until that message's closing event (``done``, or ``error`` naming it)
passes through the socket. While it keeps any, it looks at them in history
(:meth:`storage.sessions.Sessions.message_marks`, one ``JSON.GET``) whenever its hub
subscription resyncs (after each reconnect of the hub's Pub/Sub connection, which every
failover causes) and at each of its expiry checks (at most 60 s apart), and when it is
full. For each message:

- not in history: lost. The socket gets ``error`` ``message_lost`` for it and forgets it;
- in history under an older entry than the one kept: this socket's regenerate or edit
  was lost, and history holds the turn as it stood before. ``message_lost`` too;
- answered, or revised since (history has a newer entry: its turn was answered, since a
  turn is revised only then): forgotten in silence, its closing events are in the
  session's event stream;
- otherwise it waits on.

What this does not cover: another socket of the same session that did not send the
message never knew of it and is told nothing (its history, ``GET /refresh_token``, shows
the message gone); a socket closed before the check leaves its client to find the
message absent from history. An idle socket holds nothing (None) and reads nothing.
"""

from __future__ import annotations

import logging
from enum import Enum

from protocol.event_ids import stream_id_key
from protocol.wire import ErrorCode, ErrorEvent, replies_ended
from server.config import ServerSettings
from server.metrics import CLIENT_ERRORS
from server.relay import EventRelay
from storage.store import MessageMark, Store, TooManyPending

logger = logging.getLogger(__name__)

LOST_DETAIL = (
    "the message was lost in a failover of Parley's store before it was answered (for a "
    "regenerate or edit: the turn stands as it was before it); send it again"
)


class _Verdict(Enum):
    WAITS = "waits"
    CLOSED = "closed"
    LOST = "lost"


def _verdict(entry: str, mark: MessageMark | None) -> _Verdict:
    """What history says of a message this socket keeps under stream entry ``entry``."""
    if mark is None:
        return _Verdict.LOST
    if mark.entry and entry and mark.entry != entry:
        # Entry ids of one Redis grow with time: the newer attempt is the later one.
        newer = stream_id_key(entry) > stream_id_key(mark.entry)
        return _Verdict.LOST if newer else _Verdict.CLOSED
    return _Verdict.CLOSED if mark.answered else _Verdict.WAITS


#: What a payload that may end a reply holds (see :meth:`PendingMessages.forget_answered`).
_DONE, _ERROR = '"type":"done"', '"type":"error"'


class PendingMessages:
    """The messages of one socket waiting for their closing event (see the module):
    the part of :class:`server.connection.ChatConnection` that keeps them, which sets
    the attributes used here (``token``, ``session``, ``store``, ``settings``,
    ``relay``) and ``_pending`` (None).
    """

    __slots__ = ("_pending",)

    token: str
    session: str
    store: Store
    settings: ServerSettings
    relay: EventRelay
    #: Message id -> its stream entry when this socket queued it; None while empty.
    _pending: dict[str, str] | None

    def track(self, message_id: str, entry: str) -> None:
        """Keep ``message_id``, just queued (or queued again) under ``entry``."""
        if self._pending is None:
            self._pending = {}
        self._pending[message_id] = entry

    def forget_answered(self, payload: str) -> None:
        """Forget the messages whose replies the hub's ``payload`` ends. Only a payload
        that names a ``done`` or an ``error`` is parsed (the scripts write compact JSON):
        a reply's many ``token`` events cost a substring search each."""
        if self._pending is None or not (_DONE in payload or _ERROR in payload):
            return
        for message_id in replies_ended(payload):
            self._forget(message_id)

    async def make_room(self) -> None:
        """Check, before queueing, that fewer than ``max_pending_messages`` wait; when
        that many are kept, history is looked at first (:meth:`check_pending`).

        Raises:
            TooManyPending: that many wait still.
            SessionExpired: the session is gone.
            redis.exceptions.RedisError, OSError: Redis could not be read.
        """
        limit = self.settings.max_pending_messages
        if self._pending is not None and len(self._pending) >= limit:
            await self.check_pending()
            if self._pending is not None and len(self._pending) >= limit:
                raise TooManyPending(limit)

    async def check_pending(self) -> None:
        """Look at the messages kept in history, once; tell the client of each one lost
        (``message_lost``) and forget those lost or answered. Does nothing while none is
        kept.

        Raises:
            SessionExpired: the session is gone.
            redis.exceptions.RedisError, OSError: Redis could not be read.
        """
        if not self._pending:
            return
        # Only those queued before the read: one queued meanwhile may be newer than it.
        kept = dict(self._pending)
        marks = await self.store.sessions.message_marks(self.token, kept)
        for message_id, entry in kept.items():
            verdict = _verdict(entry, marks.get(message_id))
            if verdict is _Verdict.WAITS or self._pending is None:
                continue
            if self._pending.get(message_id) != entry:
                continue  # closed, or queued again by this socket, during the read
            self._forget(message_id)
            if verdict is _Verdict.LOST:
                await self._tell_lost(message_id)

    def _forget(self, message_id: str) -> None:
        if self._pending is not None:
            self._pending.pop(message_id, None)
            if not self._pending:
                self._pending = None  # an idle socket holds nothing

    async def _tell_lost(self, message_id: str) -> None:
        logger.warning(
            "message_id=%s session=%s lost: gone from history before it was answered",
            message_id,
            self.session,
        )
        CLIENT_ERRORS.labels(ErrorCode.MESSAGE_LOST.value).inc()
        event = ErrorEvent(message_id=message_id, code=ErrorCode.MESSAGE_LOST, detail=LOST_DETAIL)
        await self.relay.send(event.model_dump_json(exclude={"event_id"}))
