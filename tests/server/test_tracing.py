"""Tracing is off and free unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: no span is
made and no ``traceparent`` reaches a stream entry. And with a tracer, one reply is one
trace across the server and the worker (in this process; across processes:
``tests/system/test_tracing.py``).

Both run a real server and worker in this process with a recording tracer provider
behind OpenTelemetry's global API (as if some other code had set one up): off, Parley
must make no span through it, and FastAPI's own spans stay off too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from runtime import tracing
from storage import keys
from tests.support.events import count, read_until
from tests.support.parley import Parley, running_parley


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A provider that records every span, set as OpenTelemetry's global one for the
    test (its private slot, restored after: the API lets a process set it only once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def one_reply(parley: Parley, http: aiohttp.ClientSession, *, regenerate: bool) -> str:
    """A new session's message answered (then asked again if ``regenerate``); its token."""
    token = await parley.create_session(http)
    async with http.ws_connect(parley.ws_url, params={"token": token}) as ws:
        await ws.send_str(json.dumps({"type": "message", "content": "hello"}))
        await read_until(ws, count("done", 1))
        if regenerate:
            await ws.send_str(json.dumps({"type": "regenerate"}))
            await read_until(ws, count("done", 1))
    return token


async def entries(redis: Redis[str], token: str) -> list[dict[str, str]]:
    """The fields of the session's entries in its message stream."""
    return [fields for _, fields in await redis.xrange(keys.message_stream_of(token))]


async def test_with_tracing_off_no_span_is_made_and_no_traceparent_queued(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession, recorder: InMemorySpanExporter
) -> None:
    assert tracing.current_tracer() is None
    async with running_parley(redis_url, redis) as parley:
        assert parley.server_settings.otel_exporter_otlp_endpoint == ""
        token = await one_reply(parley, http, regenerate=True)
        queued = await entries(redis, token)
    assert tracing.current_tracer() is None
    assert recorder.get_finished_spans() == ()
    assert len(queued) == 2 and all("traceparent" not in e for e in queued), queued
    assert tracing.setup_tracing("", "parley-server") is None, "tracing on without an endpoint"
    assert tracing.current_tracer() is None


async def test_with_a_tracer_each_reply_is_one_trace(
    redis_url: str,
    redis: Redis[str],
    http: aiohttp.ClientSession,
    recorder: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What setup_tracing leaves once it has set the provider up (the global one here).
    monkeypatch.setattr(tracing, "_tracer", trace.get_tracer(tracing.SCOPE))
    async with running_parley(redis_url, redis) as parley:
        parley.standin.delay_ms = 20  # token events before the end: emits
        token = await one_reply(parley, http, regenerate=True)
        queued = await entries(redis, token)
    spans = recorder.get_finished_spans()
    messages = [s for s in spans if s.name == "parley.message"]
    assert [m.attributes["parley.command"] for m in messages if m.attributes] == [
        "message",
        "regenerate",
    ]
    for message, entry in zip(messages, queued, strict=True):
        trace_id = message.context.trace_id
        own = [s for s in spans if s.context.trace_id == trace_id]
        names = sorted({s.name for s in own})
        assert names == sorted(
            {
                "parley.message",
                "parley.enqueue",
                "parley.relay",
                "parley.take",
                "parley.begin",
                "chat standin",
                "parley.emit",
                "parley.finish",
            }
        ), names
        [enqueue] = named(own, "parley.enqueue")
        version, trace_hex, parent_hex, _flags = entry["traceparent"].split("-")
        assert (version, trace_hex) == ("00", f"{trace_id:032x}")
        assert parent_hex == f"{enqueue.context.span_id:016x}", "the entry names its enqueue"
        [take] = named(own, "parley.take")
        assert take.parent is not None and take.parent.span_id == enqueue.context.span_id
    assert len({m.context.trace_id for m in messages}) == 2, "one trace per reply"


def named(spans: list[ReadableSpan] | tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]
