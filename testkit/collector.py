"""A stand-in for an OpenTelemetry collector: it accepts OTLP/HTTP protobuf exports of
traces (``POST /v1/traces``, https://opentelemetry.io/docs/specs/otlp/#otlphttp) and
keeps their spans, decoded with ``opentelemetry-proto``, for the tests to read; and a
text rendering of a trace as an indented tree (:func:`render_tree`).

``python -m testkit.collector --port P`` serves one for the benchmark, which reads
its counts at ``GET /_stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from runtime.tasks import until_stopped

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Span:
    """One span as exported: ids in hex (``parent_id`` "" for a root), times in ns since
    the epoch, ``kind`` as OTLP names it (``SPAN_KIND_SERVER``...), the exporting
    process's ``service.name``."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: str

    @property
    def duration_ms(self) -> float:
        """How long it lasted (ms)."""
        return (self.end_ns - self.start_ns) / 1e6

    def event_names(self) -> list[str]:
        """The names of its events, in order."""
        return [name for name, _ in self.events]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which) if which else None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode(body: bytes) -> list[Span]:
    """The spans of one ``ExportTraceServiceRequest``.

    Raises:
        google.protobuf.message.DecodeError: ``body`` is not one.
    """
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = _attributes(resource_spans.resource.attributes).get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=SpanProto.SpanKind.Name(s.kind),
                        service=str(service),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=_attributes(s.attributes),
                        events=[(e.name, _attributes(e.attributes)) for e in s.events],
                        status=Status.StatusCode.Name(s.status.code),
                    )
                )
    return spans


@dataclass
class Collector:
    """The collector stand-in (see the module). ``spans`` holds every span received, in
    arrival order, unless ``keep`` is False (the benchmark's: only counted)."""

    keep: bool = True
    spans: list[Span] = field(default_factory=list)
    exports: int = 0
    received: int = 0
    endpoint: str | None = None
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); return the OTLP/HTTP base endpoint,
        what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._export)
        app.router.add_get("/health", self._health)
        app.router.add_get("/_stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.endpoint = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.endpoint

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_until(self, predicate: Callable[[list[Span]], bool]) -> list[Span]:
        """Return the spans once ``predicate(spans)`` holds, re-checked at each export.
        Bound it with ``asyncio.timeout``."""
        while not predicate(self.spans):
            changed = self._changed
            await changed.wait()
        return self.spans

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, in start order."""
        return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns)

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            spans = decode(body)
        except DecodeError:
            return web.Response(status=400, text="not an ExportTraceServiceRequest")
        self.exports += 1
        self.received += len(spans)
        if self.keep:
            self.spans.extend(spans)
        self._changed.set()
        self._changed = asyncio.Event()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"exports": self.exports, "spans": self.received})


def render_tree(spans: list[Span], labels: Callable[[Span], str] | None = None) -> str:
    """One trace as an indented text tree: each span under its parent, in start order,
    with its service, its start (ms after the trace's first span) and duration, its
    events, and what ``labels`` says of it. A span whose parent was not exported (its
    process died first) is shown at the top level, marked so."""
    if not spans:
        return "(no spans)"
    start = min(s.start_ns for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_id if span.parent_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(span: Span, prefix: str, branch: str, below: str) -> None:
        orphan = " (parent not exported)" if span.parent_id and span.parent_id not in ids else ""
        extra = labels(span) if labels is not None else ""
        events = f"; events: {', '.join(span.event_names())}" if span.events else ""
        lines.append(
            f"{prefix}{branch}{span.name} [{span.service}] "
            f"+{(span.start_ns - start) / 1e6:.1f} ms, {span.duration_ms:.1f} ms"
            f"{extra}{events}{orphan}"
        )
        kids = children.get(span.span_id, [])
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, below, "└─ " if last else "├─ ", below + ("   " if last else "│  "))

    for root in children.get("", []):
        walk(root, "", "", "")
    return "\n".join(lines)


async def _serve(args: argparse.Namespace) -> None:
    collector = Collector(keep=False)
    endpoint = await collector.start(args.host, args.port)
    print(f"collector stand-in at {endpoint}", flush=True)
    try:
        await until_stopped()
    finally:
        await collector.stop()


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m testkit.collector --port P``: spans counted, not kept."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
