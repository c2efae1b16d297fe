"""Checks of what the system recorded against what clients sent: each session's history
(``/refresh_token``), the stand-in model's prompts, the pending entries' owners.

The problems go into the same :class:`~testkit.delivery.Findings` as the delivery
checks. Message contents are ``s<session>-m<k>-<8 hex digits>`` (see
:meth:`ChatDriver.send`), so any text found in a prompt names its session and message.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from runtime.catalog import DEFAULT_MODEL_ID
from storage import keys
from testkit.delivery import Findings, check_deliveries
from testkit.driver import SessionTrace
from testkit.jobs import of_kind

_MARKER = re.compile(r"s(\d+)-m(\d+)-[0-9a-f]{8}")


def answers(trace: SessionTrace) -> dict[str, list[tuple[str, dict[str, Any] | None]]]:
    """Each message id's answers, as the socket saw them: (the message's content then,
    the reply of its first ``done``, None if none), oldest first; a ``revised`` event
    starts the next."""
    out: dict[str, list[tuple[str, dict[str, Any] | None]]] = {}
    for e in trace.events("queued", "revised", "done"):
        mid = e["message_id"]
        if e["type"] in ("queued", "revised"):
            out.setdefault(mid, []).append(((e.get("message") or {}).get("content", ""), None))
        elif mid in out and out[mid][-1][1] is None:
            out[mid][-1] = (out[mid][-1][0], e["reply"])
    return out


def replies(trace: SessionTrace) -> dict[str, dict[str, Any]]:
    """The reply (``done.reply``) of each message id: its latest answer's first ``done``."""
    return {
        mid: versions[-1][1]
        for mid, versions in answers(trace).items()
        if versions[-1][1] is not None
    }


def check_histories(sessions: Sequence[SessionTrace], findings: Findings) -> None:
    """Each session's ``/refresh_token`` history (invariant 3): every message sent, as
    it stands (an edit's text), each followed by its latest reply, contents and ids as
    the socket saw them, each id once; a revised message keeps its earlier versions
    (content and reply) in order, and no other message has any."""
    for t in sessions:
        assert t.history is not None, "call ChatDriver.fetch_histories() first"
        got = [(m["role"], m["id"], m["content"]) for m in t.history["messages"]]
        seen = answers(t)
        expected: list[tuple[str, str, str]] = []
        for sent, mid in zip(t.sent, t.message_ids(), strict=False):
            content, reply = seen[mid][-1] if seen.get(mid) else (sent.content, None)
            expected.append(("user", mid, content or sent.content))
            if reply is not None:
                expected.append(("assistant", reply["id"], reply["content"]))
        if got != expected:
            findings.history_mismatches.append(
                f"s{t.index}: history {_roles(got)} != expected {_roles(expected)}: "
                f"{_first_difference(got, expected)}"
            )
        repeated = [i for i, n in Counter(m[1] for m in got).items() if n > 1]
        if repeated:
            findings.history_mismatches.append(f"s{t.index}: ids more than once: {repeated}")
        for m in t.history["messages"]:
            answered = seen.get(m["id"], [])
            # A revision keeps what it replaced, but for a failed reply regenerated.
            earlier = [
                (c, r["id"] if r else None, r["content"] if r else None)
                for (c, r), (after, _) in itertools.pairwise(answered)
                if r is not None or after != c
            ]
            kept = [
                (v["content"], (v.get("reply") or {}).get("id"),
                 (v.get("reply") or {}).get("content"))
                for v in m.get("versions") or []
            ]  # fmt: skip
            if kept != earlier:
                findings.history_mismatches.append(
                    f"s{t.index} {m['id']}: versions {kept} != earlier answers {earlier}"
                )


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
    """The stand-in model's recorded replies' prompts against the conversations
    (invariant 2); its title and summary requests are :mod:`testkit.jobs`'s to check.

    The prompt of reply ``k`` ends with user message ``k`` (as sent, or as an edit made
    it), holds message ``k-1`` and its reply (``k > 1``), its earlier user messages in
    order, and no text of a later message or of another session. Each answer that
    came was generated; with ``once``, no answer was generated twice (no crash or
    retry happened, so a second generation means a double delivery).
    """
    by_index = {t.index: t for t in sessions}
    generations: Counter[tuple[int, int]] = Counter()
    for body in of_kind(requests, "reply"):
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        match = _MARKER.fullmatch(last.get("content", "")) if last.get("role") == "user" else None
        trace = by_index.get(int(match.group(1))) if match else None
        if match is None or trace is None:
            findings.prompt_problems.append(f"prompt does not end with a sent message: {last}")
            continue
        s, k = trace.index, int(match.group(2))
        generations[s, k] += 1
        if last["content"] not in trace.contents(k):
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
        ids = trace.message_ids()
        reply = replies(trace).get(ids[k - 2]) if k > 1 and len(ids) >= k - 1 else None
        if reply is not None:  # (a message closed by an error has no turn to hold)
            pair = [
                {"role": "user", "content": trace.sent[k - 2].content},
                {"role": "assistant", "content": reply["content"]},
            ]
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]
            if not any(plain[i : i + 2] == pair for i in range(len(plain) - 1)):
                shown = [f"{m['role']}: {m['content'][:24]!r}" for m in plain]
                findings.prompt_problems.append(
                    f"prompt of s{s} m{k} lacks m{k - 1} and its reply: {shown}"
                )
    for t in sessions:
        seen, ids = answers(t), t.message_ids()
        for k in range(1, len(t.sent) + 1):
            n = generations[t.index, k]
            asked = seen.get(ids[k - 1], []) if len(ids) >= k else []
            # Each answer that came was generated; an error may close one before that.
            done = sum(1 for _, reply in asked if reply is not None)
            if n < done or (once and n > len(asked)):
                findings.prompt_problems.append(
                    f"s{t.index} m{k} generated {n} times for {done} of {len(asked)} answers"
                )


