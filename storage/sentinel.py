"""Redis through Sentinel: a ``redis+sentinel://`` URL, and a bounded pool on the primary.

redis-py handles Sentinel (``redis.asyncio.sentinel``: the pool asks the Sentinels for
the primary before each new connection, and drops a connection whose server answers
``READONLY``, a demoted primary) but has no URL form for it. Parley takes the form other
Python projects use (the ``Redis-Sentinel-Url`` package, Prefect):

``redis+sentinel://[[user]:password@]host[:port][,host2[:port2]...]/service[/db][?sentinel_password=...]``

- the hosts are the Sentinels (port 26379 by default), in any number;
- ``service`` is the name the Sentinels monitor (``sentinel monitor <service> ...``);
- the user and password, if any, are the Redis primary's and replicas' (``requirepass``);
- ``sentinel_password`` (and ``sentinel_username``), if the Sentinels require one of
  their own (``requirepass`` in ``sentinel.conf``); a password with reserved characters is
  percent-encoded, as in any URL.

Every command's connection goes to the primary the Sentinels name: after a failover the
next new connection finds the new one. A command that fails meanwhile raises a
``ConnectionError`` (``MasterNotFoundError`` while the Sentinels report the primary down,
or the refused connection to the dead one); the process's loops retry it with their
backoff, as for a restart of a single Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

#: The scheme of a Sentinel URL.
SCHEME = "redis+sentinel"
#: The Sentinel port, when a host names none.
DEFAULT_PORT = 26379
#: A Sentinel that does not answer in this long (s) is skipped for the next one.
SENTINEL_TIMEOUT_S = 1.0
_QUERY = {"sentinel_password", "sentinel_username"}


class SentinelURLError(ValueError):
    """A ``redis+sentinel://`` URL that does not follow the form (the message never
    holds the URL: it may hold a password)."""


@dataclass(frozen=True)
class SentinelAddress:
    """What a ``redis+sentinel://`` URL names (see the module)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis through Sentinel (its scheme is ``redis+sentinel``)."""
    return url.partition("://")[0].lower() == SCHEME


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The Sentinels, service, database and credentials of a ``redis+sentinel://`` URL.

    Raises:
        SentinelURLError: not that scheme, no host, a port that is no number, no
            service, a database that is no number, or an unknown query parameter.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise SentinelURLError(f"not a {SCHEME}:// URL")
    # urlsplit cannot parse a host list (it takes the last ':' for the port): split it here.
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host_port(h) for h in hostlist.split(",") if h.strip())
    if not sentinels:
        raise SentinelURLError(f"a {SCHEME}:// URL names at least one Sentinel host")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise SentinelURLError(f"a {SCHEME}:// URL's path is /<service>[/<db>]")
    if len(path) == 2 and not path[1].isdigit():
        raise SentinelURLError("the database (after the service) must be a number")
    query = dict(parse_qsl(parts.query))
    unknown = set(query) - _QUERY
    if unknown:
        raise SentinelURLError(f"unknown {SCHEME}:// parameters: {sorted(unknown)}")
    return SentinelAddress(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _host_port(item: str) -> tuple[str, int]:
    """``(host, port)`` of one ``host[:port]`` of the host list."""
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        return port, DEFAULT_PORT
    if not port.isdigit() or not host:
        raise SentinelURLError("each Sentinel is host[:port], the port a number")
    return host, int(port)


class BoundedSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[type-arg]  # stale stubs
    """redis-py's Sentinel pool, blocking when full as :class:`BlockingConnectionPool`.

    :class:`SentinelConnectionPool` takes redis-py's default pool, which fails with
    "Too many connections" when full; with the blocking pool next in the method order,
    a burst waits for a free connection instead, and ``max_connections`` bounds the
    process's connections to the primary as it does on a single Redis.
    """


def sentinel_client(
    url: str, *, max_connections: int, client_name: str | None, **connection: Any
) -> Redis[str]:
    """A client of the primary that the Sentinels of ``url`` name (``decode_responses``).

    Args:
        url: a ``redis+sentinel://`` URL (see the module).
        max_connections: connections to the primary at most; more commands wait.
        client_name: ``CLIENT SETNAME`` of every connection to the primary.
        connection: more keyword arguments of each connection (``retry``, ...).

    Raises:
        SentinelURLError: the URL does not follow the form.
    """
    address = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={
            "username": address.sentinel_username,
            "password": address.sentinel_password,
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        },
    )
    client: Redis[str] = sentinel.master_for(
        address.service,
        connection_pool_class=BoundedSentinelPool,
        max_connections=max_connections,
        timeout=None,
        db=address.db,
        username=address.username,
        password=address.password,
        client_name=client_name,
        decode_responses=True,
        **connection,
    )
    return client


async def close_sentinels(client: Redis[str]) -> None:
    """Close the Sentinel connections behind ``client``, if it has any (its own pool is
    closed with it). A cluster client has no single pool, and no Sentinel."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()  # type: ignore[attr-defined]  # stale stubs
