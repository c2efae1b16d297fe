"""The life of one reply: its turn, its attempt, and what becomes of its stream entry.

Per-session order uses sequence gating: the server numbers a session's messages and a
worker starts message ``n`` only once message ``n - 1`` is answered (or has failed),
waiting asynchronously on the session's channel meanwhile. Waiting entries do not hold
a generation slot, so a predecessor taken over from a dead worker can always run.

An attempt begins (``begin.lua``, which fences older attempts) once it holds a slot,
then :class:`worker.generation.ReplyGenerator` generates the reply. A message that keeps
failing is given up: dead-lettered and closed with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import ErrorCode, ErrorEvent, MessageEntry, ends_reply
from runtime.logs import fingerprint
from storage import keys
from storage.connection import CONNECTION_ERRORS, TRANSIENT_ERRORS
from storage.hub import RESYNC, Hub
from storage.store import ANSWERED, NOT_YET, STALE, Fenced, NotYourTurn, SessionExpired, Store
from worker.config import WorkerSettings
from worker.generation import ReplyGenerator
from worker.memory import history_window
from worker.metrics import GENERATING, REPLIES
from worker.model.llm import LLMClient
from worker.turn import Turn

logger = logging.getLogger(__name__)


#: Redis cannot serve now: retried later, never counted against a message.
_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, *TRANSIENT_ERRORS)
#: How long (s) a waiting message sleeps between checks when no event wakes it.
_TURN_RECHECK_S = 1.0


class Delivery(Protocol):
    """The stream entry a reply answers, as the consumer hands it over."""

    @property
    def key(self) -> tuple[str, str]:
        """``(stream, entry id)``."""

    @property
    def deliveries(self) -> int:
        """The entry's delivery count when it was taken over from another consumer
        (tries so far), 0 when read fresh from the stream."""

    async def ack(self) -> None:
        """Acknowledge the entry: it is done with."""

    async def dead_letter(self, reason: str) -> str:
        """Copy the entry to the dead-letter stream, saying why; the record's id."""

    async def withdraw(self, record: str) -> None:
        """Take a record of :meth:`dead_letter` out of the dead-letter stream."""