async def pending_owners(redis: Any, models: Sequence[str] = (DEFAULT_MODEL_ID,)) -> dict[str, str]:
    """Which consumer holds each pending message: ``{message_id: consumer}``, every
    partition of every one of ``models`` (catalog ids) that has a stream yet.

    Args:
        redis: a client of the cluster's Redis (``decode_responses=True``).
    """
    owner: dict[str, str] = {}
    for stream in (s for model in models for s in keys.model_streams(model)):
        try:
            pending = await redis.xpending_range(
                stream, keys.CONSUMER_GROUP, min="-", max="+", count=1000
            )
        except ResponseError:  # no stream or group yet: nothing read from it
            continue
        if not pending:
            continue
        entries = dict(await redis.xrange(stream))
        for p in pending:
            fields = entries.get(p["message_id"])
            if fields is not None:
                owner[fields["message_id"]] = p["consumer"]
    return owner


async def missing_events(redis: Any, sessions: Sequence[SessionTrace]) -> list[str]:
    """For each session still owed a closing event, one line: what its socket has, what
    its event stream holds, and the stored events the socket never received.

    What a stuck run's report needs to tell a lost relay (events stored, not delivered)
    from a lost reply (nothing stored).

    Args:
        redis: a client of the cluster's Redis (``decode_responses=True``).
    """
    lines: list[str] = []
    for t in sessions:
        if t.closed or t.closing_count() >= t.owed():
            continue
        stored = await redis.xrange(keys.events_key(t.token))
        got = {e["event_id"] for e in t.events() if "event_id" in e}
        lacking = [
            f"{eid} {json.loads(fields['event']).get('type')}"
            for eid, fields in stored
            if eid not in got
        ]
        lines.append(
            f"s{t.index} on server {t.server}, closes {t.close_codes}: sent {len(t.sent)}, "
            f"closed {t.closing_count()}, received {len(t.received)} "
            f"(last {t.last_event_id()}), stored {len(stored)}; not received: "
            f"{lacking[:8]}{' ...' if len(lacking) > 8 else ''}"
        )
    return lines


def verdict(sessions: Sequence[SessionTrace]) -> Findings:
    """What every client received and every history holds, checked: delivery (each
    reply once, in order, on its own socket) and histories (see :func:`check_histories`)."""
    findings = Findings()
    check_deliveries(sessions, findings)
    check_histories(sessions, findings)
    return findings
