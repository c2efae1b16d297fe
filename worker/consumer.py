"""The worker's consumer: read user messages from the message streams, hand each to
:class:`worker.reply.MessageAnswerer`, ack.

It keeps the scheduling alone (how many entries in flight, when to read, retries, one
task an entry); the store sends the Streams commands (:mod:`storage.deliveries`,
:mod:`storage.streams`) and hands over entries that ack and dead-letter themselves.

Delivery follows the Redis Streams consumer-group protocol (https://redis.io/docs/latest/
develop/data-types/streams/): ``XREADGROUP`` with ``>``; ``XACK`` only once the reply is
recorded and published; ``XAUTOCLAIM`` (``JUSTID``: a takeover is no try) takes over
entries idle in a dead consumer's pending entries list, while a heartbeat keeps this
consumer's own entries from looking idle; the delivery count from ``XPENDING``, which
grows with each failed try, and the session's count of attempts cut by a worker's death
send an entry that keeps failing to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import MessageEntry
from runtime.logs import fingerprint
from runtime.retry import retrying
from runtime.tasks import cancel_and_wait
from storage import keys
from storage.connection import CONNECTION_ERRORS, is_cluster
from storage.deliveries import Delivery
from storage.hub import RESYNC, UNAVAILABLE, Hub
from storage.store import SessionExpired, Store
from worker.config import WorkerSettings
from worker.groups import ConsumerGroups
from worker.jobs import IdleJobs
from worker.metrics import TAKEOVERS
from worker.model.llm import LLMClient
from worker.reply import MessageAnswerer
from worker.summary import Summarizer
from worker.titles import Titler

logger = logging.getLogger(__name__)


class Worker:
    """One worker process's consumer in the ``workers`` group.

    Args:
        settings: the worker's settings.
        redis: a redis-py asyncio client (``decode_responses=True``).
        llm: the model client.
    """

    def __init__(self, settings: WorkerSettings, redis: Redis[str], llm: LLMClient) -> None:
        self.settings = settings
        self.redis = redis
        self.llm = llm
        self.consumer = settings.consumer_name
        #: The catalog models this worker serves, and their message streams.
        self.models = settings.served_models()
        self.store = Store(redis, settings)
        self.streams = tuple(self.store.streams.streams_of(self.models))
        self.hub = Hub(redis, control_channel=f"{keys.PREFIX}:worker:{self.consumer}")
        self.answerer = MessageAnswerer(settings, redis, llm, self.store, self.hub)
        #: Entries read or claimed and not yet acked, by (stream, entry id).
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._room = asyncio.Event()
        self._room.set()
        #: Set while no entry is in flight: title and summary jobs run only then.
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        #: Set once :meth:`run` has returned.
        self.stopped = asyncio.Event()

    def stop(self) -> None:
        """Stop reading new entries; :meth:`run` then drains what is in flight and returns."""
        self._stopping.set()

    async def run(self, drain_timeout_s: float = 30.0) -> None:
        """Consume until :meth:`stop`.

        In-flight replies get ``drain_timeout_s`` (s) to finish; what is left unfinished
        stays in the pending entries list, handed over for the next takeover of another
        worker, and this worker's consumers leave their groups
        (:meth:`worker.groups.ConsumerGroups.release`).
        """
        self.stopped.clear()
        await self.store.streams.ensure_group(self.models)
        await self.store.pools.join_pools(self.models, self.consumer)
        await self.hub.start()
        jobs = self._job_readers()
        self.groups = ConsumerGroups(
            self.store,
            self.consumer,
            [(s, keys.CONSUMER_GROUP) for s in self.streams] + [(j.stream, j.group) for j in jobs],
            self.settings.consumer_idle_delete_ms,
        )
        loops = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._pool_loop(), name="pools"),
            asyncio.create_task(self._stop_loop(), name="stop"),
            *(asyncio.create_task(job.run(), name=f"{job.kind}:{job.model}") for job in jobs),
        ]
        logger.info(
            "worker %s serving %s on %d partitions",
            self.consumer,
            ", ".join(self.models),
            len(keys.PARTITIONS),
        )
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
            # Nothing reads or holds an entry any more: what is unfinished goes to the
            # next worker at once, and this worker's consumers leave their groups.
            await self.groups.release()
            # It stays in its pools as last seen now: a worker restarting (a deploy) is
            # not taken for a pool gone before MODEL_WAIT_S has passed.
            await self.hub.aclose()
            self.stopped.set()
            logger.info("worker %s stopped", self.consumer)

    def _job_readers(self) -> list[IdleJobs]:
        """The readers of title and summary jobs, as the settings ask: one of each kind
        per model served, so a job reaches only its own model's pool."""
        kinds: list[type[IdleJobs]] = []
        if self.settings.conversation_titles:
            kinds.append(Titler)
        if self.settings.memory_summary:
            kinds.append(Summarizer)
        limiter = self.answerer.generator.limiter
        return [
            kind(self.settings, self.store, self.llm, model, self.consumer, self._idle, limiter)
            for kind in kinds
            for model in self.models
        ]

    # -- reading and claiming ------------------------------------------------------

    def _read_sets(self) -> list[tuple[str, ...]]:
        """The message streams read together by one blocking ``XREADGROUP``.

        One Redis reads them all in one call; on a cluster, a command's keys must share
        a hash slot, so each stream gets its own reader.
        """
        if is_cluster(self.redis):
            return [(stream,) for stream in self.streams]
        return [self.streams]

    async def _read_loop(self, streams: tuple[str, ...]) -> None:
        while not self._stopping.is_set():
            room = self.settings.worker_max_in_flight - len(self._in_flight)
            if room <= 0:
                self._room.clear()
                await self._wait_or_stop(self._room.wait(), limit_s=1.0)
                continue
            try:
                deliveries = await self._read(streams, count=min(room, 100))
            except ResponseError as e:
                if not str(e).startswith("NOGROUP"):
                    raise
                logger.warning("consumer group missing (stream deleted?); creating it again")
                await self.store.streams.ensure_group(self.models)
                continue
            for delivery in deliveries:
                self._spawn(delivery)

    async def _read(self, streams: tuple[str, ...], count: int) -> list[Delivery]:
        """Up to ``count`` new entries of ``streams`` (``XREADGROUP`` with ``>``, blocking
        up to ``read_block_ms``: :meth:`storage.deliveries.Deliveries.read`); none once
        stopping.

        Retried while Redis is unreachable, with the one backoff (at most 5 s apart);
        the first try goes straight to Redis, so a read costs no retry machinery.
        """
        if self._stopping.is_set():
            return []
        with contextlib.suppress(*CONNECTION_ERRORS):  # tried again, and reported, below
            return await self._read_once(streams, count)
        deliveries: list[Delivery] = []
        async for attempt in retrying(on=CONNECTION_ERRORS, wait_max_s=5.0):
            with attempt:
                if self._stopping.is_set():
                    break
                try:
                    deliveries = await self._read_once(streams, count)
                except CONNECTION_ERRORS as e:
                    logger.warning("reading the stream failed: %s", e)
                    raise
        return deliveries

    async def _read_once(self, streams: tuple[str, ...], count: int) -> list[Delivery]:
        return await self.store.deliveries.read(
            streams, self.consumer, count=count, block_ms=self.settings.read_block_ms
        )

    async def _claim_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 2000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.claim_stale()
                # Also trimmed here, not only when a message is queued, so acknowledged
                # entries do not outlive a quiet spell beyond the bound.
                for stream in self.streams:
                    await self.store.streams.trim(stream)
                await self.sweep_lost()
                await self.groups.sweep_if_due()
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
        for stream in self.streams:
            start = "0-0"
            while True:
                start, taken, deleted = await self.store.deliveries.claim(
                    stream, self.consumer, self.settings.claim_idle_ms, start
                )
                if deleted:
                    # Their sessions learn it from lost.lua, when they wait on them.
                    logger.warning("pending entries deleted from %s: %s", stream, deleted)
                for delivery in taken:
                    if delivery.key in self._in_flight:
                        continue
                    logger.info("took over %s %s (delivery %d)", *delivery.key, delivery.deliveries)
                    TAKEOVERS.inc()
                    self._spawn(delivery)
                    claimed += 1
                if start == "0-0":
                    break
        return claimed

    async def sweep_lost(self) -> int:
        """Close the messages whose stream entry is gone (deleted or trimmed by hand,
        lost in a failover) and that no later message waits on, which would otherwise
        find them (see :class:`worker.reply.MessageAnswerer`). A session is looked at once it
        has waited ``3 * claim_idle_ms`` (an entry's consumer is found dead after
        ``claim_idle_ms``), then again as often while it waits.

        Returns:
            How many messages were closed.
        """
        closed = 0
        older_than_ms = 3 * self.settings.claim_idle_ms
        for model in self.models:
            for part in keys.PARTITIONS:
                closed += await self._sweep_lost(part, model, older_than_ms)
        return closed

    async def _sweep_lost(self, part: str, model: str, older_than_ms: int) -> int:
        closed = 0
        for token in await self.store.queue.due_for_sweep(part, older_than_ms, model=model):
            with contextlib.suppress(SessionExpired):
                _, seq = await self.store.queue.close_if_lost(token, model)
                if seq:
                    logger.warning(
                        "seq %d of a session of partition %s: its stream entry is gone; "
                        "closed with an error",
                        seq,
                        part,
                    )
                    closed += 1
        return closed

    async def _pool_loop(self) -> None:
        """Say, as often as the heartbeat, that this worker still serves its models
        (:meth:`storage.pools.Pools.join_pools`): servers refuse the messages of a model
        none serves (``model_unavailable``)."""
        interval = self.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.pools.join_pools(self.models, self.consumer)
            except (*CONNECTION_ERRORS, ResponseError) as e:
                logger.warning("renewing this worker's place in its pools failed: %s", e)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            by_stream: dict[str, list[str]] = {}
            for stream, entry_id in self._in_flight:
                by_stream.setdefault(stream, []).append(entry_id)
            for stream, ids in by_stream.items():
                try:
                    taken = await self.store.streams.heartbeat(stream, self.consumer, ids)
                except (*CONNECTION_ERRORS, ResponseError) as e:
                    logger.warning("heartbeat of in-flight entries failed: %s", e)
                    continue
                for entry_id in taken:
                    task = self._in_flight.get((stream, entry_id))
                    if task is not None:
                        logger.warning("%s %s was taken over by another worker", stream, entry_id)
                        task.cancel()

    # -- stops ---------------------------------------------------------------------

    async def _stop_loop(self) -> None:
        """Stop the replies that clients ask to stop (announced on the stop channel)."""
        async for attempt in retrying(on=(*CONNECTION_ERRORS, ResponseError), wait_max_s=5.0):
            with attempt:
                try:
                    await self._listen_for_stops()
                except (*CONNECTION_ERRORS, ResponseError) as e:
                    logger.warning("stop channel failed: %s", e)
                    raise

    async def _listen_for_stops(self) -> None:
        async with self.hub.subscribe(keys.STOP_CHANNEL) as sub:
            while True:
                payload = await sub.queue.get()
                if payload == UNAVAILABLE:
                    continue
                if payload == RESYNC:
                    await self._recheck_stops()
                    continue
                try:
                    notice = json.loads(payload)
                    stop = self.answerer.stops.get((str(notice["token"]), int(notice["seq"])))
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

    async def _recheck_stops(self) -> None:
        """Stops announced while the connection was down were missed: ask Redis about
        every reply being answered."""
        for (token, seq), event in list(self.answerer.stops.items()):
            with contextlib.suppress(*CONNECTION_ERRORS, ResponseError, SessionExpired):
                if await self.store.sessions.stop_seq(token) >= seq:
                    event.set()

    # -- one entry -----------------------------------------------------------------

    def _spawn(self, delivery: Delivery) -> None:
        key = delivery.key
        task = asyncio.create_task(self._handle(delivery))
        self._in_flight[key] = task
        self._idle.clear()

        def forget(_: asyncio.Task[None]) -> None:
            if self._in_flight.get(key) is task:
                del self._in_flight[key]
            self._room.set()
            if not self._in_flight:
                self._idle.set()

        task.add_done_callback(forget)

    async def _handle(self, entry: Delivery) -> None:
        """Answer one entry; one that cannot be decoded is dead-lettered and acked."""
        try:
            message = MessageEntry.from_fields(entry.fields)
        except ValidationError as e:
            logger.error("undecodable entry %s %s: %s", *entry.key, e.errors(include_url=False))
            await entry.dead_letter("undecodable")
            await entry.ack()
            return
        await self.answerer.answer(entry, message)

    async def _wait_or_stop(self, aw: Awaitable[object], limit_s: float) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=limit_s, return_when="FIRST_COMPLETED")
        for f in (waiter, stopper):
            f.cancel()
