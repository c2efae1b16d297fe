"""Faults with real processes: worker SIGTERM, server SIGTERM, a Redis outage.

Each test starts its own processes (:class:`testkit.processes.Cluster`), drives real
WebSocket clients (:class:`testkit.processes.ChatDriver`) and checks what they received
against what they sent (:mod:`testkit.delivery`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from redis.asyncio import Redis

from runtime.config import CommonSettings
from stack.redis import EmbeddedRedis
from storage.store import Store
from testkit.delivery import assert_clean, show
from testkit.driver import ChatDriver, SessionTrace
from testkit.overrides import declare
from testkit.ports import free_port
from testkit.processes import Cluster
from testkit.records import pending_owners, verdict
from testkit.standin import StandinModel

pytestmark = pytest.mark.system

SHORT_DRAIN = declare(
    DRAIN_TIMEOUT_S=(0.5, "the drain ends before the replies do, leaving them pending"),
    CLAIM_IDLE_MS=(1000, "what the drain left is taken over in 1 s, not 5"),
)
OUTAGE = declare(
    CLAIM_IDLE_MS=(1000, "replies cut by the outage are taken over in 1 s once it ends, not 5"),
)


async def all_streaming(sessions: list[SessionTrace], timeout_s: float = 30) -> None:
    """Wait until every session has received a token event."""
    async with asyncio.timeout(timeout_s):
        for t in sessions:
            await t.wait_until(lambda t=t: bool(t.events("token")))  # type: ignore[misc]


async def no_pending(redis: Redis[str], timeout_s: float = 10) -> int:
    """Wait (bounded) until no entry is pending; return how many still are."""
    store = Store(redis, CommonSettings())
    deadline = time.monotonic() + timeout_s
    while (left := await store.streams.pending_count()) and time.monotonic() < deadline:  # noqa: ASYNC110  (Redis state: no event to wait on)
        await asyncio.sleep(0.05)
    return left


@pytest.mark.timeout(180)
async def test_worker_sigterm_finishes_in_flight_replies_and_exits_0(
    redis: Redis[str], redis_url: str, tmp_path: Path
) -> None:
    async with (
        StandinModel(tokens=60, delay_ms=50) as model,  # about 3 s a reply
        Cluster(redis_url, model.base_url or "", tmp_path / "logs") as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            first = await driver.open(6)
            await driver.send(1)
            await all_streaming(first)
            owners = await pending_owners(cluster.redis)
            victim = cluster.worker_by_consumer(next(iter(owners.values())))
            cluster.terminate(victim)
            # A blocking read already waiting at SIGTERM returns within READ_BLOCK_MS
            # (1 s); after that the worker must read nothing new while it drains.
            await asyncio.sleep(1.5)
            assert victim.alive, "the worker did not wait for its in-flight replies"
            late = await driver.open(4)
            await driver.send(1, late)
            await all_streaming(late)
            late_ids = {mid for t in late for mid in t.message_ids()}
            late_owners = {
                c for mid, c in (await pending_owners(cluster.redis)).items() if mid in late_ids
            }
            assert late_owners and victim.consumer not in late_owners, (
                f"a worker that got SIGTERM read new entries: {late_owners}"
            )

            assert await cluster.wait_exit(victim) == 0
            assert await driver.wait_replies(timeout_s=30)
            await driver.fetch_histories()
        findings = verdict(driver.sessions)
        assert_clean(findings)
        # The drained replies were finished by the victim itself: no takeover, no restart.
        assert not findings.restarts, show(findings.restarts)
        assert await no_pending(cluster.redis) == 0
        assert not cluster.log_errors(), show(cluster.log_errors())


@pytest.mark.timeout(180)
async def test_worker_sigterm_leaves_what_it_cannot_finish_pending_for_takeover(
    redis: Redis[str], redis_url: str, tmp_path: Path
) -> None:
    async with (
        # About 6 s a reply: a worker that ignored the drain timeout would take that long
        # to exit, so the bound below tells the two apart with room for a busy machine.
        StandinModel(tokens=120, delay_ms=50) as model,
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=SHORT_DRAIN,
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            sessions = await driver.open(6)
            await driver.send(1)
            await all_streaming(sessions)
            owners = await pending_owners(cluster.redis)
            victim = cluster.worker_by_consumer(next(iter(owners.values())))
            unfinished = {mid for mid, consumer in owners.items() if consumer == victim.consumer}
            terminated_at = time.monotonic()
            cluster.terminate(victim)
            assert await cluster.wait_exit(victim) == 0
            assert time.monotonic() - terminated_at < 4.5, "the drain timeout was not kept"
            assert await driver.wait_replies(timeout_s=60)
            await driver.fetch_histories()
        findings = verdict(driver.sessions)
        assert_clean(findings)
        restarted = {e["message_id"] for t in driver.sessions for e in t.events("restart")}
        assert restarted == unfinished
        assert await no_pending(cluster.redis) == 0


@pytest.mark.timeout(180)
async def test_server_sigterm_closes_sockets_with_1001_and_clients_resume_elsewhere(
    redis: Redis[str], redis_url: str, tmp_path: Path
) -> None:
    async with (
        StandinModel(tokens=40, delay_ms=25) as model,  # about 1 s a reply
        Cluster(redis_url, model.base_url or "", tmp_path / "logs") as cluster,
    ):
        await cluster.start(servers=2, workers=1)
        urls = [s.url for s in cluster.servers]
        async with ChatDriver(urls, reconnect=True) as driver:
            sessions = await driver.open(10)
            await driver.send(2)
            on_first = [t for t in sessions if t.server == 0]
            first_ids = {t.index for t in on_first}
            await all_streaming(on_first)
            cluster.terminate(cluster.servers[0])
            # uvicorn re-raises the signal once its graceful shutdown is over.
            assert await cluster.wait_exit(cluster.servers[0]) == -signal.SIGTERM
            assert await driver.wait_replies(timeout_s=60)
            await driver.fetch_histories()
        for t in on_first:
            assert t.close_codes[:1] == [1001], f"s{t.index} closes {t.close_codes}"
            assert t.server == 1
        others = {t.index: t.close_codes for t in sessions if t.index not in first_ids}
        assert not any(others.values()), f"sockets of the other server closed: {others}"
        findings = verdict(driver.sessions)
        assert_clean(findings)  # no gap and no duplicate across the reconnect
        assert not findings.restarts, show(findings.restarts)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


OUTAGE_S = 10


@pytest.mark.timeout(240)
async def test_redis_outage_is_survived_and_accepted_messages_are_answered(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis") as redis_server:
        async with (
            StandinModel(tokens=40, delay_ms=25) as model,
            Cluster(
                redis_server.url, model.base_url or "", tmp_path / "logs", overrides=OUTAGE
            ) as cluster,
        ):
            await cluster.start(servers=1, workers=1)
            server, worker = cluster.servers[0], cluster.workers[0]
            async with (
                ChatDriver([server.url], reconnect=True) as driver,
                aiohttp.ClientSession() as http,
            ):
                sessions = await driver.open(8)
                await driver.send(2)
                await all_streaming(sessions)

                redis_server.stop()
                cpu_before = {p.name: cpu_seconds(p.pid) for p in (server, worker)}
                async with asyncio.timeout(10):
                    for t in sessions:  # told, not left hanging
                        await t.wait_until(  # type: ignore[misc]
                            lambda t=t: any(
                                e.get("code") == "unavailable" for e in t.events("error")
                            )
                        )
                async with http.get(f"{server.url}/readyz") as r:
                    assert r.status == 503
                async with http.get(f"{server.url}/healthz") as r:
                    assert r.status == 200
                async with http.post(f"{server.url}/token", params={"name": "x"}) as r:
                    assert r.status == 503
                await asyncio.sleep(OUTAGE_S)
                spent = {p.name: cpu_seconds(p.pid) - cpu_before[p.name] for p in (server, worker)}
                assert server.alive and worker.alive
                # Backing off, not spinning: well under a core for the whole outage.
                assert all(s < OUTAGE_S * 0.2 for s in spent.values()), spent

                redis_server.start()
                assert await driver.wait_replies(timeout_s=60)
                async with asyncio.timeout(30):
                    while True:
                        async with http.get(f"{server.url}/readyz") as r:
                            if r.status == 200:
                                break
                        await asyncio.sleep(0.2)
                # New messages work again on the same sockets.
                await driver.send(1, sessions[:2])
                assert await driver.wait_replies(timeout_s=30)
                await driver.fetch_histories()
            findings = verdict(driver.sessions)
            assert_clean(findings)
            assert await no_pending(cluster.redis) == 0
