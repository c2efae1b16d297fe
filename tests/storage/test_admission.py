"""The Redis-side limits: sliding windows and leases, one key (one slot) each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from storage import keys
from storage.admission import Limiter, Refused, limit_key
from storage.leases import SocketLeases, leases_key
from storage.scripts import Arg, RenewStatus


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


async def test_one_round_renews_every_lease_one_call_a_hash_tag(redis: Redis[str]) -> None:
    leases = SocketLeases(redis, max_sockets=3, lease_seconds=0.6)
    # Sessions of one partition share a hash tag; the address's place has its own.
    tokens = ["a" + str(n) * 7 + "-0000-4000-8000-000000000000" for n in range(3)]
    held: dict[str, str] = {}
    for token in tokens:
        lease = await leases.acquire(token)
        assert lease is not None
        held[token] = lease
    limiter = Limiter(redis)
    await limiter.hold("sockets", "10.0.0.1", 5, lease_s=0.6, holder="x")
    leases.track(limit_key("sockets", "10.0.0.1"), "x")
    calls: list[int] = []
    renew = leases._renew

    async def counting(keys: Sequence[str], args: Sequence[Arg] = ()) -> tuple[RenewStatus, Any]:
        calls.append(len(keys))
        return await renew(keys=keys, args=args)

    leases._renew = counting  # type: ignore[assignment]  # counts the calls, still real
    for _ in range(3):  # past the lease time, renewed every 0.3 s
        await asyncio.sleep(0.3)
        await leases.renew()
    assert sorted(calls) == [1, 1, 1, 3, 3, 3]  # the partition's 3 sets at once; the place
    for token, lease in held.items():
        assert await redis.zscore(leases_key(token), lease) is not None
    assert await redis.zscore(limit_key("sockets", "10.0.0.1"), "x") is not None
    assert keys.hash_tag(leases_key(tokens[0])) == keys.partition(tokens[0]) == "a"
    # Untracked, a lease lapses; the others are still renewed.
    leases.untrack(limit_key("sockets", "10.0.0.1"), "x")
    for _ in range(3):
        await asyncio.sleep(0.3)
        await leases.renew()
    await limiter.hold("sockets", "10.0.0.1", 5, lease_s=0.6, holder="y")  # drops lapsed ones
    assert await redis.zscore(limit_key("sockets", "10.0.0.1"), "x") is None
    for token, lease in held.items():
        assert await redis.zscore(leases_key(token), lease) is not None
    # Many leases of one set go in calls of at most 200, one after another.
    crowd = limit_key("sockets", "10.0.0.2")
    for n in range(450):
        leases.track(crowd, f"h{n}")
    calls.clear()
    await leases.renew()
    assert sorted(calls) == [1, 1, 1, 3]
    assert await redis.zcard(crowd) == 450
