"""The worker's consumer loop: read user messages, generate replies, record, ack.

Delivery follows the Redis Streams consumer-group protocol (https://redis.io/docs/latest/
develop/data-types/streams/): ``XREADGROUP`` with ``>``; ``XACK`` only once the reply is
recorded and published; ``XAUTOCLAIM`` takes over entries idle in a dead consumer's
pending entries list; the delivery count from ``XPENDING`` sends an entry that keeps
failing to the dead-letter stream.

Per-session order uses sequence gating: the server numbers a session's messages and a
worker starts message ``n`` only once message ``n - 1`` is answered (or has failed),
waiting asynchronously on the session's channel meanwhile. Waiting entries do not hold
a generation slot, so a predecessor taken over from a dead worker can always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from importlib.resources import files

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol import keys
from protocol.hub import RESYNC, Hub
from protocol.models import StoredMessage
from protocol.store import SessionExpired, Store
from protocol.wire import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    MessageEntry,
    RestartEvent,
    TokenEvent,
    utc_now,
)
from worker.config import WorkerSettings
from worker.llm import ChatMessage, LLMClient, LLMError, LLMStreamInterrupted
from worker.memory import build_prompt
from worker.metrics import GENERATING, REPLIES, REPLY_SECONDS, TAKEOVERS, TIME_TO_FIRST_TOKEN

logger = logging.getLogger(__name__)


class EmptyReply(LLMError):
    """The model's reply held nothing but whitespace."""

    code = "llm_unavailable"


