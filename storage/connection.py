"""The one way Parley's processes connect to Redis: a single node, Sentinel, or a Cluster.

``REDIS_URL`` names a single Redis (``redis://host:port/0``); the primary that Redis
Sentinel names (``redis+sentinel://sentinel1:26379,sentinel2:26379/mymaster/0``, see
:mod:`storage.sentinel`); or, with the query parameter ``cluster=true``, a Redis Cluster
through any of its nodes (``redis://host:port/0?cluster=true``); redis-py has no URL
form of its own for either. Every way the client is redis-py's asyncio client, with the
same command API.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff  # type: ignore[attr-defined]  # stale stubs
from redis.exceptions import (  # type: ignore[attr-defined]  # stale stubs: OutOfMemoryError
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.config import CommonSettings
from storage import keys
from storage.sentinel import close_sentinels, is_sentinel_url, sentinel_client

_TRUE = {"1", "true", "yes", "on"}


def split_cluster_url(url: str) -> tuple[str, bool]:
    """``url`` without its ``cluster`` query parameter, and whether that named a cluster."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = any(k == "cluster" and v.lower() in _TRUE for k, v in query)
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunsplit(parts._replace(query=rest)), cluster


class BoundedRedisCluster(RedisCluster):  # type: ignore[type-arg]
    """redis-py's cluster client with at most ``max_in_flight`` commands at once.

    The cluster client's pools (one per node) fail at once with ``MaxConnectionsError``
    when full, where a single node's ``BlockingConnectionPool`` waits. The semaphore
    restores waiting: a burst queues in the process instead of failing, and each node's
    pool never needs more than ``max_in_flight`` connections for commands. Blocking
    reads (``XREADGROUP ... BLOCK``: a worker holds one per partition) do not count,
    so they cannot starve the other commands; the pools leave room for them.
    """

    def __init__(self, *args: Any, max_in_flight: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run one command once fewer than ``max_in_flight`` are running."""
        if args and args[0] == "XREADGROUP" and any(a in (b"BLOCK", "BLOCK") for a in args):
            return await super().execute_command(*args, **kwargs)
        async with self._in_flight:
            return await super().execute_command(*args, **kwargs)


def _retry() -> Retry:
    """Three retries with exponential backoff and full jitter, 50 ms up to 1 s."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)


def client_for_url(url: str, *, max_connections: int, client_name: str | None = None) -> Redis[str]:
    """A client of ``url`` (``decode_responses=True``), a cluster client if the URL says so.

    Args:
        url: a ``redis://`` URL, with ``?cluster=true`` for a Redis Cluster; or a
            ``redis+sentinel://`` URL (:mod:`storage.sentinel`).
        max_connections: connections for commands at most (per node, on a cluster);
            more commands wait for one.
        client_name: ``CLIENT SETNAME`` of every connection.

    Raises:
        storage.sentinel.SentinelURLError: a ``redis+sentinel://`` URL out of its form.
    """
    if is_sentinel_url(url):
        return sentinel_client(
            url,
            max_connections=max_connections,
            client_name=client_name,
            # As below; a connection made again asks the Sentinels for the primary first.
            retry=_retry(),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
    address, cluster = split_cluster_url(url)
    if cluster:
        client = BoundedRedisCluster.from_url(  # type: ignore[call-arg]  # passed to __init__
            address,
            max_in_flight=max_connections,
            # Room beyond the commands for blocking reads (one per partition) and Pub/Sub.
            max_connections=max_connections + len(keys.PARTITIONS) + 4,
            decode_responses=True,
            client_name=client_name,
        )
        # Same command API as the single-node client; the stubs know only that one.
        return cast("Redis[str]", client)
    pool: BlockingConnectionPool[Any] = BlockingConnectionPool.from_url(
        address,
        max_connections=max_connections,
        timeout=None,
        decode_responses=True,
        client_name=client_name,
        # A pooled connection that Redis closed (a restart) fails once: retry it on a
        # new connection instead of failing the command.
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    # The client owns the pool: closing the client closes every connection.
    return Redis.from_pool(pool)  # type: ignore[attr-defined,no-any-return]  # stale stubs


def node_client(cluster: Redis[str], host: str, port: int) -> Redis[str]:
    """A plain client of one node of ``cluster``, with the cluster client's credentials
    and client name (for a connection that must stay on that node, such as Pub/Sub)."""
    kwargs: dict[str, Any] = cluster.nodes_manager.connection_kwargs  # type: ignore[attr-defined]
    same = {k: kwargs[k] for k in ("username", "password", "client_name", "ssl") if k in kwargs}
    return Redis(
        host=host,
        port=port,
        decode_responses=True,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **same,
    )


def connect(settings: CommonSettings, role: str) -> Redis[str]:
    """A client whose pool holds at most ``redis_max_connections`` connections.

    The pool is a blocking one: a burst of commands waits for a free connection instead
    of failing with "Too many connections" (redis-py's default pool) or opening more,
    so a process's connections stay bounded whatever its load. Connections are named
    ``parley-<role>-<pid>`` (``CLIENT LIST`` shows who holds what). On a cluster the
    bound holds per node (:class:`BoundedRedisCluster`).

    Args:
        settings: ``redis_url``, ``redis_max_connections`` and ``redis_wait_replicas``.
        role: ``server`` or ``worker``.

    Raises:
        ValueError: ``redis_wait_replicas`` is set for a Redis Cluster, where a ``WAIT``
            cannot follow a write on its connection (:mod:`storage.replication`).
    """
    if settings.redis_wait_replicas and split_cluster_url(settings.redis_url)[1]:
        raise ValueError("REDIS_WAIT_REPLICAS works with a single Redis or Sentinel, not a cluster")
    return client_for_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        client_name=f"parley-{role}-{os.getpid()}",
    )


def is_cluster(client: Redis[str]) -> bool:
    """Whether ``client`` talks to a Redis Cluster (redis-py's cluster client)."""
    return isinstance(client, RedisCluster)


async def disconnect(client: Redis[str]) -> None:
    """Close ``client``, every connection of its pool(s), and its Sentinel connections."""
    await client.aclose()  # type: ignore[attr-defined]  # stale stubs
    await close_sentinels(client)


#: Errors of the link to Redis: the connection broke or a reply did not come in time.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


#: Redis errors that say nothing about the command or the entry: retried, never counted
#: against a message (memory full under ``noeviction``, a replica or a loading server,
#: a cluster resharding or down).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OutOfMemoryError,
    BusyLoadingError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
)

#: Any failure of a call to Redis, its link's or its own: what a caller that only
#: reports the failure (and keeps serving) catches.
REDIS_DOWN = (RedisError, OSError)
