"""Charging the model tokens of each reply to its session's and its client's quotas.

The server refuses a message once either quota is used up (``quota_exceeded``); the
worker charges what each reply cost, from the model's own ``usage`` when the API
reports it (``stream_options.include_usage``), else from an estimate of the prompt and
the reply (:func:`worker.memory.estimate_tokens`, one token per 3 UTF-8 bytes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import RedisError

from runtime.config import CommonSettings
from runtime.logs import fingerprint
from storage.admission import CLIENT_TOKENS, SESSION_TOKENS, Limiter
from worker.llm import PromptMessage
from worker.memory import estimate_tokens
from worker.response import Usage

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


async def charge_reply(limiter: Limiter, settings: CommonSettings, token: str, tokens: int) -> None:
    """Count ``tokens`` against session ``token``'s quota and its client's.

    The session's charge and the lookup of its client go out at once (two round trips
    in all, not three). A failure to charge is logged, not raised: the reply is about
    to be recorded, and a quota is a bound on use, not an account.
    """
    try:
        used, client = await asyncio.gather(
            limiter.charge(SESSION_TOKENS, token, tokens, settings.quota_period_s),
            limiter.client_of(token),
        )
        if client is not None:
            await limiter.charge(CLIENT_TOKENS, client, tokens, settings.quota_period_s)
    except (RedisError, OSError) as e:
        logger.warning("session=%s %d model tokens not charged: %s", fingerprint(token), tokens, e)
        return
    logger.debug("session=%s charged %d model tokens (%d used)", fingerprint(token), tokens, used)
