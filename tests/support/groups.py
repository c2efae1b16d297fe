"""What the tests read of consumer groups: their consumers and what each holds."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError


async def consumers_of(redis: Redis[str], stream: str, group: str) -> dict[str, int]:
    """The consumers of ``stream``'s ``group``, each with its count of pending entries
    (none if the stream or the group is missing)."""
    try:
        infos = await redis.xinfo_consumers(stream, group)  # type: ignore[no-untyped-call]
    except ResponseError:
        return {}
    return {str(c["name"]): int(c["pending"]) for c in infos}
