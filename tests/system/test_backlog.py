"""A backlog bigger than the stream's bound: nothing accepted is lost, nothing wedges.

With ``MESSAGE_STREAM_MAXLEN=10`` and no worker running, 25 sessions of one partition
send 20 messages each (500 queued); then 2 workers start. Trimming must never remove an
entry the workers' group has not acknowledged, so every message is answered, and the
acknowledged ones are trimmed back to about the bound.

Prints: ``sent, queued, done, error, stream length before and after``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from storage import keys
from testkit.delivery import assert_clean
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.records import verdict
from testkit.standin import StandinModel
from tests.system.partition import (
    PartitionDriver,
    closing_counts,
    poll,
    refusals,
    unanswered,
    wait_closed,
    wait_events,
)

pytestmark = pytest.mark.system

SESSIONS, MESSAGES, MAXLEN = 25, 20, 10
#: Acknowledged entries beyond the bound are trimmed once this many have gathered.
TRIM_SLACK = 100
#: New sessions a test may ask for while it looks for those of partition 0: 1 in 16
#: falls in it, so 2,000 hold the 25 wanted but in fewer than 1 run in 10^10.
PARTITION_HUNT = 2000

#: No worker until the backlog is built: its messages wait, however long.
NO_WORKER_YET = declare(
    MODEL_WAIT_S=(0, "no worker runs until the backlog is built: messages wait for one"),
)
OVER_THE_BOUND = NO_WORKER_YET | declare(
    MESSAGE_STREAM_MAXLEN=(MAXLEN, "a backlog of 500 is 50 times the stream's bound"),
    RATE_SESSIONS_PER_CLIENT=(PARTITION_HUNT, "sessions are opened until 25 fall in partition 0"),
    MAX_SOCKETS_PER_CLIENT=(SESSIONS, "25 sockets open at once, every one from 127.0.0.1"),
)


@pytest.mark.timeout(120)
async def test_a_backlog_over_the_stream_bound_is_answered_in_full(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = keys.message_stream("0")
    async with (
        StandinModel(tokens=6) as model,
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=OVER_THE_BOUND,
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=0)
        async with PartitionDriver([cluster.servers[0].url], "0") as driver:
            await driver.open(SESSIONS)
            await driver.send(MESSAGES)
            await wait_events(driver.sessions, "queued", MESSAGES, timeout_s=30)
            before = await cluster.redis.xlen(stream)
            for _ in range(2):
                await cluster.start_worker()
            complete = await driver.wait_replies(timeout_s=60)
            queued, done, error = closing_counts(driver.sessions)

            async def trimmed(r: Redis[str]) -> bool:
                return bool(await r.xlen(stream) <= MAXLEN + TRIM_SLACK)

            was_trimmed = await poll(cluster.redis, trimmed, timeout_s=10)
            after = await cluster.redis.xlen(stream)
            await driver.fetch_histories()
        findings = verdict(driver.sessions)
        with capsys.disabled():
            print(
                f"\n[backlog] MESSAGE_STREAM_MAXLEN={MAXLEN}, {SESSIONS} sessions in partition 0 "
                f"x {MESSAGES} messages, 2 workers started after: sent {findings.sent}, "
                f"queued {queued}, done {done}, error {error}; stream length before "
                f"{before}, after {after}"
            )
        assert queued == SESSIONS * MESSAGES, "every message was accepted"
        assert before == queued, "no unacknowledged entry was trimmed"
        assert complete, f"not every message was answered: {findings.summary()}"
        assert done + error == queued
        assert_clean(findings)
        assert was_trimmed, f"acknowledged entries not trimmed: {after} left (bound {MAXLEN})"


FULL_BACKLOG = 30
FULL = NO_WORKER_YET | declare(
    MAX_BACKLOG=(FULL_BACKLOG, "10 of the 40 messages sent are past the bound"),
    RATE_SESSIONS_PER_CLIENT=(PARTITION_HUNT, "sessions are opened until 2 fall in partition 0"),
)


@pytest.mark.timeout(120)
async def test_a_full_backlog_refuses_new_messages_at_once_and_loses_none(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bound, sessions, messages = FULL_BACKLOG, 2, 20
    async with (
        StandinModel(tokens=6) as model,
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=FULL,
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=0)
        async with PartitionDriver([cluster.servers[0].url], "0") as driver:
            await driver.open(sessions)
            await driver.send(messages)
            # Every message gets its answer at once: queued, or refused.
            async with asyncio.timeout(30):
                for t in driver.sessions:
                    await t.wait_until(
                        lambda t=t: len(t.events("queued")) + len(refusals([t])) >= messages  # type: ignore[misc]
                    )
            queued_before, _, _ = closing_counts(driver.sessions)
            refused = refusals(driver.sessions)
            await cluster.start_worker()
            complete = await wait_closed(driver.sessions, timeout_s=60)
            queued, done, error = closing_counts(driver.sessions)
        with capsys.disabled():
            print(
                f"\n[overloaded] MAX_BACKLOG={bound}, {sessions} sessions x {messages} messages "
                f"in partition 0, no worker: queued {queued_before}, refused {len(refused)} "
                f"({set(refused)}); a worker started after: done {done}, error {error}"
            )
        assert queued_before == bound and len(refused) == sessions * messages - bound
        assert set(refused) == {"overloaded"}
        assert complete and queued == done == bound and error == 0
        assert not unanswered(driver.sessions)
