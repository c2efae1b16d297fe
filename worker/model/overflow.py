"""Telling a prompt the model refused as too long from any other refusal.

The OpenAI-compatible servers answer a prompt beyond their context with a 4xx whose
message says so, each in its own words (their sources and documentation, 2025):

- llama.cpp's server, 400 (``exceed_context_size_error``): "request (631 tokens) exceeds
  the available context size (512 tokens), try increasing it"; older builds: "the
  request exceeds the available context size, try increasing the context size or
  enable context shift".
- vLLM, 400: "This model's maximum context length is 2048 tokens. However, you
  requested 2100 tokens (2000 in the messages, 100 in the completion). Please reduce
  the length of the messages or completion." (newer: "... your request has 4176 input
  tokens ...").
- OpenAI, 400 (``context_length_exceeded``): "This model's maximum context length is
  8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length
  of the messages."; newer models: "Your input exceeds the context window of this model."
- TGI (and the Hugging Face router in front of it), 422 (or 400): "Input validation
  error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs`
  tokens and 200 `max_new_tokens`", or "`inputs` must have less than 4096 tokens.
  Given: 5000".

The model client keeps the server's message in the error's text
(:class:`worker.model.errors.LLMRejected`), never in what clients are told.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.model.errors import LLMError, LLMRejected

#: Statuses a too-long prompt is refused with (TGI validates with 422; 413 by proxies).
OVERFLOW_STATUSES = frozenset({400, 413, 422})
#: What each server's message says, lower case.
OVERFLOW_PHRASES = (
    "exceeds the available context size",  # llama.cpp
    "maximum context length",  # vLLM, OpenAI
    "context_length_exceeded",  # OpenAI's code, when a proxy passes it on
    "exceeds the context window",  # OpenAI, newer models
    "`inputs` tokens + `max_new_tokens` must be",  # TGI
    "`inputs` must have less than",  # TGI
)
# (limit, requested) in each wording; "requested" is what the server counted against
# the limit: the prompt (llama.cpp, OpenAI) or the prompt and the reply (vLLM, TGI).
_NUMBERS = (
    re.compile(r"request \((?P<requested>\d+) tokens\) exceeds .*?\((?P<limit>\d+) tokens\)"),
    re.compile(
        r"maximum context length is (?P<limit>\d+) tokens.*?"
        r"(?:requested|resulted in|has) (?P<requested>\d+) (?:input )?tokens",
        re.DOTALL | re.IGNORECASE,
    ),
    re.compile(r"must be <= (?P<limit>\d+)\. Given: (?P<requested>\d+) `inputs`"),
    re.compile(r"less than (?P<limit>\d+) tokens\. Given: (?P<requested>\d+)"),
)


@dataclass(frozen=True)
class ContextOverflow:
    """A prompt refused as too long, with the server's figures where it gave them.

    Attributes:
        limit: the model's context (tokens), if the message says.
        requested: what the server counted against it (tokens): the prompt, or the
            prompt and the reply's ``max_tokens``, if the message says.
    """

    limit: int | None = None
    requested: int | None = None

    def shrink(self) -> float:
        """The factor (0 to 0.5) to scale the history of the refused prompt by: at
        least a halving, more when the server's figures say it is needed (to 80% of
        what would just fit)."""
        if self.limit and self.requested and self.requested > 0:
            return max(0.0, min(0.5, 0.8 * self.limit / self.requested))
        return 0.5


def context_overflow(error: LLMError) -> ContextOverflow | None:
    """The overflow ``error`` reports, or None if it is any other error."""
    if not isinstance(error, LLMRejected) or error.status not in OVERFLOW_STATUSES:
        return None
    message = str(error)
    lowered = message.lower()
    if not any(phrase in lowered for phrase in OVERFLOW_PHRASES):
        return None
    for pattern in _NUMBERS:
        if match := pattern.search(message):
            return ContextOverflow(int(match["limit"]), int(match["requested"]))
    return ContextOverflow()
