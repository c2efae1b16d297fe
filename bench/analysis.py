"""What the clients received, checked and timed: one :class:`Tally` per load phase.

The checks are the system tests' own (:func:`testkit.delivery.follow`): every message a
socket sent is matched to its ``queued`` event by content (the event carries the stored
message), then to its ``token`` and ``done`` events by message id. Counted (each must
stay 0):

- lost: a message never ``queued``, or with neither ``done`` nor ``error``;
- misrouted: an event about a message this socket did not send, or a reply whose text
  is not the stand-in's reply to this message (:func:`testkit.standin.reply_text`);
- duplicated: each ``done`` after the first of a message;
- out of order: sockets whose replies did not come in the order of their messages;
- garbled: replies whose ``token`` events (since the last ``restart``) do not join to
  their ``done`` text;
- errors: ``error`` events, of a message or not.

Timing, per reply, at the client and subtracting the model's own (the stand-in reports
when it received each request and wrote each delta, see :class:`testkit.standin.Timing`):

- added time to first token = (first ``token`` - message sent) - (first delta written -
  request received by the model);
- added time to done = (``done`` - message sent) - (last delta written - request received);
- the added time to first token in two parts: to the model (message sent -> request
  received by the model) and from the model (first delta written -> first ``token``);
- event delay, per model delta: when the client received the event holding it minus
  when the model wrote it. It includes any coalescing wait;
- event lag, per ``token`` event: the same for the newest delta the event holds (how
  far delivery trails the model, coalescing aside).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.load import ChatSocket
from testkit.delivery import Reply, follow
from testkit.driver import Sent


@dataclass(frozen=True)
class ModelTiming:
    """The stand-in's own timing of one reply (perf_counter, s); see ``GET /_timings``."""

    received: float
    first: float
    done: float
    deltas: list[float] | None

    @classmethod
    def parse(cls, rows: Iterable[dict[str, Any]]) -> dict[str, ModelTiming]:
        """``GET /_timings`` rows by prompt (a retried prompt keeps its last reply)."""
        return {
            row["prompt"]: cls(row["received"], row["first"], row["done"], row.get("deltas"))
            for row in rows
            if row.get("done") is not None
        }


