"""The worker's consumer loop: read user messages, generate replies, record, ack.

Delivery follows the Redis Streams consumer-group protocol (https://redis.io/docs/latest/
develop/data-types/streams/): ``XREADGROUP`` with ``>``; ``XACK`` only once the reply is
recorded and published; ``XAUTOCLAIM`` (``JUSTID``: a takeover is no try) takes over
entries idle in a dead consumer's pending entries list; the delivery count from
``XPENDING``, which grows with each failed try, and the session's count of attempts cut
by a worker's death send an entry that keeps failing to the dead-letter stream.

Per-session order uses sequence gating: the server numbers a session's messages and a
worker starts message ``n`` only once message ``n - 1`` is answered (or has failed),
waiting asynchronously on the session's channel meanwhile. Waiting entries do not hold
a generation slot, so a predecessor taken over from a dead worker can always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from importlib.resources import files
from typing import Literal

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    MessageEntry,
    RestartEvent,
    TokenEvent,
    utc_now,
)
from runtime.logs import fingerprint
from runtime.tasks import cancel_and_wait
from storage import keys
from storage.connection import CONNECTION_ERRORS, TRANSIENT_ERRORS, is_cluster
from storage.hub import RESYNC, UNAVAILABLE, Hub
from storage.models import StoredMessage
from storage.store import ANSWERED, NOT_YET, Begun, Fenced, NotYourTurn, SessionExpired, Store
from worker.coalesce import Coalescer, Delta, EndOfReply, read_deltas
from worker.config import WorkerSettings
from worker.errors import LLMError, LLMStreamInterrupted
from worker.llm import LLMClient, PromptMessage, track_usage
from worker.memory import HistoryTooShort, build_prompt, history_window
from worker.metrics import GENERATING, REPLIES, REPLY_SECONDS, TAKEOVERS, TIME_TO_FIRST_TOKEN
from worker.quota import charge_reply, reply_cost

logger = logging.getLogger(__name__)


class EmptyReply(LLMError):
    """The model's reply held nothing but whitespace."""

    code = ErrorCode.LLM_UNAVAILABLE


#: Redis cannot serve now: retried later, never counted against a message.
_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, *TRANSIENT_ERRORS)
#: How long (s) a waiting message sleeps between checks when no event wakes it.
_TURN_RECHECK_S = 1.0
DEAD_LETTER_MAXLEN = 10_000


