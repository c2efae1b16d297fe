"""Worker pools per model: who serves each model, how far behind each is, and closing
the messages of a model that nobody serves.

Each model of the catalog (:mod:`runtime.catalog`) has its own message streams, one a
partition (:func:`storage.keys.model_streams`), read by the workers that serve it. A
worker says it is alive in each of its models' pools (:func:`storage.keys.pool_key`, a
sorted set scored by time) as often as it heartbeats. A model whose pool has been empty
for a while is unavailable: servers refuse its new messages and close those waiting
with ``model_unavailable`` (:meth:`Pools.close_unserved`), rather than let them wait for
ever. One key a model, read by plain commands, so a pool is legal on a Redis Cluster
whatever slot it hashes to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from protocol.wire import ErrorCode, ErrorEvent, MessageEntry
from runtime.config import CommonSettings
from storage import keys
from storage.base import StoreBase
from storage.replies import NotYourTurn, Replies
from storage.sessions import SessionExpired

#: A pool member not heard from for a day leaves the set (its worker is long gone).
_FORGET_MS = 86_400_000

#: What a message of a model that nobody serves is closed with.
UNSERVED = ErrorEvent(
    code=ErrorCode.MODEL_UNAVAILABLE,
    detail="no worker serves this conversation's model now; choose another model or send "
    "the message again later",
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Backlog(NamedTuple):
    """How far behind a model's workers are, over its partitions.

    Attributes:
        waiting: entries queued and not yet read by any worker (the groups' ``lag``).
        pending: entries read and not yet acknowledged (being answered, or held by a
            dead worker until taken over).
    """

    waiting: int
    pending: int


class Pools(StoreBase):
    """Worker pools per model (a part of :class:`storage.store.Store`).

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
        replies: the store's replies part, which closes the messages nobody serves
            (:meth:`close_unserved`).
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings, replies: Replies) -> None:
        super().__init__(redis, settings)
        self.replies = replies

    async def join_pools(self, models: Sequence[str], consumer: str) -> None:
        """Record that ``consumer`` serves ``models`` now; forget members silent for a day."""
        now = _now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zadd(keys.pool_key(model), {consumer: now})
                pipe.zremrangebyscore(keys.pool_key(model), "-inf", now - _FORGET_MS)
            await pipe.execute()

    async def pool_workers(self, model: str, within_ms: int) -> int:
        """How many workers of ``model``'s pool were alive within the last ``within_ms``."""
        count: int = await self.redis.zcount(keys.pool_key(model), _now_ms() - within_ms, "+inf")
        return count

    async def backlog(self, model: str) -> Backlog:
        """What ``model``'s workers have yet to finish, over its partitions (``XINFO
        GROUPS``: each stream's ``lag`` and ``pending``)."""
        waiting = pending = 0
        for stream in keys.model_streams(model):
            try:
                groups = await self.redis.xinfo_groups(stream)  # type: ignore[no-untyped-call]
            except ResponseError:
                continue  # no stream yet: nothing queued
            for group in groups:
                if group["name"] == keys.CONSUMER_GROUP:
                    waiting += int(group.get("lag") or 0)
                    pending += int(group["pending"])
        return Backlog(waiting, pending)

    async def close_unserved(self, model: str, consumer: str, idle_ms: int) -> int:
        """Close every message waiting for ``model`` with a ``model_unavailable`` error:
        call it once nobody has served the model for a while.

        ``consumer`` reads, in each of the model's streams, the entries nobody has read
        and takes over those pending for ``idle_ms`` (their worker is gone); each is
        closed in the session's order and acknowledged in the same script
        (:meth:`storage.replies.Replies.finish`, with no attempt: any attempt still
        running is fenced off). An entry whose session still waits on an earlier
        message stays pending with ``consumer``, and is closed by a later call.

        Returns:
            How many messages were closed.
        """
        closed = 0
        for stream in keys.model_streams(model):
            for entry_id, fields in await self._unserved_entries(stream, consumer, idle_ms):
                try:
                    entry = MessageEntry.from_fields(fields)
                except ValidationError:
                    await self.redis.xack(stream, keys.CONSUMER_GROUP, entry_id)  # type: ignore[no-untyped-call]
                    continue
                event = UNSERVED.model_copy(update={"message_id": entry.message_id})
                try:
                    if await self.replies.finish(entry, None, event, "", ack=(stream, entry_id)):
                        closed += 1
                except (NotYourTurn, SessionExpired):
                    continue  # SessionExpired: acked all the same
        return closed

    async def _unserved_entries(
        self, stream: str, consumer: str, idle_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        """``stream``'s entries pending for ``idle_ms`` (taken over by ``consumer``),
        then those nobody has read (read by ``consumer``), oldest first; at most 1,000
        of each a call."""
        entries: list[tuple[str, dict[str, str]]] = []
        try:
            start = "0-0"
            for _ in range(10):
                start, claimed, *_ = await self.redis.xautoclaim(
                    stream, keys.CONSUMER_GROUP, consumer, idle_ms, start, count=100
                )
                entries += [(str(i), dict(f)) for i, f in claimed if f]
                if start == "0-0":
                    break
            for _ in range(10):
                read = await self.redis.xreadgroup(
                    keys.CONSUMER_GROUP, consumer, {stream: ">"}, count=100
                )
                batch = read[0][1] if read else []
                entries += [(str(i), dict(f)) for i, f in batch if f]
                if len(batch) < 100:
                    break
        except ResponseError as e:
            if not str(e).startswith("NOGROUP"):
                raise
        return entries
