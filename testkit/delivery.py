"""The one delivery checker of the system tests and the benchmark: what clients saw
against what they sent.

:func:`follow` sorts what one socket received by message (a :class:`Delivery`), and its
checks say which messages were lost, answered twice, answered out of order, answered with
another message's reply, or streamed with tokens that do not join to the reply. The
system tests describe each problem (:func:`check_deliveries`, into :class:`Findings`);
the benchmark counts them and times the replies (:func:`bench.analysis.tally`).

What the system recorded (histories, prompts, pending entries) is checked by
:mod:`testkit.records`.

Message contents are ``s<session>-m<k>-<8 hex digits>`` (see :meth:`ChatDriver.send`),
unique in a run, so any text found in a reply or a prompt names the session and the
message it came from.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from testkit.driver import Received, Sent, SessionTrace
from testkit.standin import REPLY_PREFIX

#: Whether a reply's text answers a message's content: ``answers(content, text)``.
Answers = Callable[[str, str], bool]


@dataclass(eq=False)
class Version:
    """What one socket received about one answer to a message, before a ``revised``
    event replaced it (see :attr:`Reply.earlier`)."""

    content: str | None
    tokens: list[tuple[float, str]]
    restarts: int
    dones: list[tuple[float, str]]
    streamed: str | None
    errors: list[dict[str, Any]]


@dataclass(eq=False)
class Reply:
    """What one socket received about one of its messages (a ``queued`` event's id).

    The fields describe its latest answer: a ``revised`` event (a ``regenerate`` or
    ``edit``) moves them to :attr:`earlier` and starts over.

    Attributes:
        k: the message's place among the socket's ``queued`` events, from 0.
        content: the message's content, as its ``queued`` (or last ``revised``) event
            holds it.
        sent: the message as the socket sent it (its first content), None if none.
        tokens: every ``token`` event: (arrival, content), arrival in perf_counter s.
        attempt: where in ``tokens`` the last attempt starts (after the last ``restart``).
        restarts: ``restart`` events.
        dones: every ``done`` event: (arrival, reply content).
        streamed: the last attempt's tokens joined, when the first ``done`` came.
        errors: the ``error`` events.
        earlier: the answers ``revised`` events replaced, oldest first.
    """

    message_id: str
    k: int
    content: str | None
    sent: Sent | None
    tokens: list[tuple[float, str]] = field(default_factory=list)
    attempt: int = 0
    restarts: int = 0
    dones: list[tuple[float, str]] = field(default_factory=list)
    streamed: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    earlier: list[Version] = field(default_factory=list)

    @property
    def attempt_tokens(self) -> list[tuple[float, str]]:
        """The ``token`` events since the last ``restart``."""
        return self.tokens[self.attempt :]

    def revise(self, content: str | None) -> None:
        """A ``revised`` event: keep the answer so far in :attr:`earlier`, start over
        for the message's ``content`` now."""
        self.earlier.append(
            Version(
                self.content, self.tokens, self.restarts, self.dones, self.streamed, self.errors
            )
        )
        self.content = content
        self.tokens, self.attempt, self.restarts = [], 0, 0
        self.dones, self.streamed, self.errors = [], None, []

    def versions(self) -> list[Version]:
        """Every answer, the replaced ones then the latest."""
        latest = Version(
            self.content, self.tokens, self.restarts, self.dones, self.streamed, self.errors
        )
        return [*self.earlier, latest]


@dataclass
class Delivery:
    """One socket's events, by message; each check is a method.

    Attributes:
        sent: what the socket sent, in order.
        replies: one per ``queued`` event, in their order.
        foreign: events about a message this socket did not send (misrouted).
        stray_errors: ``error`` events about no message (``message_id`` null).
        done_order: the replies in the order their first ``done`` came.
    """

    sent: Sequence[Sent]
    replies: list[Reply]
    foreign: list[dict[str, Any]] = field(default_factory=list)
    stray_errors: list[dict[str, Any]] = field(default_factory=list)
    done_order: list[Reply] = field(default_factory=list)

    def unqueued(self) -> list[Sent]:
        """Messages sent that no ``queued`` event carries (lost)."""
        queued = {r.content for r in self.replies}
        return [s for s in self.sent if s.content not in queued]

    def unanswered(self) -> list[Reply]:
        """Messages queued that got neither ``done`` nor ``error`` (lost)."""
        return [r for r in self.replies if not r.dones and not r.errors]

    def duplicated(self) -> list[Reply]:
        """Messages with more than one ``done`` for one answer."""
        return [r for r in self.replies if any(len(v.dones) > 1 for v in r.versions())]

    def out_of_order(self) -> list[tuple[Reply, Reply]]:
        """(reply, the reply to a later message that came before it), for each reply
        that came after the reply to a message sent after its own."""
        found: list[tuple[Reply, Reply]] = []
        latest: Reply | None = None
        for reply in self.done_order:
            if latest is not None and reply.k < latest.k:
                found.append((reply, latest))
            elif latest is None or reply.k > latest.k:
                latest = reply
        return found

    def wrong(self, answers: Answers) -> list[Reply]:
        """Replies one of whose answers' (first) ``done`` text does not answer the
        message as it stood then."""
        return [
            r
            for r in self.replies
            if any(v.dones and not answers(v.content or "", v.dones[0][1]) for v in r.versions())
        ]

    def garbled(self) -> list[Reply]:
        """Replies one of whose answers' tokens, since its last ``restart``, do not join
        to its (first) ``done`` text."""
        return [
            r
            for r in self.replies
            if any(v.dones and v.streamed != v.dones[0][1] for v in r.versions())
        ]


def follow(sent: Sequence[Sent], received: Iterable[Received]) -> Delivery:
    """Sort what one socket ``received`` by message, against what it ``sent``.

    A message is the socket's own once a ``queued`` event names it (whenever that came:
    a token may arrive before it); the sent message with the same content is its
    ``sent``.
    """
    events = list(received)
    by_content = {s.content: s for s in sent}
    replies: dict[str, Reply] = {}
    for r in events:
        if r.event.get("type") == "queued":
            content: str | None = (r.event.get("message") or {}).get("content")
            mid = r.event["message_id"]
            matched = by_content.get(content) if content is not None else None
            replies[mid] = Reply(mid, len(replies), content, matched)
    delivery = Delivery(sent, list(replies.values()))
    for r in events:
        kind, mid = r.event.get("type"), r.event.get("message_id")
        if kind == "queued":
            continue
        if mid is None:
            if kind == "error":
                delivery.stray_errors.append(r.event)
            continue
        reply = replies.get(mid)
        if reply is None:
            delivery.foreign.append(r.event)
        else:
            _add(delivery, reply, r)
    return delivery


def _add(delivery: Delivery, reply: Reply, received: Received) -> None:
    """Record an event of ``reply`` (not ``queued``)."""
    e, at = received.event, received.at
    if e["type"] == "revised":
        reply.revise((e.get("message") or {}).get("content"))
    elif e["type"] == "token":
        reply.tokens.append((at, e["content"]))
    elif e["type"] == "restart":
        reply.restarts += 1
        reply.attempt = len(reply.tokens)
    elif e["type"] == "error":
        reply.errors.append(e)
    elif e["type"] == "done":
        reply.dones.append((at, e["reply"]["content"]))
        if len(reply.dones) == 1:
            reply.streamed = "".join(c for _, c in reply.attempt_tokens)
            if not reply.earlier:  # a revision's answer comes after every other reply
                delivery.done_order.append(reply)


@dataclass
class Findings:
    """Problems found, by kind; each is a list of human-readable descriptions."""

    sent: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    misrouted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    stream_mismatches: list[str] = field(default_factory=list)
    history_mismatches: list[str] = field(default_factory=list)
    prompt_problems: list[str] = field(default_factory=list)
    job_problems: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of each kind of problem and the reply latency."""
        lat = sorted(self.latencies_ms)
        median = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("nan")
        return (
            f"sent {self.sent}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, out of order {len(self.out_of_order)}, "
            f"misrouted {len(self.misrouted)}, errors {len(self.errors)}, "
            f"restarts {len(self.restarts)}, "
            f"stream mismatches {len(self.stream_mismatches)}, "
            f"history mismatches {len(self.history_mismatches)}, "
            f"prompt problems {len(self.prompt_problems)}, "
            f"job problems {len(self.job_problems)}; "
            f"latency median {median:.0f} ms, p99 {p99:.0f} ms"
        )

    def details(self, limit: int = 5) -> str:
        """The first ``limit`` problems of each kind found, under its name; "" if none."""
        kinds = [f for f in fields(self) if f.name not in ("sent", "delivered", "latencies_ms")]
        return "".join(
            f"\n  {f.name}:\n    " + show(getattr(self, f.name), limit).replace("\n", "\n    ")
            for f in kinds
            if getattr(self, f.name)
        )


def show(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` problems, one a line, for an assertion message."""
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


def assert_clean(findings: Findings) -> None:
    """One assertion per invariant, each saying what was seen."""
    assert not findings.lost, f"invariant 1 (a reply per message): lost\n{show(findings.lost)}"
    assert not findings.errors, f"invariant 1: error events\n{show(findings.errors)}"
    assert not findings.duplicated, (
        f"invariant 1 (exactly one reply): duplicated\n{show(findings.duplicated)}"
    )
    assert not findings.misrouted, (
        f"invariant 1 (own session only): misrouted\n{show(findings.misrouted)}"
    )
    assert not findings.out_of_order, (
        f"invariant 2 (replies in send order): out of order\n{show(findings.out_of_order)}"
    )
    assert not findings.stream_mismatches, (
        f"token events joined != done content\n{show(findings.stream_mismatches)}"
    )
    assert not findings.history_mismatches, (
        f"invariant 3 (history exact, in conversation order)\n{show(findings.history_mismatches)}"
    )
    assert not findings.prompt_problems, (
        f"invariant 2 (prompt k holds turn k-1 and message k, nothing later, nothing "
        f"foreign)\n{show(findings.prompt_problems)}"
    )
    assert not findings.job_problems, (
        f"invariant 11 (titles and summaries: each written once, from its own session, by "
        f"its own model)\n{show(findings.job_problems)}"
    )


def check_deliveries(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """What each socket received against what it sent (invariants 1 and 2).

    Per socket: one ``queued`` per message sent, for that content, in order; one
    ``done`` per message, in the order of the ``queued`` ones, its reply answering that
    very message; one ``revised`` event per ``regenerate`` or ``edit`` the socket sent,
    then one ``done`` answering the message as it then stands; no event about another
    session's message; the ``token`` events of each answer, joined (a ``restart``
    starts over), equal its ``done`` content.
    """
    for t in sessions:
        d = follow(t.sent, t.received)
        findings.sent += t.owed()
        findings.delivered += sum(1 for r in d.replies for v in r.versions() if v.dones)
        contents = [r.versions()[0].content for r in d.replies]
        if contents != [s.content for s in t.sent]:
            findings.lost.append(
                f"s{t.index}: queued {len(d.replies)} of {len(t.sent)} messages "
                f"(contents {contents} vs sent {[s.content for s in t.sent]})"
            )
        for r in d.replies:
            asked = [v.content for v in t.revisions if v.message_id == r.message_id]
            got = [v.content for v in r.versions()[1:]]
            if got != asked:
                findings.lost.append(
                    f"s{t.index} m{r.k + 1}: revised to {got} for the revisions {asked}"
                )
        _describe(f"s{t.index}", d, findings)


def _describe(socket: str, d: Delivery, findings: Findings) -> None:
    """Add the problems of one socket's delivery ``d`` to ``findings``."""
    findings.lost += [f"{socket} m{r.k + 1} ({r.message_id}): no done" for r in d.unanswered()]
    findings.lost += [
        f"{socket} m{r.k + 1} ({r.message_id}): answer {n + 1} replaced before its done"
        for r in d.replies
        for n, v in enumerate(r.earlier)
        if not v.dones and not v.errors
    ]
    findings.misrouted += [
        f"{socket} got {e['type']} of foreign message {e['message_id']}" for e in d.foreign
    ]
    findings.misrouted += [
        f"{socket} m{r.k + 1}: reply {v.dones[0][1][:60]!r} does not answer {v.content!r}"
        for r in d.wrong(_answers)
        for v in r.versions()
        if v.dones and not _answers(v.content or "", v.dones[0][1])
    ]
    findings.duplicated += [
        f"{socket} m{r.k + 1}: answer {n + 1}, done #{i}"
        for r in d.duplicated()
        for n, v in enumerate(r.versions())
        for i in range(2, len(v.dones) + 1)
    ]
    findings.out_of_order += [
        f"{socket}: reply to m{r.k + 1} after reply to m{later.k + 1}"
        for r, later in d.out_of_order()
    ]
    findings.stream_mismatches += [
        f"{socket} m{r.k + 1}: tokens {(v.streamed or '')[:60]!r} != done {v.dones[0][1][:60]!r}"
        for r in d.garbled()
        for v in r.versions()
        if v.dones and v.streamed != v.dones[0][1]
    ]
    for r in d.replies:
        for v in r.versions():
            findings.restarts += [f"{socket} m{r.k + 1}: restart"] * v.restarts
            findings.errors += [
                f"{socket} m{r.k + 1}: {e.get('code')} {e.get('detail')}" for e in v.errors
            ]
        first = r.versions()[0]
        if first.dones and r.sent is not None:
            findings.latencies_ms.append((first.dones[0][0] - r.sent.at) * 1000)


def _answers(content: str, reply: str) -> bool:
    """Whether a stand-in ``reply`` answers ``content`` (and not a longer message)."""
    head = REPLY_PREFIX + content
    return reply == head or reply.startswith(head + " ")
