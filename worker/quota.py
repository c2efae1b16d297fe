"""Charging the model tokens of each reply to its session's and its client's quotas.

The server refuses a message once either quota is used up (``quota_exceeded``); the
worker charges what each reply cost, from the model's own ``usage`` when the API
reports it (``stream_options.include_usage``), else from an estimate of the prompt and
the reply (:func:`worker.memory.estimate_tokens`, one token per 3 UTF-8 bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from runtime.config import CommonSettings
from runtime.logs import fingerprint
from storage.admission import CLIENT_TOKENS, Limiter
from storage.connection import REDIS_DOWN
from storage.store import SessionExpired, Store
from worker.memory import estimate_tokens
from worker.model.llm import PromptMessage
from worker.model.response import Usage

logger = logging.getLogger(__name__)


def reply_cost(usage: Usage, prompt: Sequence[PromptMessage], reply: str) -> int:
    """Model tokens the requests of a reply (or a job) cost, whether it came or not.

    Every ``usage`` the model reported, plus, for each request answered without one (a
    429 or 503, a retry, a stream that broke, an API that ignores ``stream_options``),
    an estimate of ``prompt``; and an estimate of ``reply`` (the text streamed, whole or
    partial) unless the request that streamed it reported its usage. No request
    answered (none was made, or none reached the server): nothing.
    """
    cost = usage.prompt_tokens + usage.completion_tokens
    if usage.unreported:
        cost += usage.unreported * sum(estimate_tokens(m.content) for m in prompt)
    if usage.requests and not usage.last_reported:
        cost += estimate_tokens(reply)
    return cost


async def charge_request(
    store: Store, limiter: Limiter, settings: CommonSettings, token: str, tokens: int
) -> None:
    """Count ``tokens`` against session ``token``'s quota and its client's, for a model
    request outside a reply (a title, a summary: a reply is charged by the script that
    records it, :meth:`storage.replies.Replies.finish`).

    The session's quota is charged by one script, which names its client; the client's
    quota, in another slot, by a second call. A failure to charge is logged, not
    raised: a quota is a bound on use, not an account.
    """
    try:
        client = await store.sessions.charge(token, tokens)
        if client:
            await limiter.charge(CLIENT_TOKENS, client, tokens, settings.quota_period_s)
    except SessionExpired:
        return
    except REDIS_DOWN as e:
        logger.warning("session=%s %d model tokens not charged: %s", fingerprint(token), tokens, e)
        return
    logger.debug("session=%s charged %d model tokens", fingerprint(token), tokens)
