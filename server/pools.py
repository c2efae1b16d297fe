"""What a server knows of the worker pools: whether a model is served now, and the loop
that closes the messages of a model nobody serves and exports each model's backlog."""

from __future__ import annotations

import asyncio
import logging

from runtime.tasks import cancel_and_wait
from server.config import ServerSettings
from server.metrics import MODEL_QUEUE_LAG, MODEL_WORKERS
from storage import keys
from storage.connection import REDIS_DOWN
from storage.store import Store

logger = logging.getLogger(__name__)

#: How long (s) a model found served is taken as served without asking Redis again.
_SERVED_FOR_S = 1.0


class PoolWatch:
    """Worker pools as this server sees them (see :mod:`storage.pools`).

    A model is served while a worker of its pool has said it is alive within
    ``MODEL_WAIT_S``; with ``MODEL_WAIT_S`` 0, every model counts as served (messages
    wait for a worker however long).

    Every server reads the streams of an unserved model under one consumer name,
    :data:`storage.keys.SERVER_CONSUMER`: a server has no identity that outlives its
    process, and a name a process would add to 16 groups a model at each restart, for
    ever. One name is safe for many servers: a consumer name only says who holds an
    entry, each read hands out entries no other read gets, and an entry held by a
    server is taken over only once idle for ``MODEL_WAIT_S``, whoever took it. When it
    holds nothing and has been idle a while, the workers' sweep deletes it
    (:mod:`storage.consumers`); its next read makes it again.

    Args:
        store: the server's store.
        settings: the server's settings (the catalog, ``MODEL_WAIT_S``).
    """

    #: The consumer name under which servers take unserved messages to close them.
    consumer = keys.SERVER_CONSUMER

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings
        self._served_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def served(self, model: str) -> bool:
        """Whether a live worker serves ``model`` (a catalog id). A yes is remembered
        for a second; a no is asked again each time, so a pool that comes back is seen
        at once.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable.
        """
        wait_s = self.settings.model_wait_s
        if not wait_s:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() - self._served_at.get(model, -_SERVED_FOR_S) < _SERVED_FOR_S:
            return True
        if await self.store.pools.pool_workers(model, within_ms=int(wait_s * 1000)) > 0:
            self._served_at[model] = loop.time()
            return True
        return False

    def start(self) -> None:
        """Start the watch loop (:meth:`watch_once` every ``MODEL_WAIT_S / 4``, at least
        every 5 s)."""
        self._task = asyncio.create_task(self._run(), name="pools")

    async def aclose(self) -> None:
        """Stop the watch loop."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        wait_s = self.settings.model_wait_s
        interval = min(max(wait_s / 4, 0.25), 5.0) if wait_s else 5.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.watch_once()
            except REDIS_DOWN as e:
                logger.warning("watching the worker pools failed: %s", e)
            except Exception:
                logger.exception("watching the worker pools failed")

    async def watch_once(self) -> int:
        """Export each model's live workers and backlog; close the messages of each
        model nobody has served for ``MODEL_WAIT_S`` (``model_unavailable``).

        Returns:
            How many messages were closed.
        """
        wait_s = self.settings.model_wait_s
        within_ms = int((wait_s or 30.0) * 1000)
        closed = 0
        for offer in self.settings.models:
            workers = await self.store.pools.pool_workers(offer.id, within_ms)
            MODEL_WORKERS.labels(offer.id).set(workers)
            if workers == 0 and wait_s:
                closed += await self.store.pools.close_unserved(offer.id, self.consumer, within_ms)
            waiting, pending = await self.store.pools.backlog(offer.id)
            MODEL_QUEUE_LAG.labels(offer.id).set(waiting + pending)
        if closed:
            logger.warning("closed %d messages of unserved models (model_unavailable)", closed)
        return closed
