"""The consumers of the consumer groups: a stopping worker's handed back and deleted,
idle ones swept, so that a group's consumers stay about as many as its live readers.

Every name that ever reads a group (``XREADGROUP``), or takes over in it
(``XAUTOCLAIM``, ``XCLAIM``), stays one of its consumers until ``XGROUP DELCONSUMER``.
Each worker process has a name of its own (``CONSUMER_NAME``, ``<host>-<pid>`` by
default), so without deletes every restart would add a consumer to each group it reads
(16 partitions a model, and the job groups), for ever.

The one rule: **a consumer is deleted only in the same atomic step (a script) that finds
it holds no pending entry.** ``XGROUP DELCONSUMER`` drops the consumer's pending entries
from the group, and nothing delivers them again (the group has read past them): the
messages they queue would be lost, which invariant 8 forbids ("nothing accepted is
dropped in silence"). Checked by one command and deleted by another, an entry read by
the consumer in between (a late blocking read) would be lost that way. A consumer that
still holds entries is kept until they are taken over; one deleted while alive costs
nothing, as its next read or takeover makes it again (a blocking read that was waiting
too: its entry goes to the consumer made anew).

- A worker that stops cleanly hands its unfinished entries to one shared consumer,
  :data:`storage.keys.HEIR_CONSUMER`, with an idle time past every takeover threshold,
  so the next takeover of any live worker takes them at once, and deletes its own
  consumer (:meth:`Consumers.release`).
- Workers sweep the groups they read for consumers idle past a bound that hold no entry:
  those of crashed workers (once their entries are taken over), of servers, and the
  heir (:meth:`Consumers.sweep_consumers`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Final, NamedTuple

from storage import keys
from storage.base import StoreBase
from storage.scripts import ReleaseStatus, Script, SweepStatus

#: The idle time (ms) given to the entries a stopping worker hands over: a day, past
#: any takeover threshold (``CLAIM_IDLE_MS``, the jobs', ``MODEL_WAIT_S``).
HANDED_IDLE_MS: Final = 86_400_000


class Released(NamedTuple):
    """What one :meth:`Consumers.release` did.

    Attributes:
        handed: pending entries handed to :data:`storage.keys.HEIR_CONSUMER`.
        deleted: whether the consumer was deleted (not if the group is gone, or if the
            consumer is the heir itself and holds entries).
    """

    handed: int
    deleted: bool


class Consumers(StoreBase):
    """The consumers of any group (a part of :class:`storage.store.Store`)."""

    @cached_property
    def _release(self) -> Script[ReleaseStatus]:
        return Script(self.redis, "release.lua", ReleaseStatus)

    @cached_property
    def _sweep_consumers(self) -> Script[SweepStatus]:
        return Script(self.redis, "sweep_consumers.lua", SweepStatus)

    async def release(self, stream: str, group: str, consumer: str) -> Released:
        """Hand ``consumer``'s pending entries of ``stream``'s ``group`` to
        :data:`storage.keys.HEIR_CONSUMER`, taken over at the next takeover of any live
        consumer (idle :data:`HANDED_IDLE_MS`, no delivery counted), then delete it
        (see ``release.lua``). Call it once the consumer reads no more.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable, or the script failed.
        """
        status, handed = await self._release(
            keys=[stream], args=[group, consumer, keys.HEIR_CONSUMER, HANDED_IDLE_MS]
        )
        return Released(int(handed or 0), status is ReleaseStatus.RELEASED)

    async def sweep_consumers(self, stream: str, group: str, idle_ms: int) -> list[str]:
        """Delete the consumers of ``stream``'s ``group`` idle for ``idle_ms`` (ms, since
        their last read or takeover) that hold no pending entry (see
        ``sweep_consumers.lua``). A missing stream or group has none.

        Returns:
            The names of the consumers deleted.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable, or the script failed.
        """
        status, names = await self._sweep_consumers(keys=[stream], args=[group, idle_ms])
        if status is SweepStatus.NO_GROUP:
            return []
        return [str(name) for name in names]
