"""How many sockets a session holds, over every server process: leases in Redis.

Each socket holds a lease, a member of the session's sorted set
``parley:sockets:{p}:<token>`` (the session's hash tag, so it lives on the session's
node of a Redis Cluster) scored by its expiry in Redis's own clock (ms). A socket is
accepted only while fewer than ``max_sockets`` unexpired leases exist; its server
renews it every third of ``lease_seconds`` and removes it when the socket closes. The
leases of a server process that dies expire after ``lease_seconds``, and so does the
key once every lease has.

A lease is taken by ``admit.lua`` in its "hold" mode (the admission limits' script:
expired leases dropped, this one added if fewer than ``max_sockets`` remain) and renewed
by ``renew.lua``. Expiry times come from Redis's ``TIME`` inside the scripts, so the
servers' clocks never need to agree.

The process renews every lease it holds in one round: one ``renew.lua`` call for all the
keys of one hash tag (a partition's sessions share one), so the cost of idle sockets
grows with the partitions and addresses, not with the sockets. Other leases of the same
form (a client address's sockets, :class:`server.admission.SocketAdmission`) are renewed
with them (:meth:`SocketLeases.track`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Final

from redis.asyncio import Redis

from runtime.tasks import cancel_and_wait
from storage import keys
from storage.connection import REDIS_DOWN
from storage.scripts import AdmitStatus, RenewStatus, Script

logger = logging.getLogger(__name__)

#: Leases renewed by one script call, at most: a round's calls go one after another, so
#: no call holds Redis (or the process's event loop) long enough to delay a reply.
_RENEW_CHUNK: Final = 200


def leases_key(token: str) -> str:
    """The sorted set of a session's socket leases, under the session's hash tag."""
    return f"{keys.PREFIX}:sockets:{{{keys.partition(token)}}}:{token}"


class SocketLeases:
    """The socket leases held by one server process, renewed in the background.

    Args:
        redis: the process's client.
        max_sockets: sockets one session may hold at once, over every server.
        lease_seconds: a lease lapses this long (s) after its last renewal.
    """

    def __init__(self, redis: Redis[str], *, max_sockets: int, lease_seconds: float) -> None:
        self._redis = redis
        self.max_sockets = max_sockets
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._admit = Script(redis, "admit.lua", AdmitStatus)
        self._renew = Script(redis, "renew.lua", RenewStatus)
        # hash tag -> lease set key -> lease ids (dicts: ordered sets)
        self._held: dict[str, dict[str, dict[str, None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing the held leases every third of the lease time."""
        self._task = asyncio.create_task(self._renew_forever(), name="socket-leases")

    async def aclose(self) -> None:
        """Stop renewing (the leases still held lapse by themselves)."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def acquire(self, token: str) -> str | None:
        """A new lease of the session ``token``; None if it already holds ``max_sockets``.

        Raises:
            redis.exceptions.RedisError: Redis failed.
        """
        lease = uuid.uuid4().hex
        status, _ = await self._admit(
            keys=[leases_key(token)], args=["hold", self.max_sockets, self._lease_ms, lease]
        )
        if status is AdmitStatus.REFUSED:
            return None
        self.track(leases_key(token), lease)
        return lease

    async def release(self, token: str, lease: str) -> None:
        """Give back a lease; if Redis fails, it lapses after the lease time instead."""
        self.untrack(leases_key(token), lease)
        try:
            await self._redis.zrem(leases_key(token), lease)
        except REDIS_DOWN as e:
            logger.warning("could not release a socket lease (it will lapse): %s", e)

    def track(self, key: str, lease: str) -> None:
        """Renew ``lease`` of the sorted set ``key`` (taken by ``admit.lua``'s "hold"
        mode, with this lease time) with the others, until :meth:`untrack`."""
        self._held.setdefault(keys.hash_tag(key), {}).setdefault(key, {})[lease] = None

    def untrack(self, key: str, lease: str) -> None:
        """Stop renewing ``lease`` of ``key`` (the caller removes it from Redis)."""
        tag = keys.hash_tag(key)
        sets = self._held.get(tag, {})
        held = sets.get(key, {})
        held.pop(lease, None)
        if not held:
            sets.pop(key, None)
        if not sets:
            self._held.pop(tag, None)

    async def renew(self) -> None:
        """Renew every lease this process holds: one ``renew.lua`` call for the lease sets
        of one hash tag, split in calls of at most :data:`_RENEW_CHUNK` leases, one call
        after another.

        Raises:
            redis.exceptions.RedisError: Redis failed (the next round tries again).
        """
        for sets in list(self._held.values()):
            chunk: list[tuple[str, list[str]]] = []
            size = 0
            for key, leases in list(sets.items()):
                ids = list(leases)
                for start in range(0, len(ids), _RENEW_CHUNK):
                    part = ids[start : start + _RENEW_CHUNK]
                    if size + len(part) > _RENEW_CHUNK and chunk:
                        await self._renew_chunk(chunk)
                        chunk, size = [], 0
                    chunk.append((key, part))
                    size += len(part)
            if chunk:
                await self._renew_chunk(chunk)

    async def _renew_chunk(self, chunk: list[tuple[str, list[str]]]) -> None:
        """One ``renew.lua`` call for leases of lease sets of one hash tag."""
        await self._renew(
            keys=[key for key, _ in chunk],
            args=[
                self._lease_ms,
                *(len(leases) for _, leases in chunk),
                *(lease for _, leases in chunk for lease in leases),
            ],
        )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.renew()
            except REDIS_DOWN as e:
                logger.warning("could not renew socket leases (retrying): %s", e)