class Worker:
    """One worker process's consumer in the ``workers`` group.

    Args:
        settings: the worker's settings.
        redis: a redis-py asyncio client (``decode_responses=True``).
        llm: the model client.
        burst: return from :meth:`run` once the stream is drained and nothing is in
            flight (for tests and one-off runs), instead of running until :meth:`stop`.
    """

    def __init__(
        self, settings: WorkerSettings, redis: Redis[str], llm: LLMClient, *, burst: bool = False
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.llm = llm
        self.burst = burst
        self.consumer = settings.consumer_name
        self.store = Store(redis, settings)
        self.hub = Hub(redis, control_channel=f"{keys.PREFIX}:worker:{self.consumer}")
        self._heartbeat = redis.register_script(
            files("worker").joinpath("heartbeat.lua").read_text(encoding="utf-8")
        )
        self._claim = redis.register_script(
            files("worker").joinpath("claim.lua").read_text(encoding="utf-8")
        )
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        #: Held by an attempt at a message that crashed its workers more than once: at
        #: most one such suspect runs in a worker at a time, so that when the worker
        #: dies, no other suspect is blamed with it.
        self._suspect = asyncio.Semaphore(1)
        #: Entries read or claimed and not yet acked, by (stream, entry id).
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Replies being generated, by (token, seq): set to stop one.
        self._stops: dict[tuple[str, int], asyncio.Event] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        #: Set once :meth:`run` has returned.
        self.stopped = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Entries read or claimed and not yet acked by this worker."""
        return len(self._in_flight)

    def stop(self) -> None:
        """Stop reading new entries; :meth:`run` then drains what is in flight and returns."""
        self._stopping.set()

    async def run(self, drain_timeout_s: float = 30.0) -> None:
        """Consume until :meth:`stop` (or, in burst mode, until drained).

        In-flight replies get ``drain_timeout_s`` (s) to finish; what is left unfinished
        stays in the pending entries list for another worker to take over.
        """
        self.stopped.clear()
        await self.store.ensure_group()
        await self.hub.start()
        loops = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._stop_loop(), name="stop"),
        ]
        logger.info("worker %s consuming %d partitions", self.consumer, len(keys.MESSAGE_STREAMS))
        try:
            await asyncio.gather(*(self._read_loop(streams) for streams in self._read_sets()))
            if self._in_flight:
                logger.info("draining %d in-flight entries", len(self._in_flight))
                _, pending = await asyncio.wait(
                    list(self._in_flight.values()), timeout=drain_timeout_s
                )
                await cancel_and_wait(list(pending))
        finally:
            await cancel_and_wait(loops)
            await cancel_and_wait(list(self._in_flight.values()))
            await self.hub.aclose()
            self.stopped.set()
            logger.info("worker %s stopped", self.consumer)

    # -- reading and claiming ------------------------------------------------------

    def _read_sets(self) -> list[tuple[str, ...]]:
        """The message streams read together by one blocking ``XREADGROUP``.

        One Redis reads them all in one call; on a cluster, a command's keys must share
        a hash slot, so each stream gets its own reader.
        """
        if is_cluster(self.redis):
            return [(stream,) for stream in keys.MESSAGE_STREAMS]
        return [keys.MESSAGE_STREAMS]

    async def _read_loop(self, streams: tuple[str, ...]) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            room = self.settings.worker_max_in_flight - len(self._in_flight)
            if room <= 0:
                self._room.clear()
                await self._wait_or_stop(self._room.wait(), limit_s=1.0)
                continue
            try:
                response = await self.redis.xreadgroup(
                    keys.CONSUMER_GROUP,
                    self.consumer,
                    dict.fromkeys(streams, ">"),
                    count=min(room, 100),
                    block=self.settings.read_block_ms,
                )
                backoff = 0.1
            except ResponseError as e:
                if not str(e).startswith("NOGROUP"):
                    raise
                logger.warning("consumer group missing (stream deleted?); creating it again")
                await self.store.ensure_group()
                continue
            except CONNECTION_ERRORS as e:
                logger.warning("reading the stream failed (%s); retrying in %.1f s", e, backoff)
                await self._wait_or_stop(asyncio.sleep(backoff), limit_s=backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            read = 0
            for stream, batch in response:
                for entry_id, fields in batch:
                    self._spawn(stream, entry_id, fields, deliveries=0)
                    read += 1
            if self.burst and not read and not self._in_flight:
                return

    async def _claim_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 2000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.claim_stale()
                # Also trimmed here, not only when a message is queued, so acknowledged
                # entries do not outlive a quiet spell beyond the bound.
                for stream in keys.MESSAGE_STREAMS:
                    await self.store.trim(stream)
                await self.sweep_lost()
            except (*CONNECTION_ERRORS, ResponseError) as e:
                logger.warning("claiming stale entries failed: %s", e)
            except Exception:
                # The loop must go on whatever happens, or nothing is ever taken over.
                logger.exception("claiming stale entries failed")

    async def claim_stale(self) -> int:
        """Take over entries idle for ``claim_idle_ms`` in any consumer's pending list.

        Returns:
            How many entries were taken over.
        """
        claimed = 0
        for stream in keys.MESSAGE_STREAMS:
            start = "0-0"
            while True:
                next_start, entries, deleted = await self._claim(
                    keys=[stream],
                    args=[
                        keys.CONSUMER_GROUP,
                        self.consumer,
                        self.settings.claim_idle_ms,
                        start,
                        100,
                    ],
                )
                if deleted:
                    # Their sessions learn it from lost.lua, when they wait on them.
                    logger.warning("pending entries deleted from %s: %s", stream, deleted)
                for entry_id, flat, deliveries in entries:
                    if (stream, entry_id) in self._in_flight:
                        continue
                    logger.info("took over %s %s (delivery %d)", stream, entry_id, deliveries)
                    TAKEOVERS.inc()
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    self._spawn(stream, entry_id, fields, deliveries=int(deliveries))
                    claimed += 1
                if next_start == "0-0":
                    break
                start = next_start
        return claimed

    async def sweep_lost(self) -> int:
        """Close the messages whose stream entry is gone (deleted or trimmed by hand,
        lost in a failover) and that no later message waits on, which would otherwise
        find them (:meth:`_await_turn`). A session is looked at once it has waited
        ``3 * claim_idle_ms`` (an entry's consumer is found dead after
        ``claim_idle_ms``), then again as often while it waits.

        Returns:
            How many messages were closed.
        """
        closed = 0
        for part in keys.PARTITIONS:
            for token in await self.store.due_for_sweep(part, 3 * self.settings.claim_idle_ms):
                with contextlib.suppress(SessionExpired):
                    _, seq = await self.store.close_if_lost(token)
                    if seq:
                        logger.warning(
                            "seq %d of a session of partition %s: its stream entry is gone; "
                            "closed with an error",
                            seq,
                            part,
                        )
                        closed += 1
        return closed

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            by_stream: dict[str, list[str]] = {}
            for stream, entry_id in self._in_flight:
                by_stream.setdefault(stream, []).append(entry_id)
            for stream, ids in by_stream.items():
                try:
                    mine = set(
                        await self._heartbeat(
                            keys=[stream], args=[keys.CONSUMER_GROUP, self.consumer, *ids]
                        )
                    )
                except (*CONNECTION_ERRORS, ResponseError) as e:
                    logger.warning("heartbeat of in-flight entries failed: %s", e)
                    continue
                for entry_id in ids:
                    task = self._in_flight.get((stream, entry_id))
                    if entry_id not in mine and task is not None:
                        logger.warning("%s %s was taken over by another worker", stream, entry_id)
                        task.cancel()

    async def _stop_loop(self) -> None:
        """Stop the replies that clients ask to stop (announced on the stop channel)."""
        backoff = 0.1
        while True:
            try:
                await self._listen_for_stops()
            except (*CONNECTION_ERRORS, ResponseError) as e:
                logger.warning("stop channel failed (%s); retrying in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _listen_for_stops(self) -> None:
        async with self.hub.subscribe(keys.STOP_CHANNEL) as sub:
            while True:
                payload = await sub.queue.get()
                if payload == UNAVAILABLE:
                    continue
                if payload == RESYNC:
                    # Stops announced while the connection was down were missed: ask
                    # Redis about every reply being generated.
                    for (token, seq), event in list(self._stops.items()):
                        with contextlib.suppress(*CONNECTION_ERRORS, ResponseError, SessionExpired):
                            if await self.store.stop_seq(token) >= seq:
                                event.set()
                    continue
                try:
                    notice = json.loads(payload)
                    stop = self._stops.get((str(notice["token"]), int(notice["seq"])))
                except (ValueError, TypeError, KeyError):
                    logger.warning("ignoring a malformed stop notice: %.200r", payload)
                    continue
                if stop is not None:
                    logger.info(
                        "session=%s seq=%s stopping",
                        fingerprint(str(notice["token"])),
                        notice["seq"],
                    )
                    stop.set()

    def _spawn(self, stream: str, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        key = (stream, entry_id)
        task = asyncio.create_task(self._handle(key, fields, deliveries))
        self._in_flight[key] = task

        def forget(_: asyncio.Task[None]) -> None:
            if self._in_flight.get(key) is task:
                del self._in_flight[key]
            self._room.set()

        task.add_done_callback(forget)

    async def _wait_or_stop(self, aw: Awaitable[object], limit_s: float) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=limit_s, return_when="FIRST_COMPLETED")
        for f in (waiter, stopper):
            f.cancel()

    # -- one entry -----------------------------------------------------------------

    async def _handle(
        self, entry_id: tuple[str, str], fields: dict[str, str], deliveries: int
    ) -> None:
        """Answer one entry; ``entry_id`` is (stream, id).

        Args:
            deliveries: the entry's delivery count when it was taken over from another
                consumer (tries so far), 0 when read fresh from the stream.
        """
        try:
            entry = MessageEntry.from_fields(fields)
        except ValidationError as e:
            logger.error("undecodable entry %s %s: %s", *entry_id, e.errors(include_url=False))
            await self._dead_letter(entry_id, fields, "undecodable")
            await self._ack(entry_id)
            return
        log_ctx = (entry.message_id, fingerprint(entry.token), entry.seq)
        # Registered before the session is read (by begin): a stop recorded before that
        # read is seen in ``stop_seq``, one announced after it finds the event.
        stop = self._stops.setdefault((entry.token, entry.seq), asyncio.Event())
        begun_once = False
        attempt = ""
        try:
            if deliveries >= self.settings.max_deliveries:
                # Failed that often already (attempts that began and failed, or tries
                # that failed before any attempt could begin): give up before any work.
                await self._give_up(entry_id, fields, entry, "", f"delivered {deliveries} times")
                await self._ack(entry_id)
                return
            attempt = f"{entry.seq}:{uuid.uuid4().hex[:16]}"
            # Only a taken-over entry can follow a crash (a fresh read never does).
            suspect = bool(deliveries) and await self.store.crashes(entry.token, entry.seq) > 0
            while True:
                # The attempt begins (and fences older ones) only once it holds a
                # generation slot, so a restart means text may really have streamed;
                # an entry waiting its turn holds no slot. A suspect also takes the
                # suspect slot first: an attempt counts as crashed once it has begun.
                async with self._suspect if suspect else contextlib.nullcontext(), self._slots:
                    begun = await self.store.begin(
                        entry, attempt, window=history_window(self.settings.memory_max_messages)
                    )
                    if begun.status == ANSWERED:
                        logger.info("message_id=%s session=%s seq=%d already answered", *log_ctx)
                        break
                    if begun.status != NOT_YET:
                        begun_once = True
                        if begun.crashes >= 2:
                            logger.warning(
                                "message_id=%s seq=%d: attempt after %d crashes",
                                entry.message_id,
                                entry.seq,
                                begun.crashes,
                            )
                        if begun.crashes >= self.settings.max_crashes:
                            await self._give_up(
                                entry_id, fields, entry, attempt, f"{begun.crashes} crashes"
                            )
                        else:
                            with GENERATING.track_inprogress():
                                await self._generate(entry, attempt, begun, stop)
                        break
                await self._await_turn(entry)
            await self._ack(entry_id)
        except SessionExpired:
            logger.info("message_id=%s session=%s seq=%d: session expired", *log_ctx)
            await self._ack(entry_id)
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
                await self.store.count_failure(
                    entry.token, entry_id, self.consumer, attempt if begun_once else ""
                )
        finally:
            if self._stops.get((entry.token, entry.seq)) is stop:
                del self._stops[(entry.token, entry.seq)]

    async def _await_turn(self, entry: MessageEntry) -> None:
        """Return once every message of the session before ``entry`` is answered.

        Each wake-up without news also asks whether the oldest unanswered message's
        entry is gone (``lost.lua``): such a message is closed with an error, so the
        session goes on.

        Raises:
            SessionExpired: the session no longer exists.
        """
        async with self.hub.subscribe(keys.channel(entry.token)) as sub:
            await asyncio.wait_for(sub.ready.wait(), timeout=10)
            replied, _ = await self.store.close_if_lost(entry.token)
            while replied < entry.seq - 1:
                # Woken by a closing event of this session, or re-checked each second.
                try:
                    async with asyncio.timeout(_TURN_RECHECK_S):
                        while True:
                            payload = await sub.queue.get()
                            if (
                                payload == RESYNC
                                or '"type":"done"' in payload
                                or ('"type":"error"' in payload)
                            ):
                                break
                except TimeoutError:
                    replied, closed = await self.store.close_if_lost(entry.token)
                    if closed:
                        logger.warning(
                            "seq %d of the session of message_id=%s: its stream entry is "
                            "gone; closed with an error",
                            closed,
                            entry.message_id,
                        )
                else:
                    replied = await self.store.replied_seq(entry.token)

    async def _give_up(
        self,
        entry_id: tuple[str, str],
        fields: dict[str, str],
        entry: MessageEntry,
        attempt: str,
        reason: str,
    ) -> None:
        """Dead-letter an entry that failed ``MAX_DELIVERIES`` tries or crashed its
        workers ``MAX_CRASHES`` times; close it with an error.

        Args:
            attempt: the attempt that began, or ``""`` if none could (the message is
                then closed whatever attempt may run, see :meth:`Store.finish`).
            reason: why, for the log and the dead-letter record.
        """
        # In the dead-letter stream before the session is told, so that an operator
        # finds it there as soon as a client sees the error.
        logger.error("message_id=%s seq=%d %s: dead-lettered", entry.message_id, entry.seq, reason)
        await self._dead_letter(entry_id, fields, reason)
        REPLIES.labels(ErrorCode.DELIVERY_FAILED.value).inc()
        event = ErrorEvent(
            message_id=entry.message_id,
            code=ErrorCode.DELIVERY_FAILED,
            detail="The reply could not be generated; please send it again.",
        )
        if attempt:
            await self.store.finish(entry, None, event, attempt)
        else:
            try:
                while True:
                    try:
                        await self.store.finish(entry, None, event, "")
                        break
                    except NotYourTurn:
                        await self._await_turn(entry)
            except ResponseError as e:
                # The session itself is what fails (its document is broken): the entry
                # is dead-lettered all the same, and nothing more can be told to it.
                logger.error("message_id=%s: its session cannot be told: %s", entry.message_id, e)

    async def _generate(
        self, entry: MessageEntry, attempt: str, begun: Begun, stop: asyncio.Event
    ) -> None:
        """Generate, stream and record the reply to ``entry`` as ``attempt``.

        Args:
            begun: what :meth:`Store.begin` returned: the session as ``attempt`` began
                (its newest messages, or all of them).

        Raises:
            Fenced: another attempt took over meanwhile.
            SessionExpired: the session ended meanwhile.
        """
        assert begun.session is not None
        if begun.session.stop_seq >= entry.seq:
            stop.set()
        prompt = await self._prompt(entry, begun)
        usage = track_usage()  # filled by the model's responses, for the quotas
        started = time.perf_counter()
        attempts = 0
        while True:
            try:
                text, first_token_s, truncated = await self._stream(
                    entry, attempt, prompt, started, stop
                )
                break
            except LLMStreamInterrupted as e:
                attempts += 1
                if attempts > self.settings.llm_max_retries:
                    await self._fail(entry, attempt, e)
                    return
                logger.warning(
                    "message_id=%s stream interrupted (%s); generating again", entry.message_id, e
                )
                await self._emit(entry, attempt, RestartEvent(message_id=entry.message_id))
            except LLMError as e:
                await self._fail(entry, attempt, e)
                return
        # Charged before the reply is recorded, so a client that sees its `done` finds
        # the quota up to date; what the model generated counts, recorded or not.
        await charge_reply(self.redis, self.settings, entry.token, reply_cost(usage, prompt, text))
        reply = StoredMessage(
            id=str(uuid.uuid4()),
            role="assistant",
            content=text,
            timestamp=utc_now(),
            reply_to=entry.message_id,
            stopped=stop.is_set(),
            truncated=None if stop.is_set() else truncated,
        )
        event_id = await self.store.finish(
            entry, reply, DoneEvent(message_id=entry.message_id, reply=reply.public()), attempt
        )
        total_s = time.perf_counter() - started
        outcome = "stopped" if reply.stopped else "truncated" if reply.truncated else "done"
        if event_id:
            REPLIES.labels(outcome).inc()
            TIME_TO_FIRST_TOKEN.observe(first_token_s)
            REPLY_SECONDS.observe(total_s)
        logger.info(
            "message_id=%s session=%s seq=%d %s chars=%d ttft_ms=%.1f total_ms=%.1f%s",
            entry.message_id,
            fingerprint(entry.token),
            entry.seq,
            outcome if not reply.truncated else f"{outcome} ({reply.truncated})",
            len(text),
            first_token_s * 1000,
            total_s * 1000,
            "" if event_id else " (already recorded)",
        )

    async def _prompt(self, entry: MessageEntry, begun: Begun) -> list[PromptMessage]:
        """The prompt of ``entry``'s reply, from the newest messages that ``begin``
        read; from the whole history only if they are not enough to tell."""
        assert begun.session is not None

        def prompt(history: list[StoredMessage], complete: bool) -> list[PromptMessage]:
            return build_prompt(
                history,
                entry.seq,
                system_prompt=self.settings.system_prompt,
                max_messages=self.settings.memory_max_messages,
                max_tokens=self.settings.memory_max_tokens,
                complete=complete,
            )

        try:
            return prompt(begun.session.messages, begun.complete)
        except HistoryTooShort:
            session = await self.store.get_session(entry.token, touch=False)
            return prompt(session.messages, True)

    async def _fail(self, entry: MessageEntry, attempt: str, error: LLMError) -> None:
        logger.warning("message_id=%s model error %s: %s", entry.message_id, error.code, error)
        REPLIES.labels(error.code.value).inc()
        await self.store.finish(
            entry,
            None,
            ErrorEvent(message_id=entry.message_id, code=error.code, detail=error.public_detail),
            attempt,
        )

    async def _stream(
        self,
        entry: MessageEntry,
        attempt: str,
        prompt: list[PromptMessage],
        started: float,
        stop: asyncio.Event,
    ) -> tuple[str, float, Literal["time", "length"] | None]:
        """Stream one reply to the session, coalescing deltas; return it, its TTFT (s)
        and why it was cut, if it was.

        The first delta is published at once; after each publication, deltas that
        arrive within ``stream_flush_ms`` are joined into the next ``token`` event.
        When ``stop`` is set, the model request is aborted and the text published so
        far is the reply (possibly empty). So too, marked ``"time"``, once
        ``reply_timeout_s`` have passed since ``started`` (``time.perf_counter()``);
        and a reply is cut at ``reply_max_chars`` characters, marked ``"length"``.

        Raises:
            EmptyReply: the model sent nothing but whitespace (in time).
            LLMError: from the model client.
            SessionExpired: the session ended meanwhile.
        """
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        truncated: Literal["time", "length"] | None = None

        async def stop_reading() -> None:
            nonlocal truncated
            remaining = self.settings.reply_timeout_s - (time.perf_counter() - started)
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await stop.wait()
            except TimeoutError:
                truncated = "time"
            reader.cancel()
            queue.put_nowait(EndOfReply())

        reader = asyncio.create_task(read_deltas(self.llm.stream(prompt), queue))
        stopper = asyncio.create_task(stop_reading())
        pieces = Coalescer(queue)
        first_token_s = 0.0
        window = self.settings.stream_flush_ms / 1000
        room = self.settings.reply_max_chars
        try:
            while (body := await pieces.next_piece()) is not None:
                if len(body) > room:
                    body = pieces.parts[-1] = body[:room]
                    truncated = "length"
                room -= len(body)
                if len(pieces.parts) == 1:
                    first_token_s = time.perf_counter() - started
                sent_at = time.perf_counter()
                if body:
                    await self._emit(
                        entry, attempt, TokenEvent(message_id=entry.message_id, content=body)
                    )
                if truncated == "length":
                    break
                # Wait out the window only while the model is still sending: once the
                # whole reply is queued (or a stop ends the reader), the rest goes out
                # at once, so the end of a reply never waits for the window.
                remaining = window - (time.perf_counter() - sent_at)
                if remaining > 0 and not pieces.finished and not reader.done():
                    await asyncio.wait({reader}, timeout=remaining)
        finally:
            for task in (reader, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        text = "".join(pieces.parts)
        if not text and not stop.is_set():
            if truncated == "time":
                raise EmptyReply(
                    f"the model sent nothing within {self.settings.reply_timeout_s:g} s"
                )
            raise EmptyReply("the model returned an empty reply")
        return text, first_token_s, truncated

    async def _emit(
        self, entry: MessageEntry, attempt: str, event: TokenEvent | RestartEvent
    ) -> None:
        if await self.store.emit(entry.token, event, attempt) is None:
            raise SessionExpired(entry.token)

    async def _ack(self, entry_id: tuple[str, str]) -> None:
        stream, id_ = entry_id
        await self.redis.xack(stream, keys.CONSUMER_GROUP, id_)  # type: ignore[no-untyped-call]

    async def _dead_letter(
        self, entry_id: tuple[str, str], fields: dict[str, str], reason: str
    ) -> None:
        stream, id_ = entry_id
        record: dict[str, str] = {
            **fields,
            "stream": stream,
            "entry_id": id_,
            "reason": reason,
            "consumer": self.consumer,
        }
        await self.redis.xadd(
            keys.DEAD_LETTER_STREAM,
            record,
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
