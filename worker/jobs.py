"""Low-priority jobs of a worker (titles, summaries): read one at a time from a stream of
their own, only while the worker has no reply in flight, so a job never delays a reply.

Each kind of job has a stream and a consumer group; a job is a session's token. A job
left pending by a dead worker is taken over after :data:`CLAIM_IDLE_MS`; one that fails
is dropped (acked) with a warning: the next reply that calls for it queues another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger(__name__)

#: A job pending this long (ms) is taken over: its worker is taken for dead.
CLAIM_IDLE_MS = 60_000


class IdleJobs:
    """One worker's reader of one kind of job; a subclass says which (:attr:`stream`,
    :attr:`group`) and does each (:meth:`handle`).

    Args:
        redis: the worker's client.
        consumer: the worker's consumer name.
        idle: set while the worker has no reply in flight (jobs wait for it).
    """

    #: The jobs' stream, and the workers' consumer group on it.
    stream: ClassVar[str]
    group: ClassVar[str]

    def __init__(self, redis: Redis[str], consumer: str, idle: asyncio.Event) -> None:
        self.redis = redis
        self.consumer = consumer
        self.idle = idle

    async def handle(self, token: str) -> None:
        """Do the job of session ``token``; errors of the model are its own to log.

        Raises:
            redis.exceptions.RedisError: Redis failed (the job stays pending).
        """
        raise NotImplementedError

    async def run(self) -> None:
        """Take jobs one at a time, between replies, until cancelled."""
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        while True:
            await self.idle.wait()
            try:
                job = await self._next()
                if job is None:
                    continue
                entry_id, token = job
                await self.handle(token)
                await self.redis.xack(self.stream, self.group, entry_id)  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as e:
                logger.warning("%s jobs: Redis unavailable: %s", self.group, e)
                await asyncio.sleep(1.0)

    async def _next(self) -> tuple[str, str] | None:
        """A job taken over from a dead worker, else a new one (waiting up to 1 s)."""
        claimed = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, CLAIM_IDLE_MS, count=1
        )
        entries = claimed[1] if claimed else []
        if not entries:
            read = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=1, block=1000
            )
            entries = read[0][1] if read else []
        if not entries:
            return None
        entry_id, fields = entries[0]
        return entry_id, str(fields.get("token", ""))