class MessageAnswerer:
    """Answers the entries one consumer hands over, many at a time.

    At most ``worker_concurrency`` replies are generated at once; entries waiting for
    their turn hold no slot.

    Args:
        settings: the worker's settings.
        redis: the worker's client, for the quotas.
        llm: the model client.
        store: the session store.
        hub: the worker's Pub/Sub hub, started by the consumer.
    """

    def __init__(
        self, settings: WorkerSettings, redis: Redis[str], llm: LLMClient, store: Store, hub: Hub
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.generator = ReplyGenerator(settings, redis, llm, store)
        self.traces = self.generator.traces  # its spans while tracing is on; None while off
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        #: Held by an attempt at a message that crashed its workers more than once: at
        #: most one such suspect runs in a worker at a time, so that when the worker
        #: dies, no other suspect is blamed with it.
        self._suspect = asyncio.Semaphore(1)
        #: Replies being answered, by (token, seq): set one to stop that reply.
        self.stops: dict[tuple[str, int], asyncio.Event] = {}

    async def answer(self, delivery: Delivery, entry: MessageEntry) -> None:
        """Answer ``entry``, then ack it; or leave it pending.

        Acked once answered, given up or its session gone. Left pending, for a worker
        to take over after ``claim_idle_ms``: when another attempt took it over (that
        one acks it), when Redis cannot serve (not counted against the message), and
        after any other error, which raises its delivery count towards
        ``max_deliveries``. Traced while tracing is on (:mod:`worker.tracing`).
        """
        if self.traces is None:
            await self._answer_entry(delivery, entry)
            return
        with self.traces.take(delivery, entry):
            await self._answer_entry(delivery, entry)

    async def _answer_entry(self, delivery: Delivery, entry: MessageEntry) -> None:
        """:meth:`answer`, in the context of its take."""
        log_ctx = (entry.message_id, fingerprint(entry.token), entry.seq)
        # Registered before the session is read (by begin): a stop recorded before that
        # read is seen in ``stop_seq``, one announced after it finds the event. A new
        # event each time: the entry of a stopped reply may still be finishing (queueing
        # its title job, its ack) when a regenerate's entry of the same seq arrives, and
        # must not pass its stop on to the new reply.
        stop = self.stops[(entry.token, entry.seq)] = asyncio.Event()
        turn = Turn(entry, f"{entry.seq}:{uuid.uuid4().hex[:16]}", delivery.key, stop)
        try:
            await self._answer(delivery, turn)
            if not turn.acked:
                await delivery.ack()
        except SessionExpired:
            logger.info("message_id=%s session=%s seq=%d: session expired", *log_ctx)
            await delivery.ack()
        except Fenced:
            # Another worker took the entry over (this one paused too long) and has
            # begun the reply again; it owns the entry and acks it.
            logger.warning("message_id=%s session=%s seq=%d: taken over; stopped", *log_ctx)
        except asyncio.CancelledError:
            raise
        except _UNAVAILABLE_ERRORS as e:
            # Left pending, as below, and not counted against the message: Redis is
            # unreachable or cannot write now, which every loop reports.
            logger.warning(
                "message_id=%s session=%s seq=%d: Redis error %s; left pending", *log_ctx, e
            )
        except Exception:
            # Left pending: after CLAIM_IDLE_MS a worker takes it over, until its
            # delivery count, which counts each such failure, reaches MAX_DELIVERIES.
            logger.exception("message_id=%s session=%s seq=%d failed; left pending", *log_ctx)
            with contextlib.suppress(*CONNECTION_ERRORS, ResponseError):
                await self.store.streams.count_failure(
                    entry.token,
                    delivery.key,
                    self.settings.consumer_name,
                    turn.attempt if turn.begun is not None else "",
                )
        finally:
            if self.stops.get((entry.token, entry.seq)) is stop:
                del self.stops[(entry.token, entry.seq)]

    async def _answer(self, delivery: Delivery, turn: Turn) -> None:
        """Give up on a message that failed too often; else try ``turn``, in its turn."""
        entry = turn.entry
        if delivery.deliveries >= self.settings.max_deliveries:
            # Failed that often already (attempts that began and failed, or tries that
            # failed before any attempt could begin): give up before any work.
            reason = f"delivered {delivery.deliveries} times"
            await self._give_up(delivery, turn, reason)
            turn.acked = True  # by the script that closed the message
            return
        # Only a taken-over entry can follow a crash (a fresh read never does).
        suspect = (
            bool(delivery.deliveries)
            and await self.store.sessions.crashes(entry.token, entry.seq) > 0
        )
        while not await self._try(delivery, turn, suspect=suspect):
            await self._await_turn(entry, keys.model_of_stream(delivery.key[0]))

    async def _try(self, delivery: Delivery, turn: Turn, *, suspect: bool) -> bool:
        """Begin ``turn`` and see the reply through; False if it is not its turn yet.
        Sets ``turn.begun`` once ``begin`` accepts it, and ``turn.acked``.

        The attempt begins (and fences older ones) only once it holds a generation
        slot, so a restart means text may really have streamed; an entry waiting its
        turn holds no slot. A suspect also takes the suspect slot first: an attempt
        counts as crashed once it has begun.
        """
        entry, attempt = turn.entry, turn.attempt
        async with self._suspect if suspect else contextlib.nullcontext(), self._slots:
            window = history_window(self.settings.memory_max_messages)
            begin = self.store.replies.begin(entry, attempt, window=window, entry_id=turn.key[1])
            begun = await (begin if self.traces is None else self.traces.begin(begin, attempt))
            if begun.status in (STALE, ANSWERED):
                await self._nothing_to_answer(delivery, entry, stale=begun.status == STALE)
                return True
            if begun.status == NOT_YET:
                return False
            turn.begun = begun
            if begun.crashes >= 2:
                logger.warning(
                    "message_id=%s seq=%d: attempt after %d crashes",
                    entry.message_id,
                    entry.seq,
                    begun.crashes,
                )
            if begun.crashes >= self.settings.max_crashes:
                await self._give_up(delivery, turn, f"{begun.crashes} crashes")
                turn.acked = True  # by the script that closed the message
            else:
                with GENERATING.track_inprogress():
                    turn.acked = await self.generator.generate(turn)
            return True

    async def _nothing_to_answer(
        self, delivery: Delivery, entry: MessageEntry, *, stale: bool
    ) -> None:
        """An entry whose message needs no attempt (``answer`` acks it): ``stale``, left
        over from before a regenerate or edit queued the message again, or its message
        already answered. An answered first message queues its title job again: its
        worker may have died between recording the reply and queueing the job (a second
        job of a titled session asks nothing)."""
        log_ctx = (entry.message_id, fingerprint(entry.token), entry.seq)
        if stale:
            logger.info(
                "message_id=%s session=%s seq=%d: entry %s is stale (queued again)",
                *log_ctx,
                delivery.key[1],
            )
            return
        logger.info("message_id=%s session=%s seq=%d already answered", *log_ctx)
        if entry.seq == 1 and self.settings.conversation_titles:
            model = keys.model_of_stream(delivery.key[0])
            await self.generator.followups.request_title(entry.token, model)

    async def _await_turn(self, entry: MessageEntry, model: str) -> None:
        """Return once every message of the session before ``entry`` (a message for
        ``model``, as all those it waits behind) is answered.

        Each wake-up without news also asks whether the oldest unanswered message's
        entry is gone (``lost.lua``): such a message is closed with an error, so the
        session goes on.

        Raises:
            SessionExpired: the session no longer exists.
        """
        async with self.hub.subscribe(keys.channel(entry.token)) as sub:
            await asyncio.wait_for(sub.ready.wait(), timeout=10)
            replied, _ = await self.store.queue.close_if_lost(entry.token, model)
            while replied < entry.seq - 1:
                # Woken by a reply's end in this session, or re-checked each second.
                try:
                    async with asyncio.timeout(_TURN_RECHECK_S):
                        while True:
                            payload = await sub.queue.get()
                            if payload == RESYNC or ends_reply(payload):
                                break
                except TimeoutError:
                    replied, closed = await self.store.queue.close_if_lost(entry.token, model)
                    if closed:
                        logger.warning(
                            "seq %d of the session of message_id=%s: its stream entry is "
                            "gone; closed with an error",
                            closed,
                            entry.message_id,
                        )
                else:
                    replied = await self.store.sessions.replied_seq(entry.token)

    async def _give_up(self, delivery: Delivery, turn: Turn, reason: str) -> None:
        """Dead-letter an entry that failed ``max_deliveries`` tries or crashed its
        workers ``max_crashes`` times, then close it with an error, acknowledging it in
        the same script.

        In the dead-letter stream before the session is told, so that an operator finds
        it there as soon as a client sees the error. Closing and acknowledging are one
        step (``finish.lua`` with ``ack``): a worker that dies after closing leaves no
        entry behind to be given up again, which could otherwise close the turn a
        regenerate queued since. An entry that closes nothing (stale: the message was
        queued again since; or already answered) has its record withdrawn.

        Closed as ``turn.attempt`` once it has begun (``turn.begun`` set), or as ``""``
        before (the message is then closed whatever attempt may run, see
        :meth:`storage.replies.Replies.finish`). ``reason``: why, for the log and the
        dead-letter record.

        Raises:
            Fenced: (``turn`` begun) another attempt has begun since.
        """
        entry = turn.entry
        attempt = turn.attempt if turn.begun is not None else ""
        record = await delivery.dead_letter(reason)
        event = ErrorEvent(
            message_id=entry.message_id,
            code=ErrorCode.DELIVERY_FAILED,
            detail="The reply could not be generated; please send it again.",
        )
        closed: str | None = None
        try:
            while True:
                try:
                    finish = self.store.replies.finish(
                        entry, None, event, attempt, ack=delivery.key
                    )
                    traces = self.traces
                    closed = await (finish if traces is None else traces.finish(finish, reason))
                    break
                except NotYourTurn:
                    await self._await_turn(entry, keys.model_of_stream(delivery.key[0]))
        except ResponseError as e:
            # The session itself is what fails (its document is broken): the entry is
            # dead-lettered all the same, and nothing more can be told to it.
            logger.error("message_id=%s: its session cannot be told: %s", entry.message_id, e)
            closed = "unknown"
            await delivery.ack()
        except Fenced:
            await delivery.withdraw(record)
            raise
        if closed is None:
            logger.info(
                "message_id=%s seq=%d: already closed or queued again; entry acked",
                entry.message_id,
                entry.seq,
            )
            await delivery.withdraw(record)
            return
        logger.error("message_id=%s seq=%d %s: dead-lettered", entry.message_id, entry.seq, reason)
        REPLIES.labels(ErrorCode.DELIVERY_FAILED.value).inc()
