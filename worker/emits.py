"""Batching the worker's reply events: one script call for every event its replies have
ready at once (one a slot on a Redis Cluster), instead of one call an event.

Each reply awaits its own event (a reply emits one at a time, in order). Events that
arrive while a batch is in flight wait for the next batch (:class:`storage.batching.Batcher`),
so a lone event goes out at once, and under load a batch grows with the load.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage import keys
from storage.batching import BATCH_LIMIT, Batcher
from storage.connection import is_cluster
from storage.store import Emit, Fenced, Store


class EmitBatcher:
    """Sends reply events in batches, one :meth:`storage.replies.Replies.emit_many` call
    a batch: on a Redis Cluster the events of one partition (one slot), elsewhere any.

    Args:
        store: the worker's store.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        group = keys.partition if is_cluster(store.redis) else _anywhere
        self._batcher: Batcher[Emit, str | None] = Batcher(
            self._send, lambda emit: group(emit.token), BATCH_LIMIT
        )

    async def emit(self, emit: Emit) -> str | None:
        """Publish ``emit``; its event id, or None if its session no longer exists.

        Raises:
            Fenced: another attempt at the reply has begun since.
            redis.exceptions.RedisError: its batch's call failed (the event was not
                emitted).
        """
        return await self._batcher.submit(emit)

    async def _send(self, emits: Sequence[Emit]) -> Sequence[str | Fenced | None]:
        return await self._store.replies.emit_many(emits)


def _anywhere(_token: str) -> str:
    return ""
