"""Parley's reads and atomic writes in Redis, shared by the server and the worker.

The writes that must be atomic and idempotent are Lua scripts over the RedisJSON and
stream commands (``enqueue``, ``begin``, ``emit``, ``finish``, ``stop``, ``lost``,
``fail``, ``due``, ``trim_stream``: ``.lua`` files beside this module, ``trim.lua``
prepended to those that trim); redis-om's models cannot express them. Each script
touches one session's keys only plus its partition's message stream and waiting set:
one hash slot (:mod:`storage.keys`).

Event payloads on a session's channel are the event's JSON object with
``"event_id"`` as its first member: :func:`with_event_id` builds that form and
:func:`event_id_of` reads it back without parsing the whole JSON.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from aredis_om import Migrator
from redis.asyncio import Redis
from redis.exceptions import (  # type: ignore[attr-defined]  # stale stubs: OutOfMemoryError
    OutOfMemoryError,
    ResponseError,
)

from protocol.event_ids import with_event_id
from protocol.wire import ErrorCode, ErrorEvent, MessageEntry, RestartEvent, ServerEvent, utc_now
from runtime.config import CommonSettings
from storage import keys
from storage.connection import is_cluster
from storage.models import Session, StoredMessage


class SessionExpired(Exception):
    """The session does not exist (never did, or its TTL ran out)."""


class TooManyPending(Exception):
    """The session already has the maximum number of messages waiting for a reply."""


class SessionFull(Exception):
    """The session holds ``max_session_messages`` user messages: a new session must be
    started to go on."""


class Overloaded(Exception):
    """The session's partition already has ``max_backlog`` messages that the workers
    have not finished: the message is refused rather than accepted and left waiting."""


#: :meth:`Store.begin` statuses.
ANSWERED, STARTED, RESTARTED, NOT_YET = 0, 1, 2, 3


#: Trim strategies (:meth:`Store.trim_mode`): XTRIM's ``ACKED`` (Redis >= 8.2), else by
#: ``MINID`` below the oldest entry the consumer group still needs.
TRIM_ACKED, TRIM_MINID = "acked", "minid"


@dataclass(frozen=True)
class Begun:
    """What :meth:`Store.begin` did.

    Attributes:
        status: :data:`STARTED`, :data:`RESTARTED`, :data:`ANSWERED` or :data:`NOT_YET`.
        session: once the attempt began, the session, whose ``messages`` are the newest
            ``window`` ones (all of them if ``complete``).
        crashes: earlier attempts at this message whose worker died (or lost Redis)
            before they finished or failed.
        complete: whether ``session.messages`` is the whole history.
    """

    status: int
    session: Session | None = None
    crashes: int = 0
    complete: bool = True


class NotYourTurn(Exception):
    """An earlier message of the session is still unanswered (see :meth:`Store.finish`)."""


class Fenced(Exception):
    """Another attempt at the same reply has begun (a worker took the message over):
    this attempt may no longer emit or record anything."""


def _script(name: str) -> str:
    return files("storage").joinpath(name).read_text(encoding="utf-8")


class Store:
    """Sessions, the message stream and session events in one Redis.

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        self.redis = redis
        self.settings = settings
        # redis-om binds a model to one connection per process; this process's is ours.
        Session._meta.database = redis
        trim = _script("trim.lua")
        self._enqueue = redis.register_script(trim + _script("enqueue.lua"))
        self._trim = redis.register_script(trim + _script("trim_stream.lua"))
        self._lost = redis.register_script(_script("lost.lua"))
        self._fail = redis.register_script(_script("fail.lua"))
        self._due = redis.register_script(_script("due.lua"))
        self._emit = redis.register_script(_script("emit.lua"))
        self._finish = redis.register_script(_script("finish.lua"))
        self._stop = redis.register_script(_script("stop.lua"))
        self._begin = redis.register_script(_script("begin.lua"))
        self._trim_mode: str | None = None

    async def migrate(self) -> None:
        """Create the RediSearch index of sessions (redis-om's Migrator) if it is missing.

        Not on a Redis Cluster: RediSearch without its coordinator indexes one shard
        only, and redis-om's Migrator needs a single-node client. Parley itself reads
        sessions by key and never searches the index.
        """
        if is_cluster(self.redis):
            return
        await Migrator().run()  # type: ignore[no-untyped-call]

    async def ensure_group(self) -> None:
        """Create the workers' consumer group (and the stream) of every partition if missing.

        A group starts at id 0 so messages queued before any worker ever ran are read.
        A Redis out of memory refuses even to say that a group exists: then it is
        asked (``XINFO GROUPS``), so a process can start while memory is full.

        Raises:
            redis.exceptions.ResponseError: any error but ``BUSYGROUP`` (already exists).
        """
        for stream in keys.MESSAGE_STREAMS:
            try:
                await self.redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except OutOfMemoryError:
                if not await self._group_of(stream):
                    raise
            except ResponseError as e:
                if not str(e).startswith("BUSYGROUP"):
                    raise
        await self.trim_mode()

    async def trim_mode(self) -> str:
        """How this Redis trims message streams without removing unacknowledged entries:
        :data:`TRIM_ACKED` where ``XTRIM`` knows the ``ACKED`` strategy (Redis >= 8.2),
        else :data:`TRIM_MINID`. Asked once, then remembered.

        Raises:
            redis.exceptions.ResponseError: any error but the syntax error of a Redis
                without ``ACKED``.
        """
        if self._trim_mode is None:
            stream = keys.MESSAGE_STREAMS[0]
            try:
                await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "XTRIM", stream, "MAXLEN", "~", self.settings.message_stream_maxlen, "ACKED"
                )
            except ResponseError as e:
                if "syntax" not in str(e).lower():
                    raise
                self._trim_mode = TRIM_MINID
            else:
                self._trim_mode = TRIM_ACKED
        return self._trim_mode

    async def trim(self, stream: str) -> int:
        """Trim ``stream`` to about ``message_stream_maxlen`` acknowledged entries,
        removing only entries the consumer group has acknowledged (see ``trim.lua``).

        Returns:
            How many entries were removed.
        """
        mode = await self.trim_mode()
        return int(
            await self._trim(
                keys=[stream],
                args=[keys.CONSUMER_GROUP, self.settings.message_stream_maxlen, mode],
            )
        )

    async def group_exists(self) -> bool:
        """Whether every partition's message stream and its consumer group exist."""
        for stream in keys.MESSAGE_STREAMS:
            if not await self._group_of(stream):
                return False
        return True

    async def _group_of(self, stream: str) -> bool:
        try:
            groups = await self.redis.xinfo_groups(stream)  # type: ignore[no-untyped-call]
        except ResponseError:
            return False
        return any(g["name"] == keys.CONSUMER_GROUP for g in groups)

    async def pending_count(self) -> int:
        """How many entries, over every partition, are read but not yet acked."""
        total = 0
        for stream in keys.MESSAGE_STREAMS:
            summary = await self.redis.xpending(stream, keys.CONSUMER_GROUP)  # type: ignore[no-untyped-call]
            total += int(summary["pending"])
        return total

    async def create_session(self, name: str) -> Session:
        """Create a session with a new UUID4 token; it lives ``session_ttl_seconds``."""
        session = Session(token=str(uuid.uuid4()), name=name, session_start=utc_now())
        await session.save()
        await session.expire(self.settings.session_ttl_seconds)
        return session

    async def get_session(self, token: str, *, touch: bool = True) -> Session:
        """Load a session; with ``touch``, renew its TTL (and its event stream's).

        Raises:
            SessionExpired: no such session.
        """
        # JSON.GET and validation, as redis-om's Session.get does, without its walks over
        # the document for datetime and bytes fields (Session has none): a third of
        # the time for a session with 40 messages (bench: the worker reads one a reply).
        document = await self.redis.json().get(keys.session_key(token))
        if document is None:
            raise SessionExpired(token)
        session = Session.model_validate(document)
        if touch:
            await self.touch(token)
        return session

    async def touch(self, token: str) -> bool:
        """Renew a session's TTL; False if it no longer exists."""
        ttl = self.settings.session_ttl_seconds
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(keys.session_key(token), ttl)
            pipe.expire(keys.events_key(token), ttl)
            alive, _ = await pipe.execute()
        return bool(alive)

    async def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            redis.RedisError, OSError: it does not.
        """
        await self.redis.ping()

    async def session_ttl_ms(self, token: str) -> int:
        """The session's remaining lifetime (ms); -2 if it does not exist, -1 if no TTL."""
        return int(await self.redis.pttl(keys.session_key(token)))

    async def exists(self, token: str) -> bool:
        """Whether the session still exists."""
        return bool(await self.redis.exists(keys.session_key(token)))

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
        result = await self._enqueue(
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
        refusals: dict[int, type[Exception]] = {
            -1: SessionExpired,
            -2: TooManyPending,
            -3: SessionFull,
            -4: Overloaded,
        }
        if (refusal := refusals.get(int(result[0]))) is not None:
            raise refusal(token)
        message.seq = int(result[0])
        message.entry = str(result[1])
        return message

    async def begin(self, entry: MessageEntry, attempt: str, *, window: int = 0) -> Begun:
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

        Returns:
            ``Begun.status``: :data:`STARTED` (with ``session``), :data:`RESTARTED`
            (a ``restart`` was emitted; with ``session``), :data:`ANSWERED` (nothing
            changed) or :data:`NOT_YET` (an earlier message is unanswered; nothing
            changed).

        Raises:
            SessionExpired: the session no longer exists.
        """
        restart = RestartEvent(message_id=entry.message_id)
        result = await self._begin(
            keys=[keys.session_key(entry.token), keys.events_key(entry.token)],
            args=[
                entry.seq,
                attempt,
                restart.model_dump_json(exclude_none=True),
                keys.channel(entry.token),
                self.settings.events_maxlen,
                window,
            ],
        )
        status = int(result[0])
        if status == -1:
            raise SessionExpired(entry.token)
        if len(result) == 1:
            return Begun(status)
        fields = json.loads(result[2])
        messages = json.loads(result[3])
        session = Session.model_validate(
            {name.lstrip("."): value for name, value in fields.items()} | {"messages": messages}
        )
        return Begun(
            status, session, crashes=int(result[1]), complete=len(messages) == int(result[4])
        )

    async def emit(self, token: str, event: ServerEvent, attempt: str) -> str | None:
        """Publish a reply event to the session's sockets, durably.

        Args:
            attempt: the attempt emitting (see :meth:`begin`).

        Returns:
            The event id, or None if the session no longer exists.

        Raises:
            Fenced: another attempt has begun since.
        """
        event_id = await self._emit(
            keys=[keys.session_key(token), keys.events_key(token)],
            args=[
                event.model_dump_json(exclude_none=True),
                keys.channel(token),
                self.settings.events_maxlen,
                attempt,
            ],
        )
        if event_id == 0:
            raise Fenced(attempt)
        return str(event_id) if event_id else None

    async def finish(
        self,
        entry: MessageEntry,
        reply: StoredMessage | None,
        event: ServerEvent,
        attempt: str,
    ) -> str | None:
        """Record the reply of a user message (None: it failed) and emit ``event``, once.

        Args:
            attempt: the attempt finishing (see :meth:`begin`); ``""`` closes the
                message whatever attempt runs, once it is its turn, and fences them all
                (for an entry given up before any attempt could begin).

        Returns:
            The event id; None if the reply was already recorded (nothing changed).

        Raises:
            SessionExpired: the session no longer exists.
            Fenced: another attempt has begun since.
            NotYourTurn: (``attempt`` empty) an earlier message is still unanswered.
        """
        result = await self._finish(
            keys=[keys.session_key(entry.token), keys.events_key(entry.token)],
            args=[
                entry.seq,
                reply.model_dump_json() if reply is not None else "",
                event.model_dump_json(exclude_none=True),
                keys.channel(entry.token),
                self.settings.events_maxlen,
                attempt,
            ],
        )
        if result == -1:
            raise SessionExpired(entry.token)
        if result == -2:
            raise Fenced(attempt)
        if result == -3:
            raise NotYourTurn(entry.token)
        return None if result == 0 else str(result)

    async def close_if_lost(self, token: str) -> tuple[int, int]:
        """Close the session's oldest unanswered message with a ``message_lost`` error if
        its stream entry is gone and no consumer holds it (see ``lost.lua``).

        Returns:
            ``(replied_seq, seq closed)``, the latter 0 if nothing was lost.

        Raises:
            SessionExpired: no such session.
        """
        event = ErrorEvent(
            code=ErrorCode.MESSAGE_LOST,
            detail="the message was removed from the queue before it was answered; "
            "please send it again",
        )
        result = await self._lost(
            keys=[
                keys.session_key(token),
                keys.events_key(token),
                keys.message_stream_of(token),
                keys.waiting_key_of(token),
            ],
            args=[
                keys.CONSUMER_GROUP,
                event.model_dump_json(exclude_none=True),
                keys.channel(token),
                self.settings.events_maxlen,
                token,
            ],
        )
        if int(result[0]) == -1:
            raise SessionExpired(token)
        return int(result[0]), int(result[1])

    async def due_for_sweep(self, part: str, older_than_ms: int, count: int = 100) -> list[str]:
        """Sessions of partition ``part`` that may wait for replies and were not checked
        (or sent a message) for ``older_than_ms``; they count as checked now, so
        several workers sweeping share the work. Check each with :meth:`close_if_lost`.
        """
        result = await self._due(keys=[keys.waiting_key(part)], args=[older_than_ms, count])
        return [str(token) for token in result]

    async def crashes(self, token: str, seq: int) -> int:
        """How many attempts at message ``seq`` of the session ended with their worker's
        death, as counted so far (by :meth:`begin`; 0 if the session is gone)."""
        value: Any = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "JSON.GET", keys.session_key(token), "$.crashes"
        )
        record = str(json.loads(value)[0]) if value else ""
        crashed_seq, _, n = record.partition(":")
        return int(n) if crashed_seq == str(seq) and n.isdigit() else 0

    async def deliveries(self, stream: str, entry_id: str) -> int:
        """The delivery count of a pending entry (0 if it is not pending)."""
        info = await self.redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 0

    async def count_failure(
        self, token: str, stream_entry: tuple[str, str], consumer: str, attempt: str = ""
    ) -> int:
        """Count a failed try at a pending entry: ``attempt`` began and failed (an
        error in a live worker, not a crash), or, with ``attempt`` empty, the try failed
        before any attempt could begin (a script error). The entry's delivery count
        goes up by one and it stays pending, held by ``consumer`` (see ``fail.lua``).

        Args:
            stream_entry: ``(stream, entry id)``.

        Returns:
            The new delivery count (0 if the entry is no longer pending).
        """
        stream, entry_id = stream_entry
        return int(
            await self._fail(
                keys=[keys.session_key(token), stream],
                args=[attempt, entry_id, keys.CONSUMER_GROUP, consumer],
            )
        )

    async def stop(self, token: str) -> int:
        """Stop the reply of the session's oldest unanswered message, wherever it runs.

        The stop is recorded in the session (a worker that starts the reply later sees
        it) and announced on :data:`keys.STOP_CHANNEL` as ``{"token": ..., "seq": ...}``
        (for the worker generating it now).

        Returns:
            The ``seq`` of the message stopped, or 0 if no message waits for a reply.

        Raises:
            SessionExpired: no such session.
        """
        seq = int(await self._stop(keys=[keys.session_key(token)]))
        if seq == -1:
            raise SessionExpired(token)
        if seq:
            await self.redis.spublish(keys.STOP_CHANNEL, json.dumps({"token": token, "seq": seq}))  # type: ignore[attr-defined]  # stale stubs
        return seq

    async def stop_seq(self, token: str) -> int:
        """The ``seq`` of the last message whose reply a client asked to stop (0: none).

        Raises:
            SessionExpired: no such session.
        """
        return await self._counter(token, ".stop_seq")

    async def replied_seq(self, token: str) -> int:
        """The ``seq`` of the session's last answered (or failed) message.

        Raises:
            SessionExpired: no such session.
        """
        return await self._counter(token, ".replied_seq")

    async def _counter(self, token: str, path: str) -> int:
        value: Any = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "JSON.GET", keys.session_key(token), path
        )
        if value is None:
            raise SessionExpired(token)
        return int(value)

    async def events_after(self, token: str, after: str, count: int = 1000) -> list[str]:
        """The session's events after ``after`` (exclusive), oldest first, as channel payloads.

        Args:
            after: an event id, or ``"0"`` for every stored event.
            count: at most this many events.
        """
        entries = await self.redis.xrange(
            keys.events_key(token), min=f"({after}" if after != "0" else "-", count=count
        )
        return [with_event_id(fields["event"], event_id) for event_id, fields in entries]

    async def last_event_id(self, token: str) -> str:
        """The id of the session's newest event, or ``"0"`` if it has none."""
        entries = await self.redis.xrevrange(keys.events_key(token), count=1)
        return str(entries[0][0]) if entries else "0"
