"""A message whose attempts crash their workers reaches the dead-letter stream, while
the other sessions are served; real server and worker processes.

Each time an attempt at the poison message streams its first token, the worker
generating it is SIGKILLed (as a crash the message itself caused would) and replaced.
After ``MAX_CRASHES`` such crashes the next attempt dead-letters it with an ``error``
event (``delivery_failed``); messages of other sessions that crashed with it are
answered: after its second crash the poison runs as its worker's only suspect, so the
crashes it causes count against the others at most twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from storage import keys
from testkit.driver import ChatDriver, SessionTrace
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.records import pending_owners
from testkit.standin import StandinModel
from tests.system.partition import unanswered, wait_closed

pytestmark = pytest.mark.system

MAX_CRASHES = 3

OVERRIDES = declare(
    MAX_CRASHES=(MAX_CRASHES, "the poison is dead-lettered after 3 crashes, not 10"),
    CLAIM_IDLE_MS=(1000, "each crash's messages taken over in 1 s, not 5"),
)


def streaming_after(trace: SessionTrace, restarts: int) -> bool:
    """Whether the poison's attempt number ``restarts + 1`` has streamed a token."""
    seen = 0
    for e in trace.events("restart", "token"):
        if e["type"] == "restart":
            seen += 1
        elif seen == restarts:
            return True
    return False


@pytest.mark.timeout(120)
async def test_a_message_that_crashes_its_workers_is_dead_lettered(
    redis: Redis[str], redis_url: str, tmp_path: Path
) -> None:
    async with (
        # 5 s a reply: each kill lands mid-reply, even when a busy machine delivers the
        # first token to the test late.
        StandinModel(tokens=40, delay_ms=125) as model,
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=OVERRIDES,
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            poison, *others = await driver.open(5)
            await driver.send(1, [poison])
            await driver.send(2, others)
            await poison.wait_until(lambda: bool(poison.events("queued")))
            (poison_id,) = poison.message_ids()
            for crash in range(MAX_CRASHES):
                async with asyncio.timeout(30):
                    await poison.wait_until(lambda c=crash: streaming_after(poison, c))  # type: ignore[misc]
                owner = (await pending_owners(cluster.redis))[poison_id]
                await cluster.replace(cluster.worker_by_consumer(owner))
            assert await wait_closed(driver.sessions, timeout_s=60)
        (error,) = [e for e in poison.events("error") if e.get("message_id") == poison_id]
        assert error["code"] == "delivery_failed"
        assert not poison.events("done")
        dead = [fields for _, fields in await cluster.redis.xrange(keys.DEAD_LETTER_STREAM)]
        assert [(d["message_id"], d["reason"]) for d in dead] == [
            (poison_id, f"{MAX_CRASHES} crashes")
        ], "only the poison is dead-lettered"
        # The attempts at it: one per crash, then none (the last one gives up first).
        asked = [
            r for r in model.requests if r["messages"][-1]["content"] == poison.sent[0].content
        ]
        assert len(asked) == MAX_CRASHES
        assert not unanswered(others), "a message of another session was not answered"
