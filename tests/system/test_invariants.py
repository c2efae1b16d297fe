"""The invariants of ARCHITECTURE.md section 2, shown on real server and worker processes.

Each test starts an in-process stand-in model (so it can read the prompts it was sent),
then server and worker processes through :class:`testkit.processes.Cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from runtime.config import CommonSettings
from runtime.tasks import cancel_and_wait
from storage.store import Store
from testkit.delivery import assert_clean, show
from testkit.driver import ChatDriver, SessionTrace
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.records import check_prompts, pending_owners, verdict
from testkit.standin import StandinModel

pytestmark = pytest.mark.system


async def server_connections(cluster: Cluster) -> list[int]:
    return [await cluster.redis_connections(s) for s in cluster.servers]


@contextlib.asynccontextmanager
async def peak_connections(cluster: Cluster) -> AsyncIterator[list[int]]:
    """Sample each server's Redis connections every 100 ms; yields the running maxima."""
    peak = [0] * len(cluster.servers)

    async def sample() -> None:
        while True:
            for i, count in enumerate(await server_connections(cluster)):
                peak[i] = max(peak[i], count)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        # A cancellation can be absorbed inside a redis-py call, and the loop would go on.
        await cancel_and_wait([task])


def streaming(trace: SessionTrace) -> Callable[[], bool]:
    """Whether ``trace`` has received a token event (for ``SessionTrace.wait_until``)."""
    return lambda: bool(trace.events("token"))


SERVERS, WORKERS, SESSIONS, MESSAGES = 2, 3, 50, 5
#: Below the sockets each server holds (25), so a per-socket connection cannot hide.
MAX_CONNECTIONS = 8

MANY_SESSIONS = declare(
    REDIS_MAX_CONNECTIONS=(MAX_CONNECTIONS, "below the 25 sockets a server holds"),
    RATE_SESSIONS_PER_CLIENT=(SESSIONS, "50 sessions, every one from 127.0.0.1"),
    MAX_SOCKETS_PER_CLIENT=(SESSIONS, "50 sockets open at once, every one from 127.0.0.1"),
)
KILLED = declare(
    CLAIM_IDLE_MS=(1500, "the killed worker's messages taken over in 1.5 s, not 5"),
)


@pytest.mark.timeout(300)
async def test_many_sessions_over_servers_and_workers(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        StandinModel(tokens=8) as model,
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=MANY_SESSIONS,
        ) as cluster,
    ):
        await cluster.start(servers=SERVERS, workers=WORKERS)
        async with ChatDriver([s.url for s in cluster.servers]) as driver:
            await driver.open(SERVERS)  # one socket per server
            with_few = await server_connections(cluster)
            await driver.open(SESSIONS - SERVERS)
            with_all = await server_connections(cluster)
            async with peak_connections(cluster) as peak:
                started = time.perf_counter()
                await driver.send(MESSAGES)
                complete = await driver.wait_replies(timeout_s=180)
                elapsed = time.perf_counter() - started
            await driver.fetch_histories()

        findings = verdict(driver.sessions)
        check_prompts(driver.sessions, model.requests, findings, once=True)
        counts = zip(with_few, with_all, peak, strict=True)
        connections = ", ".join(f"server-{i + 1} {a}/{b}/{c}" for i, (a, b, c) in enumerate(counts))
        with capsys.disabled():
            print(
                f"\n[system] {SESSIONS} sessions x {MESSAGES} messages, {SERVERS} servers, "
                f"{WORKERS} workers: {findings.summary()}; all in {elapsed:.1f} s; "
                f"redis connections (1 socket/{SESSIONS // SERVERS} sockets/peak): {connections}"
            )

        assert complete, f"not every reply arrived in time: {findings.summary()}"
        assert_clean(findings)
        for t in driver.sessions:
            counts_seen = (len(t.events("queued")), len(t.events("done")))
            assert counts_seen == (MESSAGES, MESSAGES), (
                f"invariant 1: s{t.index} got {counts_seen[0]} queued and {counts_seen[1]} done "
                f"for {MESSAGES} messages"
            )
        for i, (few, many, top) in enumerate(zip(with_few, with_all, peak, strict=True)):
            assert max(few, many, top) <= MAX_CONNECTIONS, (
                f"invariant 6 (bounded Redis connections): server-{i + 1} held {few} with 1 "
                f"socket, {many} with {SESSIONS // SERVERS} sockets, {top} at peak; the bound "
                f"is REDIS_MAX_CONNECTIONS={MAX_CONNECTIONS}"
            )

        assert not findings.restarts, (
            f"no process crashed, yet replies restarted (a delivery failed and "
            f"was taken over after CLAIM_IDLE_MS)\n{show(findings.restarts)}\n"
            f"{show(cluster.log_errors())}"
        )
        assert not cluster.log_errors(), f"processes logged errors\n{show(cluster.log_errors())}"


