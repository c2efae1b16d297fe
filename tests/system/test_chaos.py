"""Chaos with every feature on: 2 models served by a pool of 2 workers each, 2 servers,
100 sessions (50 a model, all conversations of one owner) x 5 messages, then a
regenerate or an edit of the last message in 2 sessions of 5, while a worker is
SIGKILLed every 2 s and replaced in its pool until every reply is in; on a single Redis
and on a 3-node Redis Cluster.

Titles and summaries are on, as shipped (summaries made sooner than by default, so that
a session's 5 turns call for one), and so are admission and quotas (raised only as far
as 100 sessions from one address need). The stand-in models answer the title and
summary requests at once (they are paced only for replies), so that the jobs, which
run one at a time between replies, end soon after the replies do.

Must hold: every reply (and every revision's) once, in order, on its own socket, from
its own model; histories exact, earlier versions kept; no ``delivery_failed`` nor any
other error event; no ``Traceback`` or ``TypeError`` in any process's log; every title
and summary written once, from its own session, by its own model.

Prints one line per run: messages sent, replies delivered, lost, duplicated, out of
order, misrouted, history mismatches, prompt and job problems, and the takeover time
from a kill to the first new token of a reply that was streaming when its worker died.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.exceptions import ResponseError

from runtime.config import CommonSettings
from runtime.logs import fingerprint
from runtime.tasks import cancel_and_wait
from stack.redis import EmbeddedRedis
from storage import keys
from storage.sessions import SessionExpired
from storage.store import Store
from testkit.delivery import Findings, assert_clean, show
from testkit.driver import ChatDriver, SessionTrace
from testkit.jobs import check_summaries, check_titles, kind, titles_written
from testkit.overrides import declare
from testkit.ports import free_port
from testkit.processes import Cluster, Proc
from testkit.records import check_prompts, missing_events, pending_owners, verdict
from testkit.redis_cluster import EmbeddedRedisCluster
from testkit.standin import StandinModel, reply_text

pytestmark = pytest.mark.system

SESSIONS_PER_MODEL, MESSAGES, SERVERS, WORKERS_PER_POOL = 50, 5, 2, 2
SESSIONS = 2 * SESSIONS_PER_MODEL
KILL_EVERY_S = 2.0
CATALOG = [{"id": "alpha", "api_model": "alpha-7b"}, {"id": "beta", "api_model": "beta-1b"}]
TOKENS = 20

OVERRIDES = declare(
    MODELS=(CATALOG, "two models, a pool of workers each"),
    RATE_SESSIONS_PER_CLIENT=(SESSIONS, "100 sessions, every one from 127.0.0.1"),
    RATE_SOCKET_OPENS_PER_CLIENT=(SESSIONS, "100 sockets opened, every one from 127.0.0.1"),
    MAX_SOCKETS_PER_CLIENT=(SESSIONS, "100 sockets open at once, every one from 127.0.0.1"),
    MEMORY_SUMMARY_TRIGGER_TOKENS=(
        60,
        "a session's 5 turns (about 30 tokens each) outgrow it, 1000 takes about 33",
    ),
    CLAIM_IDLE_MS=(2000, "the killed workers' messages taken over between two kills"),
)
#: Turns that outgrow the trigger (60), however a worker counts them: at least 25
#: tokens each (140 bytes at most 8 bytes a token, and 8 of overhead).
SUMMARY_DUE_AT = 3


@dataclass
class Kill:
    """One SIGKILL: when (``time.perf_counter()``), whom, what it held then."""

    at: float
    consumer: str
    held: set[str]


def replies(body: dict[str, Any]) -> bool:
    """Whether the stand-in paces a request: replies only (titles and summaries are
    answered at once)."""
    return kind(body) == "reply"


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
    """Every ``KILL_EVERY_S``, SIGKILL the oldest live worker and start a new one in
    its pool."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(KILL_EVERY_S)
            victim: Proc = next(w for w in cluster.workers if w.alive)
            owners = await pending_owners(cluster.redis, [m["id"] for m in CATALOG])
            held = {mid for mid, consumer in owners.items() if consumer == victim.consumer}
            kills.append(Kill(time.perf_counter(), victim.consumer or "", held))
            await cluster.replace(victim)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        # A cancellation can be absorbed inside a redis-py call, and the loop would go on.
        await cancel_and_wait([task])
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError("the killing stopped") from task.exception()


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


