"""The model requests that are not replies: conversation titles and rolling summaries.

The stand-in model records every request it gets. A reply's prompt ends with the user
message it answers; a title's or a summary's starts with its job's own system prompt
(:data:`worker.titles.INSTRUCTION`, :data:`worker.summary.INSTRUCTION`) and holds the
conversation in one user message. :func:`kind` tells them apart, so the prompt checks
(:func:`testkit.records.check_prompts`) read replies' prompts only, and the checks here
read the jobs': every title and every summary written once, from its own session's
turns, by its own session's model.

The stand-in answers ``"Reply to: " + <the last user message>`` (padded), so what a job
stored names the prompt it was made from: a title is the first line of that answer, and
a summary holds the whole prompt it extended, the summaries before it included.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from testkit.delivery import Findings
from testkit.driver import SessionTrace
from worker.summary import INSTRUCTION as SUMMARY_INSTRUCTION
from worker.titles import INSTRUCTION as TITLE_INSTRUCTION
from worker.titles import clean_title

Kind = Literal["reply", "title", "summary"]
#: The stand-in's whole answer to a prompt's last user message (``reply_text``).
Answer = Callable[[str], str]

_MARKER = re.compile(r"s(\d+)-m(\d+)-[0-9a-f]{8}")
#: A turn folded into a summary: its user message, as the summary prompt writes it.
_FOLDED = re.compile(r"^User: (s(\d+)-m(\d+)-[0-9a-f]{8})$", re.MULTILINE)


def kind(body: Mapping[str, Any]) -> Kind:
    """What a request the model got is for: a reply, a title or a summary."""
    messages = body.get("messages") or [{}]
    first = messages[0]
    if first.get("role") == "system" and first.get("content") == TITLE_INSTRUCTION:
        return "title"
    if first.get("role") == "system" and first.get("content") == SUMMARY_INSTRUCTION:
        return "summary"
    return "reply"


def of_kind(requests: Sequence[dict[str, Any]], wanted: Kind) -> list[dict[str, Any]]:
    """The requests of one kind, in the order the model got them."""
    return [r for r in requests if kind(r) == wanted]


def _asked(body: Mapping[str, Any]) -> str:
    """A job's question: its last user message."""
    return str(body["messages"][-1]["content"])


def _session(body: Mapping[str, Any]) -> int | None:
    """The session a job is about: the one its conversation's first marker names."""
    found = _MARKER.search(_asked(body))
    return int(found.group(1)) if found else None


def _jobs_by_session(
    sessions: Sequence[SessionTrace], jobs: Sequence[dict[str, Any]], what: str, findings: Findings
) -> dict[int, list[str]]:
    """The questions of ``jobs`` by session index; a job about no session of
    ``sessions`` (another model's, or none) is a finding."""
    mine = {t.index for t in sessions}
    by: dict[int, list[str]] = {}
    for body in jobs:
        s = _session(body)
        if s is None or s not in mine:
            findings.job_problems.append(
                f"{what} asked of this model for a session not of it (s{s}): {_asked(body)[:80]!r}"
            )
            continue
        by.setdefault(s, []).append(_asked(body))
    return by


def check_titles(
    sessions: Sequence[SessionTrace],
    requests: Sequence[dict[str, Any]],
    titles: Mapping[str, str],
    answer: Answer,
    findings: Findings,
    written: Mapping[str, int] | None = None,
) -> None:
    """Each answered session of ``sessions`` has its title, made once from its own
    first message and first reply, by its own model.

    Args:
        sessions: the sessions of one model.
        requests: what that model's stand-in got.
        titles: each session's title, by token (``GET /conversations``).
        answer: the stand-in's answer to a question.
        written: how many times each session's title was written, by token, if known
            (the workers' logs); more than once is a finding.
    """
    asked = _jobs_by_session(sessions, of_kind(requests, "title"), "a title", findings)
    for t in sessions:
        first_done = next((e for e in t.events("done")), None)
        if first_done is None:
            continue
        questions = asked.get(t.index, [])
        opening = (t.sent[0].content, first_done["reply"]["content"])
        strays = [q for q in questions if not all(part in q for part in opening)]
        if strays:
            findings.job_problems.append(f"s{t.index}: title asked of {strays[0][:80]!r}")
        title = titles.get(t.token, "")
        expected = {clean_title(answer(q)) for q in questions}
        if not questions:
            findings.job_problems.append(f"s{t.index}: no title asked (title {title!r})")
        elif title not in expected:
            findings.job_problems.append(f"s{t.index}: title {title!r}, not one of {expected}")
        if written is not None and written.get(t.token, 0) > 1:
            findings.job_problems.append(f"s{t.index}: title written {written[t.token]} times")


def check_summaries(
    sessions: Sequence[SessionTrace],
    requests: Sequence[dict[str, Any]],
    summaries: Mapping[str, dict[str, Any] | None],
    answer: Answer,
    findings: Findings,
    due_at: int,
) -> None:
    """Each session of ``sessions`` with at least ``due_at`` answered turns has a
    summary, made by its own model; and every summary folds its session's oldest turns
    in order, each once: the ``User:`` lines of the stored text (which holds the prompts
    of every summary before it) name messages 1 to its ``seq``, each once and in order,
    and the text is the model's answer to one of the session's summary requests.

    Args:
        sessions: the sessions of one model.
        requests: what that model's stand-in got.
        summaries: each session's stored summary (``text``, ``seq``), by token.
        answer: the stand-in's answer to a question.
        due_at: answered turns that outgrow ``MEMORY_SUMMARY_TRIGGER_TOKENS`` however
            the worker counts them.
    """
    asked = _jobs_by_session(sessions, of_kind(requests, "summary"), "a summary", findings)
    for t in sessions:
        summary = summaries.get(t.token)
        answered = len({e["message_id"] for e in t.events("done")})
        if summary is None and answered >= due_at:
            findings.job_problems.append(
                f"s{t.index}: no summary of its {answered} turns "
                f"({len(asked.get(t.index, []))} asked)"
            )
        if summary is None:
            continue
        folded = [
            (int(m.group(2)), int(m.group(3)), m.group(1))
            for m in _FOLDED.finditer(summary["text"])
        ]
        ks = [k for _, k, _ in folded]
        if ks != list(range(1, summary["seq"] + 1)):
            findings.job_problems.append(
                f"s{t.index}: summary up to m{summary['seq']} folds {ks} (each once, in order)"
            )
        foreign = [c for s, k, c in folded if s != t.index or c not in t.contents(k)]
        if foreign:
            findings.job_problems.append(f"s{t.index}: summary folds {foreign}")
        made = {answer(q).strip() for q in asked.get(t.index, [])}
        if summary["text"] not in made:
            findings.job_problems.append(
                f"s{t.index}: summary {summary['text'][:60]!r} answers none of its "
                f"{len(made)} summary requests"
            )


def titles_written(log_lines: Sequence[str], fingerprints: Mapping[str, str]) -> Counter[str]:
    """How many times each session's title was written, by token, from the workers'
    ``session=<fingerprint> titled`` log lines (``fingerprints``: token to fingerprint)."""
    tokens = {fp: token for token, fp in fingerprints.items()}
    written: Counter[str] = Counter()
    for line in log_lines:
        found = re.search(r"session=(\S+) titled", line)
        if found and found.group(1) in tokens:
            written[tokens[found.group(1)]] += 1
    return written
