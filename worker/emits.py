"""Batching the worker's reply events: one script call a partition for every event its
replies have ready at once, instead of one call an event.

Each reply awaits its own event (a reply emits one at a time, in order). Events that
arrive while a batch is in flight wait for the next batch, so a lone event goes out at
once, and under load a batch grows with the load: the cost of a round trip is shared by
every reply streaming in the worker, as Nagle's algorithm shares a packet (RFC 896).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from storage import keys
from storage.store import Emit, Fenced, Store


class EmitBatcher:
    """Sends reply events in batches, one :meth:`storage.replies.Replies.emit_many` call
    a partition.

    Args:
        store: the worker's store.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[tuple[Emit, asyncio.Future[str | None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def emit(self, emit: Emit) -> str | None:
        """Publish ``emit``; its event id, or None if its session no longer exists.

        Raises:
            Fenced: another attempt at the reply has begun since.
            redis.exceptions.RedisError: its batch's call failed (the event was not
                emitted).
        """
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((emit, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                by_partition: dict[str, list[tuple[Emit, asyncio.Future[str | None]]]] = (
                    defaultdict(list)
                )
                for item in batch:
                    by_partition[keys.partition(item[0].token)].append(item)
                await asyncio.gather(*(self._send_one(items) for items in by_partition.values()))
        finally:
            self._sender = None

    async def _send_one(self, items: list[tuple[Emit, asyncio.Future[str | None]]]) -> None:
        """One partition's events: each future gets its outcome, or the call's error."""
        try:
            outcomes = await self._store.replies.emit_many([emit for emit, _ in items])
        except Exception as e:  # every reply of the batch learns it; the sender goes on
            for _, future in items:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if future.done():  # its reply was cancelled meanwhile
                continue
            if isinstance(outcome, Fenced):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
