"""The consumer groups a worker reads, and its care of their consumers: its own handed
back and deleted when it stops, and the idle ones of every group swept while it runs,
so that a group's consumers stay about as many as its live readers however often
workers restart or crash (the rule, and why it loses nothing: :mod:`storage.consumers`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import ResponseError

from storage.connection import CONNECTION_ERRORS
from storage.store import Store

logger = logging.getLogger(__name__)


class ConsumerGroups:
    """A worker's consumer in the groups it reads.

    Args:
        store: the worker's store.
        consumer: the worker's consumer name.
        groups: the ``(stream, group)`` pairs the worker reads: every message stream of
            its models, and the streams of its jobs.
        idle_delete_ms: a consumer of these groups idle this long (ms) that holds no
            entry is deleted (``CONSUMER_IDLE_DELETE_MS``); the groups are swept every
            quarter of it.
    """

    def __init__(
        self,
        store: Store,
        consumer: str,
        groups: Sequence[tuple[str, str]],
        idle_delete_ms: int,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.groups = tuple(groups)
        self.idle_delete_ms = idle_delete_ms
        self._swept_at: float | None = None

    async def release(self) -> int:
        """Hand this consumer's pending entries of every group to the heir, then delete
        it (:meth:`storage.consumers.Consumers.release`); call it once the worker reads
        no more. Best effort: if Redis fails, what is left is taken over and swept later.

        Returns:
            How many entries were handed over.
        """
        handed = 0
        try:
            for stream, group in self.groups:
                released = await self.store.consumers.release(stream, group, self.consumer)
                handed += released.handed
        except (*CONNECTION_ERRORS, ResponseError) as e:
            logger.warning("handing back this worker's pending entries failed: %s", e)
        if handed:
            logger.info("handed %d unfinished entries to the next worker", handed)
        return handed

    async def sweep_if_due(self) -> list[str]:
        """Delete the consumers of every group idle for ``idle_delete_ms`` that hold no
        pending entry, if the last sweep is a quarter of that old (or there was none).

        Returns:
            The names of the consumers deleted (with repeats: one a group).

        Raises:
            redis.exceptions.RedisError: Redis is unreachable, or a script failed.
        """
        now = asyncio.get_running_loop().time()
        if self._swept_at is not None and now - self._swept_at < self.idle_delete_ms / 4000:
            return []
        self._swept_at = now
        deleted: list[str] = []
        for stream, group in self.groups:
            names = await self.store.consumers.sweep_consumers(stream, group, self.idle_delete_ms)
            if names:
                logger.info("deleted idle consumers of %s %s: %s", stream, group, names)
            deleted += names
        return deleted
