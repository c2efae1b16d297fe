"""Traces of replies across processes (OpenTelemetry), on only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off (the default), the SDK is never imported nor set up: :func:`current_tracer` is None,
and the code on a reply's path, which reads it once per socket or worker, tests that
once per message and builds no span and carries no context.

On, each process sets up the SDK once at its entry point (:func:`setup_tracing`, as it
sets up logging): a tracer provider that batches spans (the SDK's
``BatchSpanProcessor``) and exports them over OTLP/HTTP, protobuf encoded, to
``<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`` (the OTLP specification's path for the
generic endpoint). The SDK's own variables apply: ``OTEL_SERVICE_NAME`` (default
``parley-server`` or ``parley-worker``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_HEADERS`` (e.g. a collector's key: never logged), ``OTEL_BSP_*``
(batching), ``OTEL_TRACES_SAMPLER``.

A message's trace crosses Redis as a W3C Trace Context ``traceparent``
(https://www.w3.org/TR/trace-context/) in its stream entry: the server writes the one
of its ``enqueue`` span (:func:`traceparent`), and the worker that takes the entry,
or takes it over, continues the trace from it (:func:`remote_parent`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

#: The instrumentation scope of every Parley span.
SCOPE = "parley"
#: The path of the traces signal under an OTLP/HTTP base endpoint.
TRACES_PATH = "/v1/traces"

_PROPAGATOR = TraceContextTextMapPropagator()
#: The process's tracer and provider once :func:`setup_tracing` turned tracing on.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def traces_url(endpoint: str) -> str:
    """Where spans go for ``OTEL_EXPORTER_OTLP_ENDPOINT`` = ``endpoint`` (a base URL)."""
    return endpoint.rstrip("/") + TRACES_PATH


def setup_tracing(endpoint: str, service: str) -> Tracer | None:
    """Turn tracing on for this process if ``endpoint`` is set; once, at its entry point.

    OpenTelemetry's tracer provider belongs to the process (it can be set only once),
    so this is not done per app or per worker object: they read :func:`current_tracer`.

    Args:
        endpoint: ``OTEL_EXPORTER_OTLP_ENDPOINT``, the collector's OTLP/HTTP base URL
            (e.g. ``http://127.0.0.1:4318``); "": tracing stays off.
        service: the process's ``service.name`` unless ``OTEL_SERVICE_NAME`` names one.

    Returns:
        The tracer, or None (off).
    """
    global _tracer, _provider
    if not endpoint:
        return None
    if _tracer is not None:
        return _tracer
    # Imported here: a process that does not trace never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Given attributes win over the environment's: the default name only when unset.
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer(SCOPE)
    logger.info("tracing on: spans go to %s", traces_url(endpoint))
    return _tracer


def current_tracer() -> Tracer | None:
    """The process's tracer, or None while tracing is off."""
    return _tracer


def shutdown_tracing() -> None:
    """Export the spans still batched and stop the exporter (at a process's exit);
    nothing when tracing is off."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def traceparent(context: Context | None = None) -> str:
    """The W3C ``traceparent`` of ``context``'s span (None: the current one); "" if it
    has no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return carrier.get("traceparent", "")


def remote_parent(value: str) -> Context | None:
    """The context whose parent is the span a ``traceparent`` names; None if ``value``
    is empty or malformed (the span then starts a trace of its own)."""
    if not value:
        return None
    context = _PROPAGATOR.extract({"traceparent": value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
