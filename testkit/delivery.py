"""Checks of the system tests: what clients saw against what was sent.

The processes and the clients live in :mod:`testkit.processes` (:class:`Cluster`,
:class:`ChatDriver`), shared with the benchmark. Here, :func:`check_deliveries`,
:func:`check_histories` and :func:`check_prompts` compare what the clients saw, what
``/refresh_token`` holds and what the stand-in model was asked with what was sent;
:class:`Findings` counts the problems and prints one line.

Message contents are ``s<session>-m<k>-<8 hex digits>`` (see :meth:`ChatDriver.send`),
unique in a run, so any text found in a reply or a prompt names the session and the
message it came from.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage import keys
from testkit.driver import SessionTrace
from testkit.standin import REPLY_PREFIX

_MARKER = re.compile(r"s(\d+)-m(\d+)-[0-9a-f]{8}")


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
            f"prompt problems {len(self.prompt_problems)}; "
            f"latency median {median:.0f} ms, p99 {p99:.0f} ms"
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


def check_deliveries(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """What each socket received against what it sent (invariants 1 and 2).

    Per socket: one ``queued`` per message sent, for that content, in order; one
    ``done`` per message, in the order of the ``queued`` ones, its reply answering that
    very message; no event about another session's message; the ``token`` events of a
    reply, joined (a ``restart`` starts over), equal its ``done`` content.
    """
    for t in sessions:
        findings.sent += len(t.sent)
        queued = t.events("queued")
        contents = [q.get("message", {}).get("content") for q in queued]
        if contents != [s.content for s in t.sent]:
            findings.lost.append(
                f"s{t.index}: queued {len(queued)} of {len(t.sent)} messages "
                f"(contents {contents} vs sent {[s.content for s in t.sent]})"
            )
        ids = t.message_ids()
        position = {mid: k for k, mid in enumerate(ids)}
        dones: Counter[str] = Counter()
        last_k = -1
        partial: dict[str, list[str]] = {}
        for r in t.received:
            e = r.event
            mid = e.get("message_id")
            if e["type"] == "queued" or (e["type"] == "error" and mid is None):
                continue
            if mid not in position:
                findings.misrouted.append(f"s{t.index} got {e['type']} of foreign message {mid}")
                continue
            k = position[mid]
            if e["type"] == "restart":
                findings.restarts.append(f"s{t.index} m{k + 1}: restart")
                partial[mid] = []
            elif e["type"] == "token":
                partial.setdefault(mid, []).append(e["content"])
            elif e["type"] == "error":
                findings.errors.append(f"s{t.index} m{k + 1}: {e.get('code')} {e.get('detail')}")
            elif e["type"] == "done":
                dones[mid] += 1
                if dones[mid] > 1:
                    findings.duplicated.append(f"s{t.index} m{k + 1}: done #{dones[mid]}")
                    continue
                if k < last_k:
                    findings.out_of_order.append(
                        f"s{t.index}: reply to m{k + 1} after reply to m{last_k + 1}"
                    )
                last_k = max(last_k, k)
                reply = e["reply"]["content"]
                if k < len(t.sent) and not _answers(reply, t.sent[k].content):
                    findings.misrouted.append(
                        f"s{t.index} m{k + 1}: reply {reply[:60]!r} does not answer "
                        f"{t.sent[k].content!r}"
                    )
                streamed = "".join(partial.get(mid, []))
                if streamed != reply:
                    findings.stream_mismatches.append(
                        f"s{t.index} m{k + 1}: tokens {streamed[:60]!r} != done {reply[:60]!r}"
                    )
                if k < len(t.sent):
                    findings.latencies_ms.append((r.at - t.sent[k].at) * 1000)
        findings.delivered += len(dones)
        for k, mid in enumerate(ids):
            if dones[mid] == 0 and not any(e.get("message_id") == mid for e in t.events("error")):
                findings.lost.append(f"s{t.index} m{k + 1} ({mid}): no done")


def _answers(reply: str, content: str) -> bool:
    """Whether a stand-in ``reply`` answers ``content`` (and not a longer message)."""
    head = REPLY_PREFIX + content
    return reply == head or reply.startswith(head + " ")


def replies(trace: SessionTrace) -> dict[str, dict[str, Any]]:
    """The reply (``done.reply``) of each message id, first ``done`` kept."""
    out: dict[str, dict[str, Any]] = {}
    for e in trace.events("done"):
        out.setdefault(e["message_id"], e["reply"])
    return out


def check_histories(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """Each session's ``/refresh_token`` history (invariant 3): every message sent,
    each followed by its reply, contents and ids as the socket saw them, each id once."""
    for t in sessions:
        assert t.history is not None, "call ChatDriver.fetch_histories() first"
        got = [(m["role"], m["id"], m["content"]) for m in t.history["messages"]]
        answered = replies(t)
        expected: list[tuple[str, str, str]] = []
        for sent, mid in zip(t.sent, t.message_ids(), strict=False):
            expected.append(("user", mid, sent.content))
            if mid in answered:
                expected.append(("assistant", answered[mid]["id"], answered[mid]["content"]))
        if got != expected:
            findings.history_mismatches.append(
                f"s{t.index}: history {_roles(got)} != expected {_roles(expected)}: "
                f"{_first_difference(got, expected)}"
            )
        repeated = [i for i, n in Counter(m[1] for m in got).items() if n > 1]
        if repeated:
            findings.history_mismatches.append(f"s{t.index}: ids more than once: {repeated}")


def _roles(messages: list[tuple[str, str, str]]) -> str:
    return "".join(role[0] for role, _, _ in messages)


def _first_difference(got: list[Any], expected: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"at {i}: {a} != {b}"
    return f"lengths {len(got)} != {len(expected)}"


def check_prompts(
    sessions: Sequence[SessionTrace],
    requests: Sequence[dict[str, Any]],
    findings: Findings,
    *,
    once: bool,
) -> None:
    """The stand-in model's recorded requests against the conversations (invariant 2).

    The prompt of reply ``k`` ends with user message ``k``, holds message ``k-1`` and its
    reply (``k > 1``), its earlier user messages in order, and no text of a later message
    or of another session. With ``once``, each message was generated exactly once
    (no crash or retry happened, so a second generation means a double delivery).
    """
    by_index = {t.index: t for t in sessions}
    generations: Counter[tuple[int, int]] = Counter()
    for body in requests:
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        match = _MARKER.fullmatch(last.get("content", "")) if last.get("role") == "user" else None
        trace = by_index.get(int(match.group(1))) if match else None
        if match is None or trace is None:
            findings.prompt_problems.append(f"prompt does not end with a sent message: {last}")
            continue
        s, k = trace.index, int(match.group(2))
        generations[s, k] += 1
        if trace.sent[k - 1].content != last["content"]:
            findings.prompt_problems.append(f"s{s} m{k}: unknown content {last['content']!r}")
        user_ks = []
        for m in messages:
            for found in _MARKER.finditer(m["content"]):
                fs, fk = int(found.group(1)), int(found.group(2))
                if fs != s or fk > k:
                    findings.prompt_problems.append(
                        f"prompt of s{s} m{k} holds {found.group(0)!r} ({m['role']})"
                    )
            if m["role"] == "user" and (user := _MARKER.fullmatch(m["content"])):
                user_ks.append(int(user.group(2)))
        if user_ks != sorted(set(user_ks)):
            findings.prompt_problems.append(f"prompt of s{s} m{k}: user messages {user_ks}")
        if k > 1:
            previous = trace.sent[k - 2].content
            ids = trace.message_ids()
            reply = replies(trace).get(ids[k - 2]) if len(ids) >= k - 1 else None
            pair = [
                {"role": "user", "content": previous},
                {"role": "assistant", "content": reply["content"] if reply else None},
            ]
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]
            if not any(plain[i : i + 2] == pair for i in range(len(plain) - 1)):
                findings.prompt_problems.append(
                    f"prompt of s{s} m{k} lacks m{k - 1} and its reply: {plain}"
                )
    for t in sessions:
        for k in range(1, len(t.sent) + 1):
            n = generations[t.index, k]
            if n == 0 or (once and n > 1):
                findings.prompt_problems.append(f"s{t.index} m{k} generated {n} times")


async def pending_owners(redis: Any) -> dict[str, str]:
    """Which consumer holds each pending message: ``{message_id: consumer}``, every partition.

    Args:
        redis: a client of the cluster's Redis (``decode_responses=True``).
    """
    owner: dict[str, str] = {}
    for stream in keys.MESSAGE_STREAMS:
        pending = await redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min="-", max="+", count=1000
        )
        if not pending:
            continue
        entries = dict(await redis.xrange(stream))
        for p in pending:
            fields = entries.get(p["message_id"])
            if fields is not None:
                owner[fields["message_id"]] = p["consumer"]
    return owner