@dataclass
class Tally:
    """Counts, durations (ms) and event times (perf_counter, s) of one or more phases.

    ``late`` is filled by the caller, who knows the model's own time.
    """

    sent: int = 0
    replies: int = 0
    errors: int = 0
    lost: int = 0
    misrouted: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    garbled: int = 0
    late: int = 0
    token_events: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    error_codes: Counter[str] = field(default_factory=Counter)
    client_ttft_ms: list[float] = field(default_factory=list)
    client_done_ms: list[float] = field(default_factory=list)
    model_ttft_ms: list[float] = field(default_factory=list)
    model_done_ms: list[float] = field(default_factory=list)
    added_ttft_ms: list[float] = field(default_factory=list)
    added_done_ms: list[float] = field(default_factory=list)
    to_model_ms: list[float] = field(default_factory=list)
    from_model_ms: list[float] = field(default_factory=list)
    event_delay_ms: list[float] = field(default_factory=list)
    event_delay_at: list[float] = field(default_factory=list)
    event_lag_ms: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    event_at: list[float] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Everything that must be 0: errors, lost, misrouted, duplicated, out of order,
        garbled."""
        return (
            self.errors
            + self.lost
            + self.misrouted
            + self.duplicated
            + self.out_of_order
            + self.garbled
        )

    def add(self, other: Tally) -> None:
        """Fold ``other`` (another phase of the same target) into this one."""
        for name in (
            "sent",
            "replies",
            "errors",
            "lost",
            "misrouted",
            "duplicated",
            "out_of_order",
            "garbled",
            "late",
            "token_events",
            "tokens",
            "elapsed_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.error_codes.update(other.error_codes)
        for name in (
            "client_ttft_ms",
            "client_done_ms",
            "model_ttft_ms",
            "model_done_ms",
            "added_ttft_ms",
            "added_done_ms",
            "to_model_ms",
            "from_model_ms",
            "event_delay_ms",
            "event_delay_at",
            "event_lag_ms",
            "done_at",
            "event_at",
        ):
            getattr(self, name).extend(getattr(other, name))


def tally(
    sockets: Sequence[ChatSocket],
    timings: dict[str, ModelTiming],
    deltas_of: Callable[[str], list[str]] | None,
    elapsed_s: float,
) -> Tally:
    """Check and time what ``sockets`` received.

    Args:
        sockets: the phase's sockets, after their conversations ended.
        timings: the model's own timing of each reply, by prompt.
        deltas_of: the deltas the model streams for a prompt (the stand-in's
            :func:`~testkit.standin.reply_tokens`); None when unknown (a real model):
            replies are then not checked against their prompt.
        elapsed_s: the phase's duration (s), for rates.
    """
    t = Tally(elapsed_s=elapsed_s)
    for sock in sockets:
        _tally_socket(t, sock, timings, deltas_of)
    return t


def _tally_socket(
    t: Tally,
    sock: ChatSocket,
    timings: dict[str, ModelTiming],
    deltas_of: Callable[[str], list[str]] | None,
) -> None:
    d = follow(sock.sent, sock.received)
    errors = d.stray_errors + [e for r in d.replies for e in r.errors]
    t.sent += len(sock.sent)
    t.errors += len(errors)
    t.error_codes.update(e.get("code", "?") for e in errors)
    t.lost += len(d.unqueued()) + len(d.unanswered())
    t.out_of_order += 1 if d.out_of_order() else 0
    t.duplicated += sum(len(r.dones) - 1 for r in d.duplicated())
    wrong = (
        d.wrong(lambda content, text: text == "".join(deltas_of(content)))
        if deltas_of is not None
        else []
    )
    t.misrouted += len(d.foreign) + len(wrong)
    t.garbled += sum(1 for r in d.garbled() if r not in wrong)
    for reply in d.replies:
        t.token_events += len(reply.tokens)
        t.event_at += [at for at, _ in reply.tokens]
        if reply.dones and reply.sent is not None and reply not in wrong:
            _time_reply(t, reply, reply.sent, timings.get(reply.sent.content), deltas_of)


def _time_reply(
    t: Tally,
    reply: Reply,
    sent: Sent,
    model: ModelTiming | None,
    deltas_of: Callable[[str], list[str]] | None,
) -> None:
    """Count and time one ``reply`` to the message ``sent``, against the model's own
    timing (None: unknown)."""
    sent_at = sent.at
    t.replies += 1
    done_at = reply.dones[0][0]
    tokens = reply.attempt_tokens
    first_at = tokens[0][0] if tokens else None
    t.done_at.append(done_at)
    t.client_done_ms.append((done_at - sent_at) * 1000)
    if first_at is not None:
        t.client_ttft_ms.append((first_at - sent_at) * 1000)
    if model is None:
        return
    model_ttft, model_done = model.first - model.received, model.done - model.received
    t.model_ttft_ms.append(model_ttft * 1000)
    t.model_done_ms.append(model_done * 1000)
    t.added_done_ms.append((done_at - sent_at - model_done) * 1000)
    t.to_model_ms.append((model.received - sent_at) * 1000)
    if first_at is not None:
        t.added_ttft_ms.append((first_at - sent_at - model_ttft) * 1000)
        t.from_model_ms.append((first_at - model.first) * 1000)
    if deltas_of is None:
        return
    deltas = deltas_of(sent.content)
    t.tokens += len(deltas)
    if model.deltas is not None:
        lag: dict[float, float] = {}
        for at, delay in _delta_delays(deltas, model.deltas, tokens):
            t.event_delay_at.append(at)
            t.event_delay_ms.append(delay)
            lag[at] = min(delay, lag.get(at, delay))
        t.event_lag_ms.extend(lag.values())


def _delta_delays(
    deltas: list[str], written: list[float], events: list[tuple[float, str]]
) -> list[tuple[float, float]]:
    """Per model delta: when the event completing it arrived (s), and how long after the
    model wrote it (ms).

    A delta is complete once the text received reaches its last non-blank character
    (the worker holds trailing whitespace back until more text follows).
    """
    delays: list[tuple[float, float]] = []
    received = 0
    j = -1
    end = 0
    for delta, wrote_at in zip(deltas, written, strict=False):
        end += len(delta)
        needed = end - (len(delta) - len(delta.rstrip()))
        while received < needed and j + 1 < len(events):
            j += 1
            received += len(events[j][1])
        if received < needed or j < 0:
            break
        delays.append((events[j][0], (events[j][0] - wrote_at) * 1000))
    return delays
