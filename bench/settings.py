"""What Parley's processes change from the product's defaults in a benchmark run, and
why: every table prints it (:func:`bench.report.table`).

Parley is measured against the direct baseline (:mod:`bench.baseline`), which asks the
model for replies and nothing else, logs at WARNING and admits everything. So that the
two do the same work, Parley asks for no title and no summary and logs at WARNING; and
since every session of the load generator comes from 127.0.0.1, the per-address
admission limits are raised to what the run itself opens and sends (they are still
checked on every request, at their usual cost).
"""

from __future__ import annotations

from bench.scenarios import FLUSH_MS_DEFAULT, Options
from runtime.config import CommonSettings
from server.security import SecuritySettings
from testkit.overrides import Overrides, declare

#: What every run against the baseline changes, whatever its size.
LIKE_THE_BASELINE = declare(
    CONVERSATION_TITLES=(False, "the baseline asks for no titles: a model call it does not make"),
    MEMORY_SUMMARY=(False, "the baseline keeps no summary: a model call it does not make"),
    LOG_LEVEL=("WARNING", "the baseline logs at WARNING: INFO lines are a cost it does not pay"),
)

#: A prompt holds at most this many earlier messages (``MEMORY_MAX_MESSAGES``), plus
#: the system prompt and the message itself.
_PROMPT_MESSAGES = 22
#: Tokens a message adds to a prompt besides its reply's tokens (its text, the overhead).
_MESSAGE_TOKENS = 12


def _default(settings: type[CommonSettings], name: str) -> int:
    value = settings.model_fields[name].default
    assert isinstance(value, int)
    return value


def load_overrides(o: Options) -> Overrides:
    """What a ``load`` or ``connections`` run with options ``o`` changes from the
    product's defaults: :data:`LIKE_THE_BASELINE`, and each admission limit that the
    run's own traffic, all from one address, would pass (and only those)."""
    sweep = sum(max(1, round(o.sessions * f)) for f in o.sweep)
    sessions = 2 + o.rounds * o.sessions + sweep + o.sockets  # 2: the warm-up's
    # Two phases of Parley may follow each other (a sweep alternates which target goes
    # first): the sockets of one may still be closing when the next opens its own.
    at_once = 2 * max(o.sessions, o.sockets) + 2
    replies = (2 + o.rounds * o.sessions + sweep) * o.messages
    per_reply = _PROMPT_MESSAGES * (o.tokens + _MESSAGE_TOKENS)
    wanted = {
        "rate_sessions_per_client": (sessions, f"the run opens {sessions} sessions"),
        "rate_socket_opens_per_client": (sessions, f"the run opens {sessions} sockets"),
        "max_sockets_per_client": (
            at_once,
            f"the run holds {at_once} sockets at once, two phases back to back",
        ),
        "rate_messages_per_session": (o.messages, f"a session sends {o.messages} messages"),
        "model_tokens_per_session": (
            o.messages * per_reply,
            f"{o.messages} replies of {o.tokens} tokens a session",
        ),
        "model_tokens_per_client": (replies * per_reply, f"{replies} replies in the run"),
    }
    raised: dict[str, tuple[float, str]] = {
        name.upper(): (value, f"{why}, all from 127.0.0.1")
        for name, (value, why) in wanted.items()
        if value > _default(SecuritySettings, name)
    }
    if o.flush_ms != FLUSH_MS_DEFAULT:
        raised["STREAM_FLUSH_MS"] = (o.flush_ms, "the scenario's window, the baseline's too")
    if o.worker_concurrency:
        raised["WORKER_CONCURRENCY"] = (o.worker_concurrency, "the scenario's sessions at once")
    if o.wait_replicas:
        raised["REDIS_WAIT_REPLICAS"] = (o.wait_replicas, "the run measures what the wait costs")
    return LIKE_THE_BASELINE | declare(**raised)


def real_model_overrides(max_tokens: int, flush_ms: float, sessions: int = 0) -> Overrides:
    """What the ``real-model`` run changes: it asks the model directly and through
    Parley in turn, the same question with the same options, and compares the two;
    ``sessions``: how many it opens (one a question through Parley), all from one
    address, for the per-address limits it would pass."""
    changed = declare(
        CONVERSATION_TITLES=(False, "asked directly, the model gets no title request"),
        MEMORY_SUMMARY=(False, "asked directly, the model gets no summary request"),
        LOG_LEVEL=("WARNING", "as in the other scenarios"),
        LLM_MAX_TOKENS=(max_tokens, "the max_tokens it is asked with directly"),
        LLM_TEMPERATURE=(0, "the same answers both ways"),
    )
    if flush_ms != FLUSH_MS_DEFAULT:
        changed |= declare(STREAM_FLUSH_MS=(flush_ms, "the run's coalescing window"))
    why = f"the run opens (and holds) {sessions} sessions and sockets, all from 127.0.0.1"
    for name in (
        "rate_sessions_per_client",
        "rate_socket_opens_per_client",
        "max_sockets_per_client",
    ):
        if sessions > _default(SecuritySettings, name):
            changed |= declare(**{name.upper(): (sessions, why)})
    return changed
