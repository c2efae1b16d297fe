"""Streams mechanics of the message streams: the consumer group, trimming, pending
entries, failed tries, takeovers and heartbeats.

Each partition has one message stream read by the workers' consumer group
(:data:`storage.keys.CONSUMER_GROUP`). Entries stay pending until ``XACK``; a live
worker keeps its in-flight entries fresh (:meth:`Streams.heartbeat`), so that
:meth:`Streams.claim` (``XAUTOCLAIM``) takes over only a dead consumer's entries.
Neither a takeover nor a heartbeat counts a delivery (both use ``JUSTID``); failed
tries are counted by :meth:`Streams.count_failure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import (  # type: ignore[attr-defined]  # stale stubs: OutOfMemoryError
    OutOfMemoryError,
    ResponseError,
)

from storage import keys
from storage.base import StoreBase
from storage.scripts import ClaimStatus, FailStatus, HeartbeatStatus, Script, TrimStatus

#: Trim strategies (:meth:`Streams.trim_mode`): XTRIM's ``ACKED`` (Redis >= 8.2), else by
#: ``MINID`` below the oldest entry the consumer group still needs.
TRIM_ACKED, TRIM_MINID = "acked", "minid"


class ClaimedEntry(NamedTuple):
    """An entry taken over by :meth:`Streams.claim`: its id, its fields, and its delivery
    count (failed tries plus one; takeovers do not count)."""

    entry_id: str
    fields: dict[str, str]
    deliveries: int


class Claimed(NamedTuple):
    """What one :meth:`Streams.claim` did.

    Attributes:
        next_start: where the next call starts (``"0-0"``: the scan is complete).
        entries: the entries taken over.
        deleted: ids that were pending but whose entries are gone from the stream
            (``XAUTOCLAIM`` removed them from the pending entries list).
    """

    next_start: str
    entries: list[ClaimedEntry]
    deleted: list[str]


async def create_group(redis: Redis[str], stream: str, group: str) -> None:
    """Create consumer group ``group`` of ``stream`` (and the stream) if missing, from
    the start (id 0), so entries added before any consumer ran are read.

    Raises:
        redis.exceptions.ResponseError: any error but ``BUSYGROUP`` (it exists).
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if not str(e).startswith("BUSYGROUP"):
            raise


class Streams(StoreBase):
    """The message streams' mechanics (a part of :class:`storage.store.Store`)."""

    #: The trim strategy, once asked (:meth:`trim_mode`).
    _trim_mode: str | None = None

    @cached_property
    def _trim(self) -> Script[TrimStatus]:
        return Script(self.redis, "trim_stream.lua", TrimStatus, trims=True)

    @cached_property
    def _fail(self) -> Script[FailStatus]:
        return Script(self.redis, "fail.lua", FailStatus)

    @cached_property
    def _claim(self) -> Script[ClaimStatus]:
        return Script(self.redis, "claim.lua", ClaimStatus)

    @cached_property
    def _heartbeat(self) -> Script[HeartbeatStatus]:
        return Script(self.redis, "heartbeat.lua", HeartbeatStatus)

    def streams_of(self, models: Sequence[str] | None = None) -> list[str]:
        """The message streams of ``models`` (catalog ids; None: every model of the
        catalog), each model's in partition order."""
        ids = models if models is not None else [m.id for m in self.settings.models]
        return [stream for model in ids for stream in keys.model_streams(model)]

    async def ensure_group(self, models: Sequence[str] | None = None) -> None:
        """Create the workers' consumer group (and the stream) of every partition of
        ``models`` (None: every model of the catalog) if missing.

        A group starts at id 0 so messages queued before any worker ever ran are read.
        A Redis out of memory refuses even to say that a group exists: then it is
        asked (``XINFO GROUPS``), so a process can start while memory is full.

        Raises:
            redis.exceptions.ResponseError: any error but ``BUSYGROUP`` (already exists).
        """
        for stream in self.streams_of(models):
            try:
                await create_group(self.redis, stream, keys.CONSUMER_GROUP)
            except OutOfMemoryError:
                if not await self._group_of(stream):
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
            stream = self.streams_of()[0]
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
        _, removed = await self._trim(
            keys=[stream], args=[keys.CONSUMER_GROUP, self.settings.message_stream_maxlen, mode]
        )
        return int(removed)

    async def group_exists(self, models: Sequence[str] | None = None) -> bool:
        """Whether every partition's message stream of ``models`` (None: every model of
        the catalog) and its consumer group exist."""
        for stream in self.streams_of(models):
            if not await self._group_of(stream):
                return False
        return True

    async def _group_of(self, stream: str) -> bool:
        try:
            groups = await self.redis.xinfo_groups(stream)  # type: ignore[no-untyped-call]
        except ResponseError:
            return False
        return any(g["name"] == keys.CONSUMER_GROUP for g in groups)

    async def pending_count(self, models: Sequence[str] | None = None) -> int:
        """How many entries of ``models`` (None: every model of the catalog), over every
        partition, are read but not yet acked."""
        total = 0
        for stream in self.streams_of(models):
            summary = await self.redis.xpending(stream, keys.CONSUMER_GROUP)  # type: ignore[no-untyped-call]
            total += int(summary["pending"])
        return total

    async def deliveries(self, stream: str, entry_id: str) -> int:
        """The delivery count of a pending entry (0 if it is not pending)."""
        info = await self.redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(info[0]["times_delivered"]) if info else 0

    async def holder(self, stream: str, entry_id: str) -> str | None:
        """The consumer that holds a pending entry; None if it is not pending (acked)."""
        info = await self.redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return str(info[0]["consumer"]) if info else None

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
        status, count = await self._fail(
            keys=[keys.session_key(token), stream],
            args=[attempt, entry_id, keys.CONSUMER_GROUP, consumer],
        )
        return int(count) if status is FailStatus.COUNTED else 0

    async def claim(
        self, stream: str, consumer: str, min_idle_ms: int, start: str, count: int = 100
    ) -> Claimed:
        """Take over for ``consumer`` up to ``count`` entries of ``stream`` idle for
        ``min_idle_ms`` in any consumer's pending entries list, scanning from ``start``
        (``"0-0"`` at first), without counting a delivery (see ``claim.lua``)."""
        _, (next_start, entries, deleted) = await self._claim(
            keys=[stream], args=[keys.CONSUMER_GROUP, consumer, min_idle_ms, start, count]
        )
        return Claimed(
            str(next_start),
            [
                ClaimedEntry(str(entry_id), dict(zip(flat[::2], flat[1::2], strict=True)), int(n))
                for entry_id, flat, n in entries
            ],
            [str(entry_id) for entry_id in deleted],
        )

    async def heartbeat(self, stream: str, consumer: str, entry_ids: list[str]) -> set[str]:
        """Reset the idle time of ``consumer``'s in-flight entries of ``stream``, without
        counting a delivery, so :meth:`claim` leaves them alone (see ``heartbeat.lua``).

        Returns:
            The ids of ``entry_ids`` that another consumer holds now: taken over (they are
            left with it). An entry no longer pending is not among them: it was
            acknowledged (the script that records a reply acks its entry, and the reply's
            task may still be finishing, waiting for a replica or queueing a job); one
            taken over and already acknowledged by the other consumer is not either, and
            its next write from here is fenced.
        """
        _, mine = await self._heartbeat(
            keys=[stream], args=[keys.CONSUMER_GROUP, consumer, *entry_ids]
        )
        left = set(entry_ids) - {str(entry_id) for entry_id in mine}
        return {e for e in left if await self.holder(stream, e) not in (None, consumer)}
