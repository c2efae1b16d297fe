"""The one way Parley's processes connect to Redis."""

from __future__ import annotations

import os
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from protocol.config import CommonSettings


def connect(settings: CommonSettings, role: str) -> Redis[str]:
    """A client whose pool holds at most ``redis_max_connections`` connections.

    The pool is a blocking one: a burst of commands waits for a free connection instead
    of failing with "Too many connections" (redis-py's default pool) or opening more,
    so a process's connections stay bounded whatever its load. Connections are named
    ``parley-<role>-<pid>`` (``CLIENT LIST`` shows who holds what).

    Args:
        settings: ``redis_url`` and ``redis_max_connections``.
        role: ``server`` or ``worker``.
    """
    pool: BlockingConnectionPool[Any] = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=None,
        decode_responses=True,
        client_name=f"parley-{role}-{os.getpid()}",
    )
    client: Redis[str] = Redis(connection_pool=pool)  # type: ignore[assignment]  # decode on pool
    return client


async def disconnect(client: Redis[str]) -> None:
    """Close ``client`` and every connection of its pool."""
    await client.aclose()  # type: ignore[attr-defined]  # stale stubs
    await client.connection_pool.disconnect()