_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
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
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
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
        ]
        logger.info("worker %s consuming %s", self.consumer, keys.MESSAGE_STREAM)
        try:
            await self._read_loop()
            if self._in_flight:
                logger.info("draining %d in-flight entries", len(self._in_flight))
                _, pending = await asyncio.wait(
                    list(self._in_flight.values()), timeout=drain_timeout_s
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for task in list(self._in_flight.values()):
                task.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
            await self.hub.aclose()
            self.stopped.set()
            logger.info("worker %s stopped", self.consumer)

    # -- reading and claiming ------------------------------------------------------

    async def _read_loop(self) -> None:
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
                    {keys.MESSAGE_STREAM: ">"},
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
            except _REDIS_ERRORS as e:
                logger.warning("reading the stream failed (%s); retrying in %.1f s", e, backoff)
                await self._wait_or_stop(asyncio.sleep(backoff), limit_s=backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            entries = [entry for _stream, batch in response for entry in batch]
            for entry_id, fields in entries:
                self._spawn(entry_id, fields, deliveries=1)
            if self.burst and not entries and not self._in_flight:
                return

    async def _claim_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 2000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.claim_stale()
            except _REDIS_ERRORS as e:
                logger.warning("claiming stale entries failed: %s", e)
            except ResponseError as e:
                logger.warning("claiming stale entries failed: %s", e)

    async def claim_stale(self) -> int:
        """Take over entries idle for ``claim_idle_ms`` in any consumer's pending list.

        Returns:
            How many entries were taken over.
        """
        claimed = 0
        start = "0-0"
        while True:
            next_start, entries, deleted = await self.redis.xautoclaim(
                keys.MESSAGE_STREAM,
                keys.CONSUMER_GROUP,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=start,
                count=100,
            )
            if deleted:
                logger.warning("pending entries trimmed from the stream: %s", deleted)
            for entry_id, fields in entries:
                if entry_id in self._in_flight:
                    continue
                deliveries = await self._deliveries(entry_id)
                logger.info("took over entry %s (delivery %d)", entry_id, deliveries)
                TAKEOVERS.inc()
                self._spawn(entry_id, fields, deliveries=deliveries)
                claimed += 1
            if next_start == "0-0":
                return claimed
            start = next_start

    async def _deliveries(self, entry_id: str) -> int:
        info = await self.redis.xpending_range(
            keys.MESSAGE_STREAM, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 1

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            ids = list(self._in_flight)
            if not ids:
                continue
            try:
                mine = set(
                    await self._heartbeat(
                        keys=[keys.MESSAGE_STREAM],
                        args=[keys.CONSUMER_GROUP, self.consumer, *ids],
                    )
                )
            except (*_REDIS_ERRORS, ResponseError) as e:
                logger.warning("heartbeat of in-flight entries failed: %s", e)
                continue
            for entry_id in ids:
                task = self._in_flight.get(entry_id)
                if entry_id not in mine and task is not None:
                    logger.warning("entry %s was taken over by another worker", entry_id)
                    task.cancel()

    def _spawn(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        task = asyncio.create_task(self._handle(entry_id, fields, deliveries))
        self._in_flight[entry_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            if self._in_flight.get(entry_id) is task:
                del self._in_flight[entry_id]
            self._room.set()

        task.add_done_callback(forget)

    async def _wait_or_stop(self, aw: Awaitable[object], limit_s: float) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=limit_s, return_when="FIRST_COMPLETED")
        for f in (waiter, stopper):
            f.cancel()

    # -- one entry -----------------------------------------------------------------

    async def _handle(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        try:
            entry = MessageEntry.from_fields(fields)
        except ValidationError as e:
            logger.error("undecodable entry %s: %s", entry_id, e.errors(include_url=False))
            await self._dead_letter(entry_id, fields, "undecodable")
            await self._ack(entry_id)
            return
        log_ctx = (entry.message_id, entry.token, entry.seq)
        try:
            if not await self._wait_turn(entry):
                logger.info("message_id=%s token=%s seq=%d already answered", *log_ctx)
                await self._ack(entry_id)
                return
            if deliveries > self.settings.max_deliveries:
                logger.error(
                    "message_id=%s token=%s seq=%d failed %d times: dead-lettered",
                    *log_ctx,
                    deliveries - 1,
                )
                await self._dead_letter(entry_id, fields, f"delivered {deliveries} times")
                await self.store.finish(
                    entry,
                    None,
                    ErrorEvent(
                        message_id=entry.message_id,
                        code=ErrorCode.DELIVERY_FAILED,
                        detail="The reply could not be generated; please send it again.",
                    ),
                )
                REPLIES.labels(ErrorCode.DELIVERY_FAILED.value).inc()
                await self._ack(entry_id)
                return
            async with self._slots:
                with GENERATING.track_inprogress():
                    await self._reply(entry, restart=deliveries > 1)
            await self._ack(entry_id)
        except SessionExpired:
            logger.info("message_id=%s token=%s seq=%d: session expired", *log_ctx)
            await self._ack(entry_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left pending: after CLAIM_IDLE_MS a worker takes it over, at most
            # MAX_DELIVERIES times in all.
            logger.exception("message_id=%s token=%s seq=%d failed; left pending", *log_ctx)

    async def _wait_turn(self, entry: MessageEntry) -> bool:
        """Wait until every earlier message of the session is answered.

        Returns:
            False if this message is already answered (a redelivery after the reply
            was recorded), True when it is its turn.

        Raises:
            SessionExpired: the session no longer exists.
        """
        replied = await self.store.replied_seq(entry.token)
        if replied >= entry.seq:
            return False
        if replied == entry.seq - 1:
            return True
        async with self.hub.subscribe(keys.channel(entry.token)) as sub:
            await asyncio.wait_for(sub.ready.wait(), timeout=10)
            while True:
                replied = await self.store.replied_seq(entry.token)
                if replied >= entry.seq:
                    return False
                if replied == entry.seq - 1:
                    return True
                # Woken by a closing event of this session, or re-checked each second.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_TURN_RECHECK_S):
                        while True:
                            payload = await sub.queue.get()
                            if (
                                payload == RESYNC
                                or '"type":"done"' in payload
                                or ('"type":"error"' in payload)
                            ):
                                break

    async def _reply(self, entry: MessageEntry, *, restart: bool) -> None:
        session = await self.store.get_session(entry.token, touch=False)
        prompt = build_prompt(
            session.messages,
            entry.seq,
            system_prompt=self.settings.system_prompt,
            max_messages=self.settings.memory_max_messages,
            max_tokens=self.settings.memory_max_tokens,
        )
        started = time.perf_counter()
        attempts = 0
        while True:
            if restart:
                await self._emit(entry, RestartEvent(message_id=entry.message_id))
            try:
                text, first_token_s = await self._stream(entry, prompt, started)
                break
            except LLMStreamInterrupted as e:
                attempts += 1
                if attempts > self.settings.llm_max_retries:
                    await self._fail(entry, e)
                    return
                logger.warning(
                    "message_id=%s stream interrupted (%s); generating again", entry.message_id, e
                )
                restart = True
            except LLMError as e:
                await self._fail(entry, e)
                return
        reply = StoredMessage(
            id=str(uuid.uuid4()),
            role="assistant",
            content=text,
            timestamp=utc_now(),
            reply_to=entry.message_id,
        )
        event_id = await self.store.finish(
            entry, reply, DoneEvent(message_id=entry.message_id, reply=reply.public())
        )
        total_s = time.perf_counter() - started
        if event_id:
            REPLIES.labels("done").inc()
            TIME_TO_FIRST_TOKEN.observe(first_token_s)
            REPLY_SECONDS.observe(total_s)
        logger.info(
            "message_id=%s token=%s seq=%d done chars=%d ttft_ms=%.1f total_ms=%.1f%s",
            entry.message_id,
            entry.token,
            entry.seq,
            len(text),
            first_token_s * 1000,
            total_s * 1000,
            "" if event_id else " (already recorded)",
        )

    async def _fail(self, entry: MessageEntry, error: LLMError) -> None:
        logger.warning("message_id=%s model error %s: %s", entry.message_id, error.code, error)
        code = (
            ErrorCode(error.code)
            if error.code in ErrorCode.__members__.values()
            else ErrorCode.LLM_UNAVAILABLE
        )
        REPLIES.labels(code.value).inc()
        await self.store.finish(
            entry,
            None,
            ErrorEvent(message_id=entry.message_id, code=code, detail=str(error)),
        )

    async def _stream(
        self, entry: MessageEntry, prompt: list[ChatMessage], started: float
    ) -> tuple[str, float]:
        """Stream one reply to the session, coalescing deltas; return it and its TTFT (s).

        The first delta is published at once; after each publication, deltas that
        arrive within ``stream_flush_ms`` are joined into the next ``token`` event.

        Raises:
            EmptyReply: the model sent nothing but whitespace.
            LLMError: from the model client.
            SessionExpired: the session ended meanwhile.
        """
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for delta in self.llm.stream(prompt):
                    queue.put_nowait(delta)
                queue.put_nowait(None)
            except Exception as e:
                queue.put_nowait(e)

        reader = asyncio.create_task(read())
        parts: list[str] = []
        # Whitespace at either end of a reply is noise (models often open with a space
        # and close with a newline). Held-back whitespace is sent only once text follows
        # it, so the token events still join to exactly the recorded reply.
        held = ""
        first_token_s = 0.0
        window = self.settings.stream_flush_ms / 1000
        try:
            finished = False
            while not finished:
                batch: list[str] = []
                item = await queue.get()
                while True:
                    if item is None:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    batch.append(item)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                text = held + "".join(batch)
                if not parts:
                    text = text.lstrip()
                body = text.rstrip()
                held = text[len(body) :]
                if not body:
                    continue
                if not parts:
                    first_token_s = time.perf_counter() - started
                parts.append(body)
                sent_at = time.perf_counter()
                await self._emit(entry, TokenEvent(message_id=entry.message_id, content=body))
                # Wait out the window only while the model is still sending: once the
                # whole reply is queued, the rest goes out at once.
                if window and not finished and not reader.done():
                    await asyncio.sleep(max(0.0, window - (time.perf_counter() - sent_at)))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not parts:
            raise EmptyReply("the model returned an empty reply")
        return "".join(parts), first_token_s

    async def _emit(self, entry: MessageEntry, event: TokenEvent | RestartEvent) -> None:
        if await self.store.emit(entry.token, event) is None:
            raise SessionExpired(entry.token)

    async def _ack(self, entry_id: str) -> None:
        await self.redis.xack(keys.MESSAGE_STREAM, keys.CONSUMER_GROUP, entry_id)  # type: ignore[no-untyped-call]

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        await self.redis.xadd(
            keys.DEAD_LETTER_STREAM,
            {**fields, "entry_id": entry_id, "reason": reason, "consumer": self.consumer},  # type: ignore[dict-item]
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
