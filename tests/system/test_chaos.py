"""Chaos: 100 sessions x 5 messages over 2 servers and 3 workers, a worker SIGKILLed
every 2 s and replaced, on a single Redis and on a 3-node Redis Cluster.

Prints one line per run: messages sent, replies delivered, lost, duplicated, out of
order, misrouted, history mismatches, and the takeover time from a kill to the first
new token of a reply that was streaming when its worker died (median, max).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.tasks import cancel_and_wait
from stack.redis import EmbeddedRedis
from testkit.delivery import assert_clean
from testkit.driver import ChatDriver, SessionTrace
from testkit.ports import free_port
from testkit.processes import Cluster, Proc
from testkit.records import missing_events, pending_owners, verdict
from testkit.redis_cluster import EmbeddedRedisCluster
from testkit.standin import StandinModel

pytestmark = pytest.mark.system

SESSIONS, MESSAGES, SERVERS, WORKERS = 100, 5, 2, 3
KILL_EVERY_S = 2.0
CLAIM_IDLE_MS = 2000


@dataclass
class Kill:
    """One SIGKILL: when (``time.perf_counter()``), whom, what it held then."""

    at: float
    consumer: str
    held: set[str]


@contextlib.contextmanager
def redis_of(topology: str, tmp_path: Path) -> Iterator[str]:
    """A fresh Redis of the given topology; yields its URL."""
    if topology == "cluster":
        with EmbeddedRedisCluster(data_dir=tmp_path / "cluster") as cluster:
            yield cluster.url
    else:
        with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis") as server:
            yield server.url


@contextlib.asynccontextmanager
async def killing_workers(cluster: Cluster, kills: list[Kill]) -> AsyncIterator[None]:
    """Every ``KILL_EVERY_S``, SIGKILL the oldest live worker and start a new one."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(KILL_EVERY_S)
            victim: Proc = next(w for w in cluster.workers if w.alive)
            owners = await pending_owners(cluster.redis)
            held = {mid for mid, consumer in owners.items() if consumer == victim.consumer}
            kills.append(Kill(time.perf_counter(), victim.consumer or "", held))
            await cluster.replace(victim)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        # A cancellation can be absorbed inside a redis-py call, and the loop would go on.
        await cancel_and_wait([task])


def takeover_times_ms(kills: list[Kill], sessions: list[SessionTrace]) -> list[float]:
    """Kill to first new token, for each reply that was streaming when its worker died."""
    where = {mid: t for t in sessions for mid in t.message_ids()}
    times: list[float] = []
    for kill in kills:
        for mid in kill.held:
            trace = where.get(mid)
            if trace is None:
                continue
            mine = [r for r in trace.received if r.event.get("message_id") == mid]
            before = [r for r in mine if r.at < kill.at]
            after = [r for r in mine if r.at >= kill.at]
            if not any(r.event["type"] == "token" for r in before) or any(
                r.event["type"] == "done" for r in before
            ):
                continue  # not streaming at the kill
            restarted = False
            for r in after:
                if r.event["type"] == "restart":
                    restarted = True
                elif r.event["type"] == "token" and restarted:
                    times.append((r.at - kill.at) * 1000)
                    break
    return times


@pytest.mark.timeout(600)
@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_chaos_100_sessions_with_a_worker_killed_every_2_s(
    topology: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kills: list[Kill] = []
    with redis_of(topology, tmp_path) as redis_url:
        async with (
            StandinModel(tokens=20, delay_ms=50) as model,  # about 1 s a reply
            Cluster(
                redis_url,
                model.base_url or "",
                tmp_path / "logs",
                claim_idle_ms=CLAIM_IDLE_MS,
            ) as cluster,
        ):
            await cluster.start(servers=SERVERS, workers=WORKERS)
            async with ChatDriver([s.url for s in cluster.servers]) as driver:
                await driver.open(SESSIONS)
                started = time.perf_counter()
                async with killing_workers(cluster, kills):
                    async with asyncio.timeout(60):
                        await driver.send(MESSAGES)
                    complete = await driver.wait_replies(timeout_s=400)
                elapsed = time.perf_counter() - started
                stuck = [] if complete else await missing_events(cluster.redis, driver.sessions)
                await driver.fetch_histories()

        findings = verdict(driver.sessions)
        takeovers = takeover_times_ms(kills, driver.sessions)
        line = (
            f"\n[chaos {topology}] {SESSIONS}x{MESSAGES}, {SERVERS} servers, {WORKERS} workers, "
            f"{len(kills)} kills in {elapsed:.1f} s: {findings.summary()}; takeover to first "
            f"new token: {len(takeovers)} replies, "
            + (
                f"median {statistics.median(takeovers):.0f} ms, max {max(takeovers):.0f} ms"
                if takeovers
                else "none measured"
            )
        )
        with capsys.disabled():
            print(line)
        assert complete, f"not every reply arrived: {findings.summary()}\n" + "\n".join(stuck)
        assert_clean(findings)
        assert len(kills) >= 3, "the run ended before the chaos did anything"
        assert takeovers, "no reply was streaming when its worker was killed"
