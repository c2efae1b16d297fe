"""One trace per reply, across real server and worker processes that export their
spans over OTLP/HTTP to a collector stand-in in this process (:mod:`testkit.collector`).

Must hold: one message gives one trace, the server's spans (the message, its enqueue,
the relay of its first and last event) and the worker's (take, begin, the model
request, emits, finish) joined by parent ids; a takeover after the worker holding the
entry is SIGKILLed shows both attempts in the same trace, the second with a
``takeover`` event. ``-s`` prints the span tree of each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from testkit.collector import Collector, Span, render_tree
from testkit.delivery import show
from testkit.driver import ChatDriver
from testkit.overrides import declare
from testkit.processes import Cluster, tracing_wiring
from testkit.records import pending_owners
from testkit.standin import StandinModel

pytestmark = pytest.mark.system

FAST_TAKEOVER = declare(
    CLAIM_IDLE_MS=(1000, "the killed worker's entry is taken over in 1 s, not 5"),
)
#: How long (ms) a process's spans may wait in its batch before export: the SDK's 5 s
#: would make each test wait that long, and lose what a killed worker held.
SCHEDULE_DELAY_MS = 100
#: The attributes the printed trees show, under shorter names.
SHOWN = {
    "parley.command": "command",
    "parley.queue_wait_ms": "queue_wait_ms",
    "parley.deliveries": "deliveries",
    "parley.consumer": "consumer",
    "parley.begin": "status",
    "gen_ai.response.time_to_first_chunk": "ttft_s",
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "parley.event": "event",
    "parley.relay.first": "first",
    "parley.relay.last": "last",
    "parley.outcome": "outcome",
}


def labels(span: Span) -> str:
    """The attributes of ``span`` that the tree shows."""
    shown = []
    for key, name in SHOWN.items():
        value = span.attributes.get(key)
        if value is None or value is False:
            continue
        if isinstance(value, float):
            value = f"{value:.3f}" if key.startswith("gen_ai") else f"{value:.1f}"
        shown.append(f"{name}={value}" if value is not True else name)
    return f" ({', '.join(shown)})" if shown else ""


def of_message(spans: list[Span], message_id: str) -> str:
    """The trace id of the spans that name ``message_id``; asserts there is one."""
    traces = {s.trace_id for s in spans if s.attributes.get("parley.message_id") == message_id}
    assert len(traces) == 1, f"message {message_id} is in {len(traces)} traces"
    return traces.pop()


def named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def has(*names: str, count: Callable[[str], int] = lambda _: 1) -> Callable[[list[Span]], bool]:
    """Whether the spans received hold at least ``count(name)`` of each of ``names``."""

    def check(spans: list[Span]) -> bool:
        return all(len(named(spans, n)) >= count(n) for n in names)

    return check


def the(spans: list[Span], name: str, **attributes: Any) -> Span:
    """The one span named ``name`` with ``attributes``."""
    found = [
        s
        for s in named(spans, name)
        if all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans {name} {attributes}:\n{render_tree(spans)}"
    return found[0]


@pytest.mark.timeout(90)
async def test_one_message_gives_one_trace_across_server_worker_and_relay(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        Collector() as collector,
        StandinModel(tokens=8, ttft_ms=30, delay_ms=20) as model,  # a few token events
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            wiring=tracing_wiring(collector.endpoint or "", SCHEDULE_DELAY_MS),
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=1)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            [session] = await driver.open(1)
            await driver.send(1)
            assert await driver.wait_replies(timeout_s=30)
        message_id = session.message_ids()[0]
        async with asyncio.timeout(20):
            spans = await collector.wait_until(has("parley.message", "parley.finish"))
        assert not cluster.log_errors(), show(cluster.log_errors())

    trace = collector.trace(of_message(spans, message_id))
    with capsys.disabled():
        print(f"\n[tracing] one reply:\n{render_tree(trace, labels)}")
    assert {s.service for s in trace} == {"parley-server", "parley-worker"}
    by_id = {s.span_id: s for s in trace}
    roots = [s for s in trace if not s.parent_id]
    assert [s.name for s in roots] == ["parley.message"], render_tree(trace)
    assert all(s.parent_id in by_id for s in trace if s.parent_id), "a parent is missing"

    def parent(span: Span) -> str:
        return by_id[span.parent_id].name

    message, enqueue = roots[0], the(trace, "parley.enqueue")
    take, chat = the(trace, "parley.take"), the(trace, "chat standin")
    assert parent(enqueue) == "parley.message" and parent(take) == "parley.enqueue"
    assert [parent(s) for s in (the(trace, "parley.begin"), chat)] == ["parley.take"] * 2
    assert parent(the(trace, "parley.finish", **{"parley.outcome": "done"})) == "parley.take"
    emits = named(trace, "parley.emit")
    assert emits and all(parent(s) == chat.name for s in emits), render_tree(trace)
    first = the(trace, "parley.relay", **{"parley.relay.first": True})
    last = the(trace, "parley.relay", **{"parley.relay.last": True})
    assert parent(first) == parent(last) == "parley.message"
    assert message.end_ns >= last.end_ns, "the message's span ended before its last relay"
    assert message.attributes["parley.message_id"] == message_id
    assert 0 <= take.attributes["parley.queue_wait_ms"] < 10_000
    assert chat.kind == "SPAN_KIND_CLIENT" and take.kind == "SPAN_KIND_CONSUMER"
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "standin"
    assert chat.attributes["gen_ai.response.time_to_first_chunk"] >= 0.03
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] == 8
    assert "parley.session" in message.attributes
    tokens = {session.token, session.token.upper()}
    assert not any(t in repr(s) for s in trace for t in tokens), "a session token in a span"


@pytest.mark.timeout(120)
async def test_a_takeover_after_sigkill_shows_both_attempts_in_the_same_trace(
    redis: Redis[str], redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        Collector() as collector,
        StandinModel(tokens=40, delay_ms=50) as model,  # about 2 s a reply
        Cluster(
            redis_url,
            model.base_url or "",
            tmp_path / "logs",
            overrides=FAST_TAKEOVER,
            wiring=tracing_wiring(collector.endpoint or "", SCHEDULE_DELAY_MS),
        ) as cluster,
    ):
        await cluster.start(servers=1, workers=2)
        async with ChatDriver([cluster.servers[0].url]) as driver:
            [session] = await driver.open(1)
            await driver.send(1)
            async with asyncio.timeout(20):
                await session.wait_until(lambda: len(session.events("token")) >= 3)
                # The first attempt's spans so far have left its worker.
                await collector.wait_until(has("parley.emit", count=lambda _: 2))
            message_id = session.message_ids()[0]
            holder = (await pending_owners(cluster.redis))[message_id]
            victim = cluster.worker_by_consumer(holder)
            cluster.kill(victim)
            assert await driver.wait_replies(timeout_s=30)
        async with asyncio.timeout(20):
            spans = await collector.wait_until(has("parley.message", "parley.finish"))

    trace = collector.trace(of_message(spans, message_id))
    with capsys.disabled():
        print(f"\n[tracing] a takeover:\n{render_tree(trace, labels)}")
    takes = named(trace, "parley.take")
    assert [t.attributes["parley.consumer"] for t in takes] == [
        holder,
        next(w.consumer for w in cluster.workers if w.consumer != holder),
    ], render_tree(trace)
    first, second = takes
    assert first.event_names() == [] and second.event_names() == ["takeover"]
    begins = {s.parent_id: s for s in named(trace, "parley.begin")}
    assert set(begins) == {first.span_id, second.span_id}, render_tree(trace)
    assert begins[first.span_id].attributes["parley.begin"] == "STARTED"
    # Text of the first attempt had reached the client: the second begins with a restart.
    assert begins[second.span_id].attributes["parley.begin"] == "RESTARTED"
    assert "restart" in begins[second.span_id].event_names()
    finish = the(trace, "parley.finish")
    assert finish.parent_id == second.span_id
    assert session.events("restart") and session.events("done")