async def revise(sessions: list[SessionTrace]) -> None:
    """In 2 sessions of 5, the last message answered again: a regenerate in one, an
    edit (a new text, named as the message it replaces) in the other."""
    for t in sessions:
        if t.index % 5 == 0:
            await t.regenerate()
        elif t.index % 5 == 1:
            await t.edit(f"s{t.index}-m{len(t.sent)}-{uuid.uuid4().hex[:8]}")


async def titles(http: aiohttp.ClientSession, server: str, owner: str) -> dict[str, str]:
    """Every conversation's title, by token (``GET /conversations``, page by page)."""
    found: dict[str, str] = {}
    offset: int | None = 0
    while offset is not None:
        params = {"owner": owner, "offset": offset, "limit": 100}
        async with http.get(f"{server}/conversations", params=params) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        found |= {c["token"]: c["title"] for c in page["conversations"]}
        offset = page["next_offset"]
    return found


async def summaries(store: Store, tokens: list[str]) -> dict[str, dict[str, Any] | None]:
    """Every session's stored summary (``text``, ``seq``), by token; None if none."""
    found: dict[str, dict[str, Any] | None] = {}
    for token in tokens:
        try:
            summary = (await store.sessions.get_session(token, touch=False)).summary
        except SessionExpired:
            summary = None
        found[token] = None if summary is None else {"text": summary.text, "seq": summary.seq}
    return found


#: The models have been asked nothing new for this long (s): the jobs are over.
QUIET_S = 5.0


async def jobs_done(
    http: aiohttp.ClientSession,
    server: str,
    owner: str,
    store: Store,
    tokens: list[str],
    models: list[StandinModel],
) -> tuple[dict[str, str], dict[str, dict[str, Any] | None]]:
    """The titles and summaries once every session has both, or once the models have
    been asked nothing for :data:`QUIET_S` and no job entry is open, or after 60 s
    (Redis and REST state: no event to wait on). A job whose worker was killed after
    asking the model waits to be taken over (``CLAIM_IDLE_MS``) and asked again: a
    quiet spell is not its end."""
    deadline = time.monotonic() + 60
    asked, quiet_since = -1, time.monotonic()
    while True:
        named, summed = await titles(http, server, owner), await summaries(store, tokens)
        every = all(named.get(t) for t in tokens) and all(summed[t] for t in tokens)
        now = time.monotonic()
        total = sum(len(m.requests) for m in models)
        if total != asked or any(m.in_flight for m in models) or await open_jobs(store):
            asked, quiet_since = total, now
        if every or now - quiet_since > QUIET_S or now > deadline:
            return named, summed
        await asyncio.sleep(0.5)


async def open_jobs(store: Store) -> int:
    """Title and summary job entries not yet acknowledged, pending or not yet read, in
    every catalog model's job streams (``XINFO GROUPS``)."""
    count = 0
    for model_id in (m["id"] for m in CATALOG):
        for stream, group in (
            (keys.title_stream(model_id), keys.TITLE_GROUP),
            (keys.summary_stream(model_id), keys.SUMMARY_GROUP),
        ):
            try:
                groups = await store.redis.xinfo_groups(stream)
            except ResponseError:  # no such stream: no job was ever queued on it
                continue
            for info in groups:
                if info["name"] == group:
                    count += int(info["pending"]) + int(info.get("lag") or 0)
    return count


def log_problems(cluster: Cluster) -> list[str]:
    """Lines of any process's log that start a traceback or name a ``TypeError``."""
    found = []
    for proc in cluster.procs:
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback") or "TypeError" in line:
                found.append(f"{proc.name}: {line}")
    return found


