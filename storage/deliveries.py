"""Taking entries of a consumer group's streams, and settling them: the one boundary
between a worker and the Streams commands that deliver its work.

A worker asks :class:`Deliveries` (``store.deliveries``) for what to do next, and
gets :class:`Delivery` objects that settle themselves (``await delivery.ack()``,
``await delivery.dead_letter(reason)``), as taskiq-redis's ``AckableMessage`` does:
the worker keeps its scheduling (how many in flight, when to read, retries) and never
sends a stream command itself. Two kinds of stream are read this way:

- the message streams, in the group :data:`storage.keys.CONSUMER_GROUP`: new entries
  (:meth:`Deliveries.read`) and entries taken over from a dead consumer
  (:meth:`Deliveries.claim`, over :meth:`storage.streams.Streams.claim`, which counts
  no delivery);
- the job streams of titles and summaries, each in its own group: jobs are queued
  (:meth:`Deliveries.queue_job`), read (:meth:`Deliveries.read`) and taken over
  (:meth:`Deliveries.take_over`, which counts a delivery: every try of a job is one).

The rest of the message streams' mechanics (their group, trimming, heartbeats, failed
tries) is :mod:`storage.streams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.base import StoreBase
from storage.streams import Streams, create_group

#: Bound of the dead-letter stream (entries, approximate).
DEAD_LETTER_MAXLEN = 10_000


@dataclass(frozen=True)
class Delivery:
    """An entry of a stream, read or taken over by ``consumer`` in ``group``, that
    settles itself (it fits :class:`worker.reply.Delivery`).

    Attributes:
        redis: the client it settles on.
        consumer: the consumer that holds it (pending with it until acked).
        key: ``(stream, entry id)``.
        fields: the entry's fields.
        deliveries: the entry's delivery count when taken over from another consumer,
            0 when read fresh (``XREADGROUP`` with ``>``: its first delivery).
        group: the consumer group it is pending in (default: the workers' group of the
            message streams).
    """

    redis: Redis[str]
    consumer: str
    key: tuple[str, str]
    fields: dict[str, str]
    deliveries: int
    group: str = keys.CONSUMER_GROUP

    async def ack(self) -> None:
        """``XACK`` the entry: it leaves the group's pending entries list.

        Raises:
            redis.exceptions.RedisError: Redis failed (the entry stays pending).
        """
        stream, id_ = self.key
        await self.redis.xack(stream, self.group, id_)  # type: ignore[no-untyped-call]

    async def dead_letter(self, reason: str) -> str:
        """Add the entry to the dead-letter stream (:data:`storage.keys.DEAD_LETTER_STREAM`,
        bounded to about :data:`DEAD_LETTER_MAXLEN`), with its fields, where it was, why
        (``reason``) and who gave up. It is not acked here.

        Returns:
            The id of its record in the dead-letter stream.

        Raises:
            redis.exceptions.RedisError: Redis failed (nothing was added).
        """
        stream, id_ = self.key
        record: dict[str, str] = {
            **self.fields,
            "stream": stream,
            "entry_id": id_,
            "reason": reason,
            "consumer": self.consumer,
        }
        dead: str = await self.redis.xadd(
            keys.DEAD_LETTER_STREAM, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True
        )
        return dead

    async def withdraw(self, record: str) -> None:
        """Take record ``record`` (from :meth:`dead_letter`) out of the dead-letter
        stream again: giving up turned out to close nothing.

        Raises:
            redis.exceptions.RedisError: Redis failed (the record stays).
        """
        await self.redis.xdel(keys.DEAD_LETTER_STREAM, record)


class Takeover(NamedTuple):
    """What one :meth:`Deliveries.claim` took over.

    Attributes:
        next_start: where the next call starts (``"0-0"``: the scan is complete).
        deliveries: the entries taken over, held by the claiming consumer now.
        deleted: ids that were pending but whose entries are gone from the stream.
    """

    next_start: str
    deliveries: list[Delivery]
    deleted: list[str]


class Deliveries(StoreBase):
    """Entries delivered to a worker's consumers, and the job streams' queueing (a part
    of :class:`storage.store.Store`).

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: the store's settings.
        streams: the message streams' part whose takeovers :meth:`claim` hands out
            (None: one of its own).
    """

    def __init__(
        self, redis: Redis[str], settings: CommonSettings, streams: Streams | None = None
    ) -> None:
        super().__init__(redis, settings)
        self.streams = streams if streams is not None else Streams(redis, settings)

    async def read(
        self,
        streams: Sequence[str],
        consumer: str,
        *,
        count: int,
        block_ms: int,
        group: str = keys.CONSUMER_GROUP,
    ) -> list[Delivery]:
        """Up to ``count`` new entries of ``streams`` for ``consumer`` in ``group``: one
        ``XREADGROUP`` with ``>``, blocking up to ``block_ms`` (ms) while there is none.
        The streams of one call must share a hash slot on a cluster.

        Returns:
            The entries read, pending with ``consumer`` now, each with a delivery count
            of 0 (read fresh); ``[]`` once ``block_ms`` passed with none.

        Raises:
            redis.exceptions.ResponseError: ``NOGROUP``: a stream or its group is
                missing (create it again); any other error of Redis.
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError:
                Redis is unreachable (retrying is the caller's).
        """
        response = await self.redis.xreadgroup(
            group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
        )
        return [
            Delivery(self.redis, consumer, (stream, entry_id), fields, 0, group)
            for stream, batch in response or []
            for entry_id, fields in batch
        ]

    async def claim(
        self, stream: str, consumer: str, min_idle_ms: int, start: str, count: int = 100
    ) -> Takeover:
        """Take over for ``consumer`` up to ``count`` entries of message stream
        ``stream`` idle for ``min_idle_ms`` (ms) in any consumer's pending entries list,
        scanning from ``start`` (``"0-0"`` at first), without counting a delivery
        (:meth:`storage.streams.Streams.claim`).

        Raises:
            redis.exceptions.RedisError: Redis failed, or the script did.
        """
        next_start, entries, deleted = await self.streams.claim(
            stream, consumer, min_idle_ms, start, count
        )
        taken = [
            Delivery(self.redis, consumer, (stream, e.entry_id), e.fields, e.deliveries)
            for e in entries
        ]
        return Takeover(next_start, taken, deleted)

    async def create_group(self, stream: str, group: str) -> None:
        """Create consumer group ``group`` of ``stream`` (and the stream) if missing,
        from the start (id 0), so entries added before any consumer ran are read.

        Raises:
            redis.exceptions.ResponseError: any error but ``BUSYGROUP`` (it exists).
        """
        await create_group(self.redis, stream, group)

    async def take_over(
        self, stream: str, group: str, consumer: str, min_idle_ms: int
    ) -> Delivery | None:
        """Take over for ``consumer`` one entry of job stream ``stream`` idle for
        ``min_idle_ms`` (ms) in ``group``'s pending entries list (its worker is dead,
        or its try failed). The takeover counts a delivery (``XAUTOCLAIM`` without
        ``JUSTID``); the count comes from ``XPENDING``, which ``XAUTOCLAIM`` does not
        give.

        Returns:
            The entry, with its delivery count (this one included; 1 if it is no longer
            pending by the time it is asked); None if none is idle that long.

        Raises:
            redis.exceptions.RedisError: Redis failed (``NOGROUP``: the group is missing).
        """
        claimed = await self.redis.xautoclaim(stream, group, consumer, min_idle_ms, count=1)
        entries = claimed[1] if claimed else []
        if not entries:
            return None
        entry_id, fields = entries[0]
        pending = await self.redis.xpending_range(
            stream, group, min=entry_id, max=entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        return Delivery(self.redis, consumer, (stream, entry_id), fields, deliveries, group)

    async def queue_job(self, stream: str, token: str, maxlen: int) -> str:
        """Queue a job for session ``token`` in job stream ``stream``, bounded to about
        ``maxlen`` entries (``XADD ... MAXLEN ~``).

        Returns:
            The job's entry id.

        Raises:
            redis.exceptions.RedisError: Redis failed (nothing was queued).
        """
        entry_id: str = await self.redis.xadd(
            stream, {"token": token}, maxlen=maxlen, approximate=True
        )
        return entry_id
