"""What every part of :class:`storage.store.Store` holds: the client and the settings."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.scripts import Arg


def json_reply(value: Any) -> Any:
    """A ``JSON.GET`` reply: redis-py decodes it already, or leaves the JSON text."""
    return json.loads(value) if isinstance(value, str) else value


class StoreBase:
    """The client and the settings that the store's parts share (one ``__init__``).

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        self.redis = redis
        self.settings = settings

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
