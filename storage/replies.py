"""Recording replies: an attempt begins, emits its events, and finishes, exactly once.

Each attempt at a reply begins with ``begin.lua``, which records the attempt in the
session (a fencing token, ``"<seq>:<id>"``); ``emit_batch.lua`` and ``finish.lua`` accept only
the recorded attempt, so a worker taken over while still alive can no longer interleave
its events with the new attempt's. ``finish.lua`` records the reply only if
``seq > replied_seq``: a retried or re-claimed message records nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import msgspec

from protocol.wire import MessageEntry, RestartEvent, ServerEvent
from storage import keys
from storage.admission import CLIENT_TOKENS, Limiter, limit_key
from storage.base import StoreBase
from storage.batching import BatchScript
from storage.connection import is_cluster
from storage.models import HistoryMessage, SessionWindow, StoredMessage, SummaryRecord
from storage.scripts import Arg, BatchStatus, BeginStatus, EmitStatus, FinishStatus, Script
from storage.sessions import SessionExpired

#: :meth:`Replies.begin` statuses, by their short names.
ANSWERED: Final = BeginStatus.ANSWERED
STARTED: Final = BeginStatus.STARTED
RESTARTED: Final = BeginStatus.RESTARTED
NOT_YET: Final = BeginStatus.NOT_YET
STALE: Final = BeginStatus.STALE


@dataclass(frozen=True)
class Begun:
    """What :meth:`Replies.begin` did.

    Attributes:
        status: :data:`STARTED`, :data:`RESTARTED`, :data:`ANSWERED`, :data:`NOT_YET`
            or :data:`STALE`.
        session: once the attempt began, what the reply needs of the session: its
            ``messages`` are the newest ``window`` ones (all of them if ``complete``).
        crashes: earlier attempts at this message whose worker died (or lost Redis)
            before they finished or failed.
        complete: whether ``session.messages`` is the whole history.
    """

    status: BeginStatus
    session: SessionWindow | None = None
    crashes: int = 0
    complete: bool = True


@dataclass(frozen=True)
class Emit:
    """One reply event to publish (see :meth:`Replies.emit_many`).

    Attributes:
        token: the session.
        event: the event as JSON, without ``event_id``.
        attempt: the attempt emitting (``"<seq>:<id>"``).
        first: the attempt's first event (the event stream then takes the session's TTL).
    """

    token: str
    event: str
    attempt: str
    first: bool


class NotYourTurn(Exception):
    """An earlier message of the session is still unanswered (see :meth:`Replies.finish`)."""


class Fenced(Exception):
    """Another attempt at the same reply has begun (a worker took the message over):
    this attempt may no longer emit or record anything."""


def _begun(status: BeginStatus, payload: Any, window: int) -> Begun:
    """A :class:`Begun` from ``begin.lua``'s payload ``[crashes, fields, messages]``: the
    JSON text of the session's fields and of its newest ``window + 1`` messages (all of
    them if ``window`` is 0), decoded and checked by msgspec (:class:`_BeginFields`,
    :class:`storage.models.HistoryMessage`)."""
    fields = _FIELDS.decode(payload[1])
    messages = _MESSAGES.decode(payload[2])
    complete = not window or len(messages) <= window
    summary = fields.summary[0] if fields.summary else None
    session = SessionWindow(
        messages=messages if complete else messages[-window:],
        stop_seq=fields.stop_seq[0] if fields.stop_seq else 0,
        model=fields.model[0] if fields.model else "",
        system_prompt=fields.system_prompt[0] if fields.system_prompt else "",
        summary=SummaryRecord.model_validate(summary) if summary is not None else None,
    )
    return Begun(status, session, crashes=int(payload[0]), complete=complete)


class _BeginFields(msgspec.Struct):
    """The session's fields as ``begin.lua`` reads them: each JSONPath's matches."""

    stop_seq: list[int] = msgspec.field(name="$.stop_seq", default_factory=list)
    model: list[str] = msgspec.field(name="$.model", default_factory=list)
    system_prompt: list[str] = msgspec.field(name="$.system_prompt", default_factory=list)
    summary: list[dict[str, Any] | None] = msgspec.field(name="$.summary", default_factory=list)


_FIELDS = msgspec.json.Decoder(_BeginFields)
_MESSAGES = msgspec.json.Decoder(list[HistoryMessage])


class Replies(StoreBase):
    """Attempts at replies (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _begin(self) -> BatchScript[BeginStatus]:
        return BatchScript(self.redis, "begin.lua", BeginStatus)

    @cached_property
    def _emit_batch(self) -> Script[BatchStatus]:
        return Script(self.redis, "emit_batch.lua", BatchStatus)

    @cached_property
    def _finish(self) -> BatchScript[FinishStatus]:
        return BatchScript(self.redis, "finish.lua", FinishStatus, wait=self.wait_replicas)

    async def begin(
        self, entry: MessageEntry, attempt: str, *, window: int = 0, entry_id: str = ""
    ) -> Begun:
        """If it is ``entry``'s turn, make ``attempt`` the one generating its reply.

        The turn check, the fence and the session read are one script (one round trip):
        older attempts at the message can no longer emit or finish, and if one of them
        had begun, a ``restart`` event tells the session's clients to discard its
        partial text; if that attempt neither finished nor failed (its worker died or
        lost Redis), it counts as a crash (``Begun.crashes``). An entry taken over
        while it waited its turn had no attempt: nothing is counted.

        Args:
            attempt: ``"<seq>:<unique id>"``, new for every attempt.
            window: return only the newest ``window`` messages of the history (0: all).
            entry_id: the stream entry the attempt answers ("": not checked); an entry
                other than the one the message is queued under now (a regenerate or
                edit queued it again) begins nothing.

        Returns:
            ``Begun.status``: :data:`STARTED` (with ``session``), :data:`RESTARTED`
            (a ``restart`` was emitted; with ``session``), :data:`ANSWERED` (nothing
            changed), :data:`NOT_YET` (an earlier message is unanswered; nothing
            changed) or :data:`STALE` (``entry_id`` is not the message's entry now:
            nothing changed; the entry is to be acknowledged).

        Raises:
            SessionExpired: the session no longer exists.
        """
        restart = RestartEvent(message_id=entry.message_id)
        params = {
            "seq": entry.seq,
            "attempt": attempt,
            "restart": restart.model_dump_json(exclude_none=True),
            "channel": keys.channel(entry.token),
            "events_maxlen": self.settings.events_maxlen,
            "ttl": self.settings.session_ttl_seconds,
            "window": window,
            "entry": entry_id,
        }
        status, payload = await self._begin(
            keys=[keys.session_key(entry.token), keys.events_key(entry.token)],
            args=[json.dumps(params)],
        )
        if status is BeginStatus.NO_SESSION:
            raise SessionExpired(entry.token)
        if status in (BeginStatus.ANSWERED, BeginStatus.NOT_YET, BeginStatus.STALE):
            return Begun(status)
        return _begun(status, payload, window)

    async def emit(
        self, token: str, event: ServerEvent, attempt: str, *, first: bool = True
    ) -> str | None:
        """Publish a reply event to the session's sockets, durably (one
        :meth:`emit_many` of one event).

        Args:
            attempt: the attempt emitting (see :meth:`begin`).
            first: the attempt's first event: the session's event stream is given the
                session's TTL (a command more); later events of the attempt skip it,
                and :meth:`finish` gives it again.

        Returns:
            The event id, or None if the session no longer exists.

        Raises:
            Fenced: another attempt has begun since.
        """
        (outcome,) = await self.emit_many(
            [Emit(token, event.model_dump_json(exclude_none=True), attempt, first)]
        )
        if isinstance(outcome, Fenced):
            raise outcome
        return outcome

    async def emit_many(self, emits: Sequence[Emit]) -> list[str | Fenced | None]:
        """Publish reply events of sessions of one partition in one call (see
        :meth:`emit`), in order.

        Args:
            emits: the events; on a Redis Cluster, every token of the same partition
                (:func:`keys.partition`: one slot).

        Returns:
            For each, its event id; None if its session no longer exists; a
            :class:`Fenced` if another attempt has begun since (returned, not raised:
            the others were emitted).

        Raises:
            redis.exceptions.RedisError: the call failed (none was emitted).
        """
        if is_cluster(self.redis):
            assert len({keys.partition(e.token) for e in emits}) <= 1, "one partition a call"
        script_keys: list[str] = []
        args: list[Arg] = [self.settings.events_maxlen, self.settings.session_ttl_seconds * 1000]
        for e in emits:
            script_keys += [keys.session_key(e.token), keys.events_key(e.token)]
            args += [e.event, keys.channel(e.token), e.attempt, "1" if e.first else "0"]
        _, outcomes = await self._emit_batch(keys=script_keys, args=args)
        results: list[str | Fenced | None] = []
        for e, (status, event_id) in zip(emits, outcomes, strict=True):
            if status == EmitStatus.FENCED:
                results.append(Fenced(e.attempt))
            else:
                results.append(str(event_id) if status == EmitStatus.EMITTED else None)
        return results

    async def finish(
        self,
        entry: MessageEntry,
        reply: StoredMessage | None,
        event: ServerEvent,
        attempt: str,
        *,
        ack: tuple[str, str] | None = None,
        tail: Sequence[ServerEvent] = (),
        cost: int = 0,
    ) -> str | None:
        """Record the reply of a user message (None: it failed), emit ``event``, charge
        what it cost and acknowledge its entry, once: one script call (``finish.lua``).

        Args:
            attempt: the attempt finishing (see :meth:`begin`); ``""``: whatever attempt
                runs, once it is its turn, fencing them all (an entry given up).
            ack: ``(stream, entry id)`` of the message's stream entry, acknowledged in
                the same script once the message is closed or its session gone (not
                with ``Fenced`` or ``NotYourTurn``). The entry is also fenced: one that
                is not the one the message is queued under now closes nothing (acked).
            tail: events emitted just before ``event`` (the rest of the reply's text).
            cost: model tokens the reply's requests cost, charged to the session's
                quota and its client's (``entry.client``; on a Redis Cluster, in another
                slot, by a call of its own) whatever the outcome but ``NotYourTurn``.

        Returns:
            The closing event's id; None if the reply was already recorded or the entry
            is stale (nothing changed).

        Raises:
            SessionExpired: the session no longer exists.
            Fenced: another attempt has begun since.
            NotYourTurn: (``attempt`` empty) an earlier message is still unanswered.
        """
        client = limit_key(CLIENT_TOKENS, entry.client) if entry.client and cost else ""
        in_script = bool(client) and not is_cluster(self.redis)
        params = self._finish_params(entry, attempt, ack, cost, charge_client=in_script)
        script_keys = [keys.session_key(entry.token), keys.events_key(entry.token)]
        script_keys += [ack[0]] if ack else []
        script_keys += [client] if in_script else []
        status, event_id = await self._finish(
            keys=script_keys,
            args=[
                json.dumps(params),
                reply.model_dump_json(exclude={"versions"}) if reply is not None else "",
                *(e.model_dump_json(exclude_none=True) for e in (*tail, event)),
            ],
        )
        if client and not in_script and status is not FinishStatus.NOT_YOUR_TURN:
            await Limiter(self.redis).charge(
                CLIENT_TOKENS, entry.client, cost, self.settings.quota_period_s
            )
        if status is FinishStatus.NO_SESSION:
            raise SessionExpired(entry.token)
        if status is FinishStatus.FENCED:
            raise Fenced(attempt)
        if status is FinishStatus.NOT_YOUR_TURN:
            raise NotYourTurn(entry.token)
        return str(event_id) if status is FinishStatus.FINISHED else None

    def _finish_params(
        self,
        entry: MessageEntry,
        attempt: str,
        ack: tuple[str, str] | None,
        cost: int,
        *,
        charge_client: bool,
    ) -> dict[str, Any]:
        """``finish.lua``'s ``ARGV[1]`` object (see :meth:`finish`)."""
        return {
            "seq": entry.seq,
            "attempt": attempt,
            "channel": keys.channel(entry.token),
            "events_maxlen": self.settings.events_maxlen,
            "ttl": self.settings.session_ttl_seconds,
            "group": keys.CONSUMER_GROUP,
            "entry": ack[1] if ack else "",
            "ack": ack is not None,
            "charge_client": charge_client,
            "units": cost,
            "period_ms": max(1, round(self.settings.quota_period_s * 1000)),
        }
