"""What every part of :class:`storage.store.Store` holds: the client and the settings."""

from __future__ import annotations

from redis.asyncio import Redis

from runtime.config import CommonSettings


class StoreBase:
    """The client and the settings that the store's parts share (one ``__init__``).

    Args:
        redis: a redis-py asyncio client built with ``decode_responses=True``.
        settings: TTLs and stream bounds.
    """

    def __init__(self, redis: Redis[str], settings: CommonSettings) -> None:
        self.redis = redis
        self.settings = settings
