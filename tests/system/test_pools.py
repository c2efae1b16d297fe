"""Worker pools per model: two stand-in models, each served by its own pool of worker
processes, a worker of each pool SIGKILLed and replaced while both are busy. Every
session's replies come from its own model's pool, in order and exactly once, on a
single Redis and on a 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testkit.delivery import assert_clean
from testkit.driver import ChatDriver, SessionTrace
from testkit.jobs import of_kind
from testkit.overrides import declare
from testkit.processes import Cluster
from testkit.records import missing_events, verdict
from testkit.standin import StandinModel
from tests.system.test_chaos import redis_of

pytestmark = pytest.mark.system

SESSIONS, MESSAGES, WORKERS_PER_POOL = 20, 4, 2
CATALOG = [{"id": "alpha", "api_model": "alpha-7b"}, {"id": "beta", "api_model": "beta-1b"}]

OVERRIDES = declare(
    MODELS=(CATALOG, "two models, a pool of workers each"),
    CLAIM_IDLE_MS=(2000, "the killed workers' messages taken over in 2 s, not 5"),
    RATE_SESSIONS_PER_CLIENT=(2 * SESSIONS, "40 sessions, every one from 127.0.0.1"),
    MAX_SOCKETS_PER_CLIENT=(2 * SESSIONS, "40 sockets open at once, every one from 127.0.0.1"),
)


def asked(model: StandinModel) -> list[str]:
    """The user messages a stand-in was asked to reply to (each reply request's last
    message; titles and summaries are no replies)."""
    return [r["messages"][-1]["content"] for r in of_kind(model.requests, "reply")]


def sent(sessions: list[SessionTrace]) -> set[str]:
    return {m.content for t in sessions for m in t.sent}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_each_pool_answers_only_its_model_while_a_worker_of_each_is_killed(
    topology: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with redis_of(topology, tmp_path) as redis_url:
        async with (
            StandinModel(tokens=20, delay_ms=50) as alpha,  # about 1 s a reply
            StandinModel(tokens=20, delay_ms=50) as beta,
            Cluster(
                redis_url,
                alpha.base_url or "",
                tmp_path / "logs",
                overrides=OVERRIDES,
            ) as cluster,
        ):
            await cluster.start(servers=2, workers=0)
            pools = [
                {"WORKER_MODELS": model, "LLM_BASE_URL": standin.base_url or ""}
                for model, standin in (("alpha", alpha), ("beta", beta))
            ]
            await asyncio.gather(
                *(cluster.start_worker(pool) for pool in pools for _ in range(WORKERS_PER_POOL))
            )
            async with ChatDriver([s.url for s in cluster.servers]) as driver:
                on_alpha = await driver.open(SESSIONS, model="alpha")
                on_beta = await driver.open(SESSIONS, model="beta")
                async with asyncio.timeout(60):
                    await driver.send(MESSAGES)
                # Both pools busy: kill one worker of each (replaced in its own pool).
                async with asyncio.timeout(30):
                    for sessions in (on_alpha, on_beta):
                        await sessions[0].wait_until(lambda s=sessions: bool(s[0].events("token")))  # type: ignore[misc]
                kills = 0
                for model in ("alpha", "beta"):
                    victim = next(
                        w
                        for w in cluster.workers
                        if w.alive and w.env.get("WORKER_MODELS") == model
                    )
                    await cluster.replace(victim)
                    kills += 1
                complete = await driver.wait_replies(timeout_s=300)
                stuck = [] if complete else await missing_events(cluster.redis, driver.sessions)
                await driver.fetch_histories()

    findings = verdict(driver.sessions)
    with capsys.disabled():
        print(
            f"\n[pools {topology}] 2 models x {SESSIONS} sessions x {MESSAGES} messages, "
            f"{WORKERS_PER_POOL} workers a pool, {kills} kills: {findings.summary()}; "
            f"asked alpha {len(alpha.requests)}, beta {len(beta.requests)}"
        )
    assert complete, f"not every reply arrived: {findings.summary()}\n" + "\n".join(stuck)
    assert_clean(findings)
    # Each stand-in answered its own sessions' messages, every one of them, and no other.
    assert set(asked(alpha)) == sent(on_alpha)
    assert set(asked(beta)) == sent(on_beta)
    assert {r["model"] for r in of_kind(alpha.requests, "reply")} == {"alpha-7b"}
    assert {r["model"] for r in of_kind(beta.requests, "reply")} == {"beta-1b"}
    for sessions, model in ((on_alpha, "alpha"), (on_beta, "beta")):
        for trace in sessions:
            assert {d["reply"]["model"] for d in trace.events("done")} == {model}
    restarted = [t for t in driver.sessions if t.events("restart")]
    assert restarted, "no reply was taken over: the kills landed on idle workers"
