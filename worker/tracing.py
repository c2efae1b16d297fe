"""The spans of the replies one worker generates, while tracing is on
(:mod:`runtime.tracing`; off, the worker holds no :class:`ReplyTraces` and builds no
span).

A worker continues the trace of each entry it takes from the ``traceparent`` the entry
carries (the server's ``parley.enqueue`` span; an entry without one starts a trace)::

    parley.take     CONSUMER  the entry, handed to its reply: the stream, the entry id,
    │                          the queue wait (ms since the entry was added), the
    │                          delivery count; a "takeover" event when it was claimed
    │                          from a dead worker
    ├─ parley.begin            the attempt begins (begin.lua): a "restart" event when
    │                          an earlier attempt's text had reached clients
    ├─ chat <model> CLIENT     the model request, after the OpenTelemetry GenAI
    │  │                        conventions: time to first chunk, token counts; a
    │  │                        "restart" event when its stream broke and it began again
    │  └─ parley.emit          each event published while it streams
    └─ parley.finish           the reply recorded with its done (or error) event

``parley.take`` ends at once, so the spans of an attempt whose worker is killed mid-reply
(exported before the kill) still hang under an exported span: a takeover shows both
attempts, each under its own ``parley.take``, in the message's trace.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from opentelemetry.context import attach, detach
from opentelemetry.trace import SpanKind, StatusCode, Tracer, get_current_span, set_span_in_context
from opentelemetry.util.types import AttributeValue

from protocol.event_ids import stream_id_key
from protocol.wire import MessageEntry, RestartEvent, TokenEvent
from runtime.logs import fingerprint
from runtime.tracing import remote_parent
from storage import keys
from storage.store import RESTARTED, Begun
from worker.config import WorkerSettings
from worker.emits import EmitBatcher
from worker.model.response import Usage
from worker.publish import TokenPublisher
from worker.turn import Turn

#: The OpenTelemetry GenAI semantic conventions' attributes of an inference span
#: (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/); spelled out, as
#: the semantic-conventions package keeps them only as deprecated, incubating names.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"

P = TypeVar("P")
S = TypeVar("S", bound="Streamed")


class Streamed(Protocol):
    """What the traces read of a streamed reply (:class:`worker.generation._Streamed`)."""

    @property
    def first_token_s(self) -> float:
        """Its time to first token (s)."""


class Delivery(Protocol):
    """The stream entry taken (:class:`worker.reply.Delivery`)."""

    @property
    def key(self) -> tuple[str, str]:
        """``(stream, entry id)``."""

    @property
    def deliveries(self) -> int:
        """Its delivery count when taken over, 0 when read fresh."""


def note(event: str, **attributes: AttributeValue) -> None:
    """Add ``event`` to the current span if one records (restarts and the like: rare
    paths, which need no test of whether tracing is on)."""
    span = get_current_span()
    if span.is_recording():
        span.add_event(event, attributes)


class ReplyTraces:
    """Makes the spans of one worker's replies (see the module).

    Args:
        tracer: the process's tracer.
        settings: the worker's (its consumer name, its model and the request's options).
    """

    def __init__(self, tracer: Tracer, settings: WorkerSettings) -> None:
        self._tracer = tracer
        self._consumer = settings.consumer_name
        base_url, self._model, _ = settings.resolved_llm()  # the key stays out
        url = urlsplit(base_url)
        self._request: dict[str, AttributeValue] = {
            GEN_AI_OPERATION_NAME: "chat",
            # The API spoken (OpenAI's chat completions); server.address says whose.
            GEN_AI_PROVIDER_NAME: "openai",
            GEN_AI_REQUEST_MAX_TOKENS: settings.llm_max_tokens,
            GEN_AI_REQUEST_TEMPERATURE: settings.llm_temperature,
            GEN_AI_REQUEST_STREAM: True,
            "server.address": url.hostname or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }

    @contextmanager
    def take(self, delivery: Delivery, entry: MessageEntry) -> Iterator[None]:
        """The ``parley.take`` span of ``entry``, ended at once; the block runs in its
        context, so that the attempt's spans are its children."""
        stream, entry_id = delivery.key
        waited_ms = time.time() * 1000 - stream_id_key(entry_id)[0]
        span = self._tracer.start_span(
            "parley.take",
            context=remote_parent(entry.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.operation.type": "receive",
                "messaging.destination.name": stream,
                "messaging.consumer.group.name": keys.CONSUMER_GROUP,
                "messaging.message.id": entry_id,
                "parley.consumer": self._consumer,
                "parley.message_id": entry.message_id,
                "parley.session": fingerprint(entry.token),
                "parley.seq": entry.seq,
                "parley.queue_wait_ms": round(max(waited_ms, 0.0), 1),
                "parley.deliveries": delivery.deliveries,
            },
        )
        if delivery.deliveries:
            span.add_event("takeover", {"parley.deliveries": delivery.deliveries})
        span.end()
        token = attach(set_span_in_context(span))
        try:
            yield
        finally:
            detach(token)

    async def begin(self, begin: Awaitable[Begun], attempt: str) -> Begun:
        """Await ``begin`` (:meth:`storage.replies.Replies.begin`) in a ``parley.begin`` span."""
        with self._tracer.start_as_current_span(
            "parley.begin", attributes={"parley.attempt": attempt}
        ) as span:
            begun = await begin
            span.set_attributes(
                {"parley.begin": begun.status.name, "parley.crashes": begun.crashes}
            )
            if begun.status is RESTARTED:
                span.add_event("restart", {"parley.reason": "an earlier attempt's text was sent"})
            return begun

    async def model_request(
        self, request: Awaitable[tuple[P, S]], model: str | None, usage: Usage
    ) -> tuple[P, S]:
        """Await ``request`` (the reply streamed, with every retry and restart) in a
        ``chat <model>`` span, with what ``usage`` (the reply's
        :func:`~worker.model.response.track_usage`) holds once it ends."""
        name = model or self._model
        with self._tracer.start_as_current_span(
            f"chat {name}",
            kind=SpanKind.CLIENT,
            attributes={**self._request, GEN_AI_REQUEST_MODEL: name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                plan, streamed = await request
            except Exception as e:
                span.set_attribute(ERROR_TYPE, str(getattr(e, "code", None) or type(e).__name__))
                span.set_status(StatusCode.ERROR)
                raise
            finally:
                if usage.reported:
                    span.set_attributes(
                        {
                            GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
                            GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
                        }
                    )
                span.set_attribute("parley.model_requests", usage.requests)
            span.set_attribute(GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, streamed.first_token_s)
            return plan, streamed

    async def finish(self, finish: Awaitable[str | None], outcome: str) -> str | None:
        """Await ``finish`` (:meth:`storage.replies.Replies.finish`) in a ``parley.finish`` span."""
        with self._tracer.start_as_current_span(
            "parley.finish", attributes={"parley.outcome": outcome}
        ) as span:
            event_id = await finish
            span.set_attribute("parley.recorded", event_id is not None)
            return event_id

    def publisher(self, emits: EmitBatcher, settings: WorkerSettings, turn: Turn) -> TokenPublisher:
        """A :class:`TokenPublisher` of ``turn`` whose every emit is a ``parley.emit`` span."""
        return _TracedPublisher(self._tracer, emits, settings, turn)


class _TracedPublisher(TokenPublisher):
    def __init__(
        self, tracer: Tracer, emits: EmitBatcher, settings: WorkerSettings, turn: Turn
    ) -> None:
        super().__init__(emits, settings, turn)
        self._tracer = tracer

    async def emit(self, event: TokenEvent | RestartEvent, first: bool = True) -> None:
        """:meth:`TokenPublisher.emit` in a ``parley.emit`` span; a ``restart`` (the
        model's stream broke: the reply is generated again) is also an event of the
        model request's span."""
        if isinstance(event, RestartEvent):
            note("restart", **{"parley.reason": "the model's stream broke"})
        with self._tracer.start_as_current_span(
            "parley.emit", attributes={"parley.event": event.type, "parley.first": first}
        ):
            await super().emit(event, first)
