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
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from runtime.tasks import cancel_and_wait
from storage import keys
from storage.scripts import AdmitStatus, RenewStatus, Script

logger = logging.getLogger(__name__)

#: Sessions renewed at once (concurrent script calls).
_RENEW_BATCH: Final = 64


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
        self._held: dict[str, dict[str, None]] = {}  # token -> lease ids
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
        self._held.setdefault(token, {})[lease] = None
        return lease

    async def release(self, token: str, lease: str) -> None:
        """Give back a lease; if Redis fails, it lapses after the lease time instead."""
        held = self._held.get(token, {})
        held.pop(lease, None)
        if not held:
            self._held.pop(token, None)
        try:
            await self._redis.zrem(leases_key(token), lease)
        except (RedisError, OSError) as e:
            logger.warning("could not release a socket lease (it will lapse): %s", e)

    async def renew(self) -> None:
        """Renew every lease this process holds, one script call per session.

        Raises:
            redis.exceptions.RedisError: Redis failed (the next round tries again).
        """
        held = [(token, list(leases)) for token, leases in self._held.items() if leases]
        for start in range(0, len(held), _RENEW_BATCH):
            await asyncio.gather(
                *(
                    self._renew(keys=[leases_key(token)], args=[self._lease_ms, *leases])
                    for token, leases in held[start : start + _RENEW_BATCH]
                )
            )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.renew()
            except (RedisError, OSError) as e:
                logger.warning("could not renew socket leases (retrying): %s", e)