@pytest.mark.timeout(180)
async def test_worker_killed_mid_reply_is_taken_over(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        StandinModel(tokens=40, delay_ms=50) as model,
        Cluster(redis_url, model.base_url or "", tmp_path / "logs", overrides=KILLED) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        async with ChatDriver([s.url for s in cluster.servers]) as driver:
            sessions = await driver.open(4)
            await driver.send(2)
            async with asyncio.timeout(30):  # every first reply is streaming
                for t in sessions:
                    await t.wait_until(streaming(t))

            owner = await pending_owners(cluster.redis)
            victim = cluster.worker_by_consumer(owner[sessions[0].message_ids()[0]])
            killed_at_ms = time.time() * 1000
            cluster.kill(victim)
            assert await cluster.wait_exit(victim) == -9
            taken_over = {mid for mid, consumer in owner.items() if consumer == victim.consumer}

            complete = await driver.wait_replies(timeout_s=60)
            await driver.fetch_histories()

        findings = verdict(driver.sessions)
        check_prompts(driver.sessions, model.requests, findings, once=False)
        with capsys.disabled():
            print(
                f"\n[system] worker SIGKILL: {len(taken_over)} messages taken over from "
                f"{victim.consumer}: {findings.summary()}"
            )
        assert complete, f"not every reply arrived after the kill: {findings.summary()}"
        assert_clean(findings)
        assert not cluster.log_errors(), f"processes logged errors\n{show(cluster.log_errors())}"

        restarted = 0
        for t in driver.sessions:
            for mid in set(t.message_ids()) & taken_over:
                events = [e for e in t.events() if e.get("message_id") == mid]
                kinds = [e["type"] for e in events]
                done = [e for e in events if e["type"] == "done"]
                assert len(done) == 1, f"invariant 4: s{t.index} {mid} got {len(done)} done"
                if int(done[0]["event_id"].split("-")[0]) < killed_at_ms:
                    continue  # recorded before the kill, only the ack was lost: no restart
                began = any(
                    e["type"] == "token" and int(e["event_id"].split("-")[0]) < killed_at_ms
                    for e in events
                )
                if not began:
                    # Waiting its turn when the worker died: nothing to discard.
                    assert "restart" not in kinds, f"needless restart: {kinds}"
                    continue
                assert "restart" in kinds, (
                    f"invariant 4: s{t.index} message {mid} was taken over from "
                    f"{victim.consumer} but its socket got no restart event: {kinds}"
                )
                last_restart = len(kinds) - 1 - kinds[::-1].index("restart")
                assert kinds.index("done") > last_restart, f"restart after done: {kinds}"
                after = "".join(e["content"] for e in events[last_restart:] if e["type"] == "token")
                assert after == done[0]["reply"]["content"], (
                    f"invariant 4: s{t.index} tokens after the restart {after!r} != done "
                    f"{done[0]['reply']['content']!r}"
                )
                restarted += 1
        assert restarted, f"no message was taken over mid-reply (victim held {taken_over})"

        # The survivor acks right after recording a reply: poll briefly for the last acks.
        store = Store(cluster.redis, CommonSettings())
        deadline = time.monotonic() + 10
        while (left := await store.streams.pending_count()) and time.monotonic() < deadline:  # noqa: ASYNC110  (Redis state: no event to wait on)
            await asyncio.sleep(0.05)
        assert left == 0, f"invariant 4: {left} entries left pending"
