"""Writes a replica holds before anyone is told of them: ``WAIT`` after a script.

Redis replicates asynchronously: a primary answers a write before any replica has it,
and a failover (Sentinel promoting a replica) loses what the replica had not received.
``WAIT numreplicas timeout`` (https://redis.io/docs/latest/commands/wait/) blocks until
that many replicas have acknowledged every write the same connection made before it, or
until the timeout passes, and answers how many did. It must run on the connection that
wrote: with a pool, the script and the ``WAIT`` go out together in one pipeline without
``MULTI`` (a pipeline holds one connection), so the wait costs no extra round trip, only
the replica's acknowledgement.

Fewer replicas than asked within the timeout (a replica down, or being promoted) is
logged and not an error: the write is on the primary and the caller goes on, as the
README says; refusing it would tell a client "not stored" of a message that is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from runtime.config import CommonSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WaitReplicas:
    """How many replicas must acknowledge a write (``replicas`` >= 1), waiting at most
    ``timeout_ms`` (ms) for them."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, settings: CommonSettings) -> WaitReplicas | None:
        """``REDIS_WAIT_REPLICAS`` and ``REDIS_WAIT_TIMEOUT_MS``; None when no replica
        is waited for (0, the default)."""
        if not settings.redis_wait_replicas:
            return None
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)


async def run_and_wait(
    redis: Redis[str],
    script: AsyncScript,
    keys: Sequence[Any],
    args: Sequence[Any],
    wait: WaitReplicas,
    name: str,
) -> Any:
    """``EVALSHA`` ``script``, then ``WAIT`` on the same connection; the script's reply.

    A script Redis does not know (``NOSCRIPT``: restarted without persistence, a new
    primary after a failover) is loaded and the pair sent again: ``EVALSHA`` ran nothing.

    Args:
        redis: a client of a single Redis or of a Sentinel-named primary (a cluster
            client would send ``WAIT`` to every primary, not after the write).
        script: the registered script.
        wait: the replicas to wait for.
        name: the script's name, for the log.

    Raises:
        redis.exceptions.RedisError: the script failed, or Redis is unreachable.
    """
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            sha: str = script.sha  # type: ignore[attr-defined]  # stale stubs
            pipe.evalsha(sha, len(keys), *keys, *args)
            pipe.wait(wait.replicas, wait.timeout_ms)
            reply, acked = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            text: str = script.script  # type: ignore[attr-defined]  # stale stubs
            script.sha = await redis.script_load(text)  # type: ignore[attr-defined,no-untyped-call]
            continue
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acked, Exception):
            raise acked
        if acked < wait.replicas:
            logger.warning(
                "%s: %d of %d replicas acknowledged within %d ms; going on",
                name,
                acked,
                wait.replicas,
                wait.timeout_ms,
            )
        return reply
    raise NoScriptError(f"{name} unknown to Redis after loading it")
