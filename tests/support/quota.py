"""Reading what admission counts, as the scripts keep it: a session's rate window and
quota live in its document (:class:`storage.admission.MessageLimits`), a client's quota
in a key of its own."""

from __future__ import annotations

from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys
from storage.admission import CLIENT_TOKENS, limit_key
from storage.base import json_reply
from storage.store import Store


def _store(redis: Redis[str]) -> Store:
    return Store(redis, CommonSettings())


async def session_used(redis: Redis[str], token: str) -> int:
    """Model tokens session ``token`` used in its quota's period."""
    return await _store(redis).sessions.quota_used(token)


async def client_used(redis: Redis[str], client: str) -> int:
    """Model tokens the client of digest ``client`` used in its quota's period."""
    return int(await redis.get(limit_key(CLIENT_TOKENS, client)) or 0)


async def messages_counting(redis: Redis[str], token: str) -> int:
    """Admissions counting now in session ``token``'s rate window."""
    found = json_reply(
        await redis.execute_command("JSON.GET", keys.session_key(token), "$.rate")  # type: ignore[no-untyped-call]
    )
    now_ms = (await redis.time())[0] * 1000
    return sum(1 for until_ms in (found[0] if found else []) if until_ms > now_ms)
