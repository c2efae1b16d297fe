"""The spans of the messages one chat socket sends, while tracing is on
(:mod:`runtime.tracing`; off, a socket holds none of this and builds no span).

A message's trace starts on the server that reads its frame::

    parley.message   SERVER    from the command to the relay of its reply's last event
    ├─ parley.enqueue  PRODUCER  admission and queueing: one script call (enqueue.lua,
    │  │                          or revise.lua for a regenerate or an edit), whose
    │  │                          stream entry carries this span's traceparent
    │  └─ parley.take ...        the worker's spans (worker.tracing)
    ├─ parley.relay    the send of the reply's first event to this socket
    └─ parley.relay    the send of its last (``done``, or ``error``)

A refused message's trace ends with its ``parley.enqueue`` span, marked with the
refusal (``error.type``). The relay spans are this socket's: a reply that another
socket or server relays (after a reconnect) has none, and the message's span ends when
this socket closes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import (
    Span,
    SpanKind,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)

from protocol.wire import replies_ended
from runtime.tracing import traceparent
from server.relay import EventRelay

#: The attribute naming the refusal or failure a span ended with (OpenTelemetry's).
ERROR_TYPE = "error.type"
_MESSAGE_ID = '"message_id":"'
#: What a payload that may end a reply holds (as :mod:`server.pending` looks for it).
_ENDINGS = ('"type":"done"', '"type":"error"')
#: Events of a message that are not its reply's (a regenerate's or edit's announcement).
_REVISED = '"type":"revised"'


@dataclass
class _Open:
    """A queued message's span, open until its reply's last event is relayed."""

    span: Span
    relayed_first: bool = False


def message_id_of(payload: str) -> str | None:
    """The ``message_id`` of the (first) event of a hub payload, None if it names none
    (the scripts write compact JSON)."""
    start = payload.find(_MESSAGE_ID)
    if start < 0:
        return None
    start += len(_MESSAGE_ID)
    end = payload.find('"', start)
    return payload[start:end] if end > start else None


class MessageTraces:
    """The spans of one socket's messages (see the module).

    Args:
        tracer: the process's tracer.
        session: the session's fingerprint (never its token).
    """

    __slots__ = ("_open", "_session", "_tracer")

    def __init__(self, tracer: Tracer, session: str) -> None:
        self._tracer = tracer
        self._session = session
        #: Queued messages whose reply's last event has not been relayed, by id.
        self._open: dict[str, _Open] = {}

    @contextmanager
    def message(self, command: str) -> Iterator[None]:
        """The span of one command that queues a message (``message``, ``regenerate``,
        ``edit``), current while the block runs; it ends with the block unless
        :meth:`queued` kept it open for the relay."""
        span = self._tracer.start_span(
            "parley.message",
            context=Context(),  # a trace of its own, whatever the socket's context
            kind=SpanKind.SERVER,
            attributes={"parley.command": command, "parley.session": self._session},
        )
        token = attach(set_span_in_context(span))
        try:
            yield
        finally:
            detach(token)
            if not any(o.span is span for o in self._open.values()):
                span.end()

    @contextmanager
    def enqueue(self) -> Iterator[str]:
        """The ``parley.enqueue`` span, child of the current message's: yields its
        traceparent, for the stream entry. A refusal (any exception) marks it."""
        with self._tracer.start_as_current_span(
            "parley.enqueue",
            kind=SpanKind.PRODUCER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield traceparent()
            except Exception as e:
                span.set_attribute(ERROR_TYPE, str(getattr(e, "code", None) or type(e).__name__))
                span.set_status(StatusCode.ERROR)
                raise

    def queued(self, message_id: str, seq: int, entry: str) -> None:
        """The current message was queued: its span stays open until the last event of
        its reply is relayed (or the socket closes)."""
        span = get_current_span()
        span.set_attributes({"parley.message_id": message_id, "parley.seq": seq})
        span.set_attribute("parley.entry", entry)
        previous = self._open.pop(message_id, None)
        if previous is not None:  # queued again by this socket before its reply ended
            previous.span.end()
        self._open[message_id] = _Open(span)

    async def deliver(self, relay: EventRelay, payload: str) -> None:
        """:meth:`EventRelay.deliver`, inside a ``parley.relay`` span when ``payload``
        holds the first or the last event of an open message's reply; the last ends the
        message's span."""
        message_id = message_id_of(payload) if self._open else None
        state = self._open.get(message_id) if message_id is not None else None
        if message_id is None or state is None or _REVISED in payload:
            await relay.deliver(payload)
            return
        last = any(e in payload for e in _ENDINGS) and message_id in replies_ended(payload)
        first = not state.relayed_first
        if not first and not last:
            await relay.deliver(payload)
            return
        state.relayed_first = True
        with self._tracer.start_as_current_span(
            "parley.relay",
            context=set_span_in_context(state.span),
            attributes={"parley.relay.first": first, "parley.relay.last": last},
        ):
            await relay.deliver(payload)
        if last:
            del self._open[message_id]
            state.span.end()

    def close(self) -> None:
        """End the spans of the messages whose replies this socket did not relay to
        the end (it is closing)."""
        for state in self._open.values():
            state.span.set_attribute("parley.socket_closed", True)
            state.span.end()
        self._open.clear()
