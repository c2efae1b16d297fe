"""What every part of :class:`storage.store.Store` holds: the client and the settings."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.replication import WaitReplicas
from storage.scripts import Arg


def json_reply(value: Any) -> Any:
    """A ``JSON.GET`` reply of JSONPath paths (each starting with ``$``), decoded.

    RedisJSON answers such a read with the JSON text of an array (one path: its
    matches) or of an object (several paths: each path's matches), never a bare scalar.
    redis-py's JSON module (``client.json()``) installs response callbacks on the client
    it wraps (and on every pipeline of that client, which shares its callbacks), for
    good: from then on ``JSON.GET`` replies come back decoded. The text and the decoded
    value are told apart by type alone, so the result is the same whatever was called
    before. A legacy path (``.field``) has no such guarantee: its reply may be a bare
    JSON string, whose text and decoded forms are both ``str``.

    Returns:
        The decoded array or object; None for a missing key.
    """
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str | bytes) else value


def json_get_command(key: str, *paths: str) -> tuple[str, ...]:
    """The ``JSON.GET`` command reading ``paths`` of document ``key`` (default: the
    whole document, ``$``), for ``execute_command`` on a client or a pipeline; decode
    its reply with :func:`json_reply`.

    Raises:
        ValueError: a path is not a JSONPath (``$...``).
    """
    paths = paths or ("$",)
    for path in paths:
        if not path.startswith("$"):
            raise ValueError(f"not a JSONPath: {path!r}")
    return ("JSON.GET", key, *paths)


def json_set_command(key: str, path: str, value: Any) -> tuple[str, ...]:
    """The ``JSON.SET`` command writing ``value`` (any JSON-serializable value) at
    ``path`` of document ``key``, for ``execute_command`` on a client or a pipeline.

    Parley never goes through ``client.json()``, whose response callbacks would change
    every later ``JSON.GET`` reply of that client (see :func:`json_reply`).
    """
    return ("JSON.SET", key, path, json.dumps(value, separators=(",", ":")))


class StoreBase:
    """The client and the settings that the store's parts share (one ``__init__``).

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        self.redis = redis
        self.settings = settings
        #: What the scripts that tell a client "stored" wait for (``Script``'s ``wait``).
        self.wait_replicas = WaitReplicas.of(settings)

    async def json_get(self, key: str, *paths: str) -> Any:
        """Read ``paths`` (JSONPaths; default ``$``) of document ``key``: the one way
        every part of the store reads RedisJSON (:func:`json_reply`).

        Returns:
            One path: the list of its matches (``[]`` if none); several: a dict of each
            path's matches; None if the key does not exist.
        """
        reply = await self.redis.execute_command(*json_get_command(key, *paths))  # type: ignore[no-untyped-call]
        return json_reply(reply)

    async def renew(self, ttl_s: int, *names: str) -> bool:
        """Set the TTL of the keys ``names`` (one hash slot) to ``ttl_s``; whether the
        first of them exists."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.expire(name, ttl_s)
            alive = await pipe.execute()
        return bool(alive[0])

    def event_args(self, token: str, event: str) -> list[Arg]:
        """The arguments every script that emits takes for ``library.lua``'s
        ``append_event``, in its order: the event (a JSON object without ``event_id``),
        the session's channel, and the bound of its event stream."""
        return [event, keys.channel(token), self.settings.events_maxlen]
