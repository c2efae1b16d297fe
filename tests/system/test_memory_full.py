"""Redis out of memory (``maxmemory`` with ``noeviction``): clients are told
``unavailable`` for what cannot be stored, and nothing accepted is lost; once memory is
back, every queued message is answered. Real server and worker processes, a Redis of
the test's own (its memory limit changes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stack.redis import EmbeddedRedis
from testkit.driver import ChatDriver
from testkit.overrides import declare
from testkit.ports import free_port
from testkit.processes import Cluster
from testkit.standin import StandinModel
from tests.system.partition import closing_counts, refusals, unanswered, wait_closed

pytestmark = pytest.mark.system

OVERRIDES = declare(
    CLAIM_IDLE_MS=(
        1000,
        "replies that fail while memory is full are taken over, and fail, "
        "several times within the 4 s of the fault",
    ),
)


@pytest.mark.timeout(120)
async def test_memory_full_refuses_new_messages_and_loses_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis") as redis_server:
        async with (
            StandinModel(tokens=20, delay_ms=50) as model,  # 1 s a reply
            Cluster(
                redis_server.url, model.base_url or "", tmp_path / "logs", overrides=OVERRIDES
            ) as cluster,
        ):
            await cluster.start(servers=1, workers=1)
            redis = cluster.redis
            async with ChatDriver([cluster.servers[0].url]) as driver:
                sessions = await driver.open(5)
                await driver.send(3)
                async with asyncio.timeout(30):
                    for t in sessions:
                        await t.wait_until(lambda t=t: len(t.events("queued")) == 3)  # type: ignore[misc]
                # Memory full while the first replies stream and the others wait.
                await redis.config_set("maxmemory-policy", "noeviction")
                await redis.config_set("maxmemory", "1")
                _, done_at_full, _ = closing_counts(sessions)
                await driver.send(1)
                async with asyncio.timeout(30):
                    for t in sessions:
                        await t.wait_until(lambda t=t: bool(refusals([t])))  # type: ignore[misc]
                # Time passes under the fault: replies in flight fail, and are taken
                # over (CLAIM_IDLE_MS 1 s) and fail again, while memory is still full.
                await asyncio.sleep(4)
                assert all(p.alive for p in cluster.procs), "a process died"
                _, done_while_full, _ = closing_counts(sessions)
                await redis.config_set("maxmemory", "0")
                complete = await wait_closed(sessions, timeout_s=60)
                queued, done, error = closing_counts(sessions)
            dead = await redis.xlen("parley:messages:dead")
        with capsys.disabled():
            print(
                f"\n[memory full] 5 sessions x 3 messages queued, then maxmemory 1 "
                f"(noeviction) with {done_at_full} answered: 5 more sent, refused "
                f"{refusals(sessions)}; answered while full {done_while_full}; memory back: "
                f"queued {queued}, done {done}, error {error}, dead-lettered {dead}"
            )
        assert done_at_full < 15, "memory was full before anything was waiting"
        assert refusals(sessions) == ["unavailable"] * 5
        assert queued == 15, "nothing was accepted while memory was full"
        assert complete and done == 15 and error == 0 and dead == 0
        assert not unanswered(sessions)
