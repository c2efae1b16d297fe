"""The Redis-side limits: sliding windows and leases, one key (one slot) each."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from storage.admission import Limiter, Refused, limit_key


async def test_a_window_admits_its_limit_then_refuses_with_the_wait(redis: Redis[str]) -> None:
    limiter = Limiter(redis)
    for _ in range(3):
        await limiter.hit("sessions", "10.0.0.1", 3, window_s=30)
    with pytest.raises(Refused) as refused:
        await limiter.hit("sessions", "10.0.0.1", 3, window_s=30)
    assert refused.value.limit == "sessions"
    assert 29 < refused.value.retry_after_s <= 30
    # Another subject, and another limit of the same subject, have budgets of their own.
    await limiter.hit("sessions", "10.0.0.2", 3, window_s=30)
    await limiter.hit("socket_opens", "10.0.0.1", 3, window_s=30)
    # Refusals are not counted: exactly 3 admissions are held.
    assert await redis.zcard(limit_key("sessions", "10.0.0.1")) == 3
    assert 0 < await redis.pttl(limit_key("sessions", "10.0.0.1")) <= 30_000


async def test_a_window_slides(redis: Redis[str]) -> None:
    limiter = Limiter(redis)
    await limiter.hit("messages", "s", 2, window_s=0.3)
    await asyncio.sleep(0.15)
    await limiter.hit("messages", "s", 2, window_s=0.3)
    with pytest.raises(Refused) as refused:
        await limiter.hit("messages", "s", 2, window_s=0.3)
    await asyncio.sleep(refused.value.retry_after_s + 0.01)  # the wait it gave is enough
    await limiter.hit("messages", "s", 2, window_s=0.3)


async def test_leases_are_renewed_released_and_lapse(redis: Redis[str]) -> None:
    limiter = Limiter(redis)
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="a")
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="b")
    with pytest.raises(Refused):
        await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="c")
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="a")  # a renewal
    await limiter.release("sockets", "10.0.0.1", "b")
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="c")
    # Nobody renews: both lapse (a crashed server's sockets free their places).
    await asyncio.sleep(0.55)
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="d")
    await limiter.hold("sockets", "10.0.0.1", 2, lease_s=0.5, holder="e")


def test_keys_name_no_subject_and_are_their_own_slot() -> None:
    key = limit_key("sessions", "203.0.113.7")
    assert "203.0.113.7" not in key
    assert key.startswith("parley:limit:{sessions:") and key.endswith("}")
