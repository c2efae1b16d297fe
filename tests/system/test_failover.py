"""Parley on Redis Sentinel: the primary SIGKILLed mid-run, the chat goes on.

A primary, one replica (both with RedisJSON) and 3 Sentinels (``down-after-milliseconds``
1 s, ``failover-timeout`` 5 s); 2 servers and 2 workers on the ``redis+sentinel://`` URL
and the stand-in model. 8 sessions chat one message at a time; once each has a reply,
the primary is SIGKILLed; the Sentinels promote the replica, and the sessions keep
chatting until each has 2 replies to messages sent after the failover. Run with
``REDIS_WAIT_REPLICAS`` 0 and 1.

Must hold: no session wedged (every accepted message, one with a ``queued`` event, ends
with ``done`` or an ``error`` naming it, within :data:`BOUND_S`); with
``REDIS_WAIT_REPLICAS=1``, no accepted message lost (no ``message_lost``). Messages sent
while no primary serves are refused (an ``error`` of no message): they were never
accepted.

Prints one line of figures per run: messages sent, accepted, delivered, closed with
``message_lost``, closed with another error, refused, wedged, duplicated, the failover's
length (kill to the Sentinels naming a serving primary) and the outage seen by clients
(kill to the first reply to a message accepted after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from testkit.delivery import follow, show
from testkit.driver import ChatDriver, SessionTrace, closes
from testkit.overrides import Overrides, declare
from testkit.processes import Cluster
from testkit.redis_sentinel import RedisWithSentinels
from testkit.standin import StandinModel

pytestmark = pytest.mark.system

SESSIONS = 8
#: Replies each session must have to messages sent after the failover.
AFTER_FAILOVER = 2
#: An accepted message must close within this long (s) of being sent, or its session
#: is wedged. The failover takes 2 to 4 s here; a reply cut by it is taken over after
#: CLAIM_IDLE_MS and a lost one closed after 3 times that.
BOUND_S = 20.0

FAST_TAKEOVER = declare(
    CLAIM_IDLE_MS=(
        1000,
        "replies cut by the failover taken over in 1 s and lost entries swept in 3 s, "
        "not 5 and 15, so the test stays short",
    ),
)
WAIT_ONE = FAST_TAKEOVER | declare(
    REDIS_WAIT_REPLICAS=(1, "the mode under test: the replica holds what clients are told"),
)


@dataclass
class Figures:
    """What the clients saw, counted per message."""

    sent: int = 0
    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    other_errors: int = 0
    refused: int = 0
    wedged: int = 0
    duplicated: int = 0
    foreign: int = 0
    #: Accepted before the kill and closed after it.
    in_flight: int = 0
    #: The longest time (s) from sending a message to its closing event.
    longest_s: float = 0.0

    def line(self) -> str:
        return (
            f"sent {self.sent}, accepted {self.accepted}, delivered {self.delivered}, "
            f"message_lost {self.lost}, other errors {self.other_errors}, refused "
            f"{self.refused}, wedged {self.wedged}, duplicated {self.duplicated}, "
            f"foreign {self.foreign}; {self.in_flight} in flight at the kill, longest "
            f"send to close {self.longest_s:.1f} s"
        )


def closed_at(trace: SessionTrace) -> dict[str, float]:
    """When each message of ``trace`` got its first closing event (perf_counter s)."""
    found: dict[str, float] = {}
    for r in trace.received:
        if closes(r.event):
            found.setdefault(r.event["message_id"], r.at)
    return found


def tally(sessions: list[SessionTrace], killed_at: float) -> tuple[Figures, Counter[str]]:
    """The figures of every session, and the codes of the errors that closed messages."""
    figures, codes = Figures(), Counter[str]()
    for t in sessions:
        delivery = follow(t.sent, t.received)
        closed = closed_at(t)
        for reply in delivery.replies:
            end = closed.get(reply.message_id)
            if reply.sent is None or end is None:
                continue
            figures.longest_s = max(figures.longest_s, end - reply.sent.at)
            figures.in_flight += reply.sent.at < killed_at < end
        figures.sent += len(t.sent)
        figures.accepted += len(delivery.replies)
        figures.refused += len(delivery.unqueued())
        figures.wedged += len(delivery.unanswered())
        figures.duplicated += len(delivery.duplicated())
        figures.foreign += len({e.get("message_id") for e in delivery.foreign})
        for reply in delivery.replies:
            if reply.dones:
                figures.delivered += 1
            for error in reply.errors[:1]:
                codes[error["code"]] += 1
                if error["code"] == "message_lost":
                    figures.lost += 1
                elif not reply.dones:
                    figures.other_errors += 1
    return figures, codes


def settled(trace: SessionTrace, content: str, mark: int) -> bool:
    """Whether the message ``content``, sent when ``trace`` had ``mark`` events, is over:
    accepted and closed, or refused (an error of no message came after it)."""
    after = [r.event for r in trace.received[mark:]]
    queued = next(
        (
            e["message_id"]
            for e in after
            if e["type"] == "queued" and (e.get("message") or {}).get("content") == content
        ),
        None,
    )
    if queued is not None:
        return any(closes(e) and e["message_id"] == queued for e in after)
    return any(e["type"] == "error" and e.get("message_id") is None for e in after)


async def chat(trace: SessionTrace, stop: asyncio.Event) -> None:
    """Send one message at a time until ``stop``, each once the previous is over (or
    after :data:`BOUND_S`: the tally tells a wedged session)."""
    while not stop.is_set() and not trace.closed:
        await send_one(trace, f"s{trace.index}-m{len(trace.sent) + 1}-{uuid.uuid4().hex[:8]}")


async def send_one(trace: SessionTrace, content: str) -> None:
    """Send ``content`` and wait until it is over, for :data:`BOUND_S` at most."""
    mark = len(trace.received)
    try:
        await trace.say(content)
    except (aiohttp.ClientError, ConnectionError):
        # The socket closed: the driver connects again (no event tells when it has).
        deadline = time.monotonic() + BOUND_S
        while trace.ws.closed and not trace.closed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BOUND_S):
            await trace.wait_until(lambda: settled(trace, content, mark))


def replies_after(trace: SessionTrace, since: float) -> int:
    """Replies to messages of ``trace`` sent at or after ``since`` (perf_counter s)."""
    delivery = follow(trace.sent, trace.received)
    return sum(1 for r in delivery.replies if r.dones and r.sent and r.sent.at >= since)


async def every_session_has(sessions: list[SessionTrace], replies: int, since: float) -> None:
    for t in sessions:
        await t.wait_until(lambda t=t: replies_after(t, since) >= replies)  # type: ignore[misc]


def first_reply_after(sessions: list[SessionTrace], since: float) -> float:
    """When the first ``done`` came of a message sent at or after ``since``."""
    times = [
        r.dones[0][0]
        for t in sessions
        for r in follow(t.sent, t.received).replies
        if r.dones and r.sent and r.sent.at >= since
    ]
    return min(times)


async def all_closed(sessions: list[SessionTrace]) -> None:
    """Return once every accepted message of every session is closed."""
    for t in sessions:
        await t.wait_until(lambda t=t: not follow(t.sent, t.received).unanswered())  # type: ignore[misc]


def unacknowledged_writes(cluster: Cluster) -> int:
    """How many writes the processes logged as not acknowledged by a replica in time."""
    return sum(
        line.count("replicas acknowledged within")
        for proc in cluster.procs
        for line in proc.log_path.read_text(errors="replace").splitlines()
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides", [FAST_TAKEOVER, WAIT_ONE], ids=["wait0", "wait1"])
async def test_a_failover_wedges_no_session(
    overrides: Overrides, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    waits = int(overrides["REDIS_WAIT_REPLICAS"].value) if "REDIS_WAIT_REPLICAS" in overrides else 0
    with RedisWithSentinels(tmp_path / "redis", down_after_ms=1000) as redis:
        async with (
            StandinModel(tokens=10, delay_ms=20) as model,  # about 0.2 s a reply
            Cluster(
                redis.url, model.base_url or "", tmp_path / "logs", overrides=overrides
            ) as cluster,
        ):
            await cluster.start(servers=2, workers=2)
            async with ChatDriver([s.url for s in cluster.servers], reconnect=True) as driver:
                sessions = await driver.open(SESSIONS)
                stop = asyncio.Event()
                chatting = [asyncio.create_task(chat(t, stop)) for t in sessions]
                try:
                    async with asyncio.timeout(BOUND_S):
                        await every_session_has(sessions, 1, since=0.0)
                    old = redis.primary()
                    # Every write so far reached the replica within the wait (none logged).
                    unacknowledged_before = unacknowledged_writes(cluster)
                    killed_at = time.perf_counter()
                    redis.kill(old)
                    await asyncio.to_thread(redis.wait_failover, old)
                    failover_s = time.perf_counter() - killed_at
                    async with asyncio.timeout(3 * BOUND_S):
                        await every_session_has(sessions, AFTER_FAILOVER, since=killed_at)
                finally:
                    stop.set()
                    await asyncio.gather(*chatting)
                try:
                    async with asyncio.timeout(BOUND_S):
                        await all_closed(sessions)
                except TimeoutError:
                    pass  # counted as wedged
                outage_s = first_reply_after(sessions, killed_at) - killed_at
            unacknowledged = unacknowledged_writes(cluster)

    figures, codes = tally(sessions, killed_at)
    with capsys.disabled():
        print(
            f"\n[failover REDIS_WAIT_REPLICAS={waits}] {SESSIONS} sessions, 2 servers, "
            f"2 workers: {figures.line()}; failover {failover_s:.1f} s, first reply after "
            f"the kill {outage_s:.1f} s; writes not acknowledged by a replica in time: "
            f"{unacknowledged_before} before the kill, {unacknowledged} in all; closing "
            f"errors {dict(codes)}"
        )
    assert figures.wedged == 0, figures.line()
    if waits:
        assert figures.lost == 0, figures.line()
        assert unacknowledged_before == 0, "the replica did not acknowledge every write"
    assert not cluster.log_errors(), show(cluster.log_errors())