def check_jobs(
    pools: dict[str, tuple[StandinModel, list[SessionTrace]]],
    named: dict[str, str],
    summed: dict[str, dict[str, Any] | None],
    written: dict[str, int],
    findings: Findings,
) -> None:
    """Replies' prompts, titles and summaries, each model's against its own sessions;
    and every request of a model names it as the catalog does."""
    for model_id, (model, sessions) in pools.items():
        check_prompts(sessions, model.requests, findings, once=False)

        def answer(question: str, model: StandinModel = model) -> str:
            return reply_text(question, model.tokens)

        check_titles(sessions, model.requests, named, answer, findings, written)
        check_summaries(sessions, model.requests, summed, answer, findings, SUMMARY_DUE_AT)
        api_model = next(m["api_model"] for m in CATALOG if m["id"] == model_id)
        findings.job_problems += [
            f"{kind(r)} asked of {model_id} as model {r['model']!r}, not {api_model!r}"
            for r in model.requests
            if r.get("model") != api_model
        ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_chaos_with_every_feature_on_and_a_worker_killed_every_2_s(
    topology: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kills: list[Kill] = []
    with redis_of(topology, tmp_path) as redis_url:
        async with (
            StandinModel(tokens=TOKENS, delay_ms=50, paced=replies) as alpha,  # 1 s a reply
            StandinModel(tokens=TOKENS, delay_ms=50, paced=replies) as beta,
            Cluster(
                redis_url, alpha.base_url or "", tmp_path / "logs", overrides=OVERRIDES
            ) as cluster,
            aiohttp.ClientSession() as http,
        ):
            await cluster.start(servers=SERVERS, workers=0)
            wiring = [
                {"WORKER_MODELS": model_id, "LLM_BASE_URL": standin.base_url or ""}
                for model_id, standin in (("alpha", alpha), ("beta", beta))
            ]
            await asyncio.gather(
                *(cluster.start_worker(pool) for pool in wiring for _ in range(WORKERS_PER_POOL))
            )
            async with ChatDriver([s.url for s in cluster.servers]) as driver:
                owner = await driver.new_owner()
                on_alpha = await driver.open(SESSIONS_PER_MODEL, model="alpha", owner=owner)
                on_beta = await driver.open(SESSIONS_PER_MODEL, model="beta", owner=owner)
                started = time.perf_counter()
                async with killing_workers(cluster, kills):
                    async with asyncio.timeout(60):
                        await driver.send(MESSAGES)
                    complete = await driver.wait_replies(timeout_s=300)
                    if complete:
                        await revise(driver.sessions)
                        complete = await driver.wait_replies(timeout_s=120)
                elapsed = time.perf_counter() - started
                stuck = [] if complete else await missing_events(cluster.redis, driver.sessions)
                await driver.fetch_histories()
                tokens = [t.token for t in driver.sessions]
                store = Store(cluster.redis, CommonSettings())
                named, summed = await jobs_done(
                    http, cluster.servers[0].url, owner, store, tokens, [alpha, beta]
                )
            logs = [line for p in cluster.procs for line in p.log_path.read_text().splitlines()]

    findings = verdict(driver.sessions)
    written = titles_written(logs, {t: fingerprint(t) for t in tokens})
    pools = {"alpha": (alpha, on_alpha), "beta": (beta, on_beta)}
    check_jobs(pools, named, summed, written, findings)
    takeovers = takeover_times_ms(kills, driver.sessions)
    failed = [e for t in driver.sessions for e in t.events("error")]
    with capsys.disabled():
        print(
            f"\n[chaos {topology}] 2 models x {SESSIONS_PER_MODEL} sessions x {MESSAGES} "
            f"messages + {sum(len(t.revisions) for t in driver.sessions)} revisions, "
            f"{SERVERS} servers, {WORKERS_PER_POOL} workers a pool, {len(kills)} kills in "
            f"{elapsed:.1f} s: {findings.summary()}; titled {sum(map(bool, named.values()))}, "
            f"summarized {sum(map(bool, summed.values()))} of {SESSIONS}; takeover to first "
            f"new token: {len(takeovers)} replies, "
            + (
                f"median {statistics.median(takeovers):.0f} ms, max {max(takeovers):.0f} ms"
                if takeovers
                else "none measured"
            )
            + findings.details(limit=5)
        )
    assert complete, f"not every reply arrived: {findings.summary()}\n" + "\n".join(stuck)
    delivery_failed = [e for e in failed if e.get("code") == "delivery_failed"]
    assert not delivery_failed, f"{len(delivery_failed)} delivery_failed: {delivery_failed[:3]}"
    assert not log_problems(cluster), show(log_problems(cluster))
    assert_clean(findings)
    assert len(kills) >= 3, "the run ended before the chaos did anything"
    assert takeovers, "no reply was streaming when its worker was killed"
