"""Counting tokens without a tokenizer: an estimate from UTF-8 bytes, calibrated by the
model's own counts.

The prompt budgets (:mod:`worker.memory`) need a token count for every message of a
history, at once and without a model round trip per message, so they estimate it from
the text's size. The bytes a token stands for depend on the model's tokenizer and the
text (about 4 for English prose, fewer for code, numbers or other scripts), so the
estimate starts at a cautious :data:`DEFAULT_BYTES_PER_TOKEN` and learns the model's
ratio from every count the model gives: the ``usage`` of each response
(``stream_options.include_usage``) and llama.cpp's ``/tokenize``
(:meth:`worker.model.llm.LLMClient.count_tokens`). The README's Design section gives the
error measured on the embedded model before and after calibration.
"""

from __future__ import annotations

import math

#: Bytes per token before any count is known: subword tokenizers average about 4 on
#: English text and fewer on code or other scripts, so 3 leaves headroom.
DEFAULT_BYTES_PER_TOKEN = 3.0
#: The calibrated ratio stays within these bounds (bytes per token), so that a server
#: that reports nonsense (0 tokens, or one per character of a long text) can neither
#: let a prompt grow without bound nor shrink it to nothing.
MIN_BYTES_PER_TOKEN = 1.0
MAX_BYTES_PER_TOKEN = 8.0
#: Tokens counted per message for the role and the chat template's separators
#: (ChatML's ``<|im_start|>role\n ... <|im_end|>\n`` is 5 with SmolLM2's tokenizer).
MESSAGE_OVERHEAD_TOKENS = 4
#: Bytes of observations the calibration weighs; beyond, older ones count half, so the
#: ratio follows the conversations a worker sees now (about 50 full prompts).
CALIBRATION_WINDOW_BYTES = 200_000


class TokenCounter:
    """Estimates the tokens of a text from its UTF-8 size and a learned ratio.

    The ratio is the bytes over the tokens of what was observed (a token-weighted
    mean, the least relative error over a whole prompt), older observations fading
    once :data:`CALIBRATION_WINDOW_BYTES` have been seen. Not thread-safe; one event
    loop's tasks share it freely.

    Args:
        bytes_per_token: the ratio before any observation.
    """

    def __init__(self, bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN) -> None:
        self._default = bytes_per_token
        self._bytes = 0.0
        self._tokens = 0.0
        #: Observations so far (for logs and tests).
        self.observations = 0

    @property
    def bytes_per_token(self) -> float:
        """The ratio in use: learned, within the bounds, or the default before any count."""
        if self._tokens <= 0:
            return self._default
        ratio = self._bytes / self._tokens
        return min(MAX_BYTES_PER_TOKEN, max(MIN_BYTES_PER_TOKEN, ratio))

    def estimate(self, text: str) -> int:
        """The estimated tokens of ``text``: its UTF-8 bytes over the ratio, rounded up."""
        return math.ceil(len(text.encode("utf-8")) / self.bytes_per_token)

    def observe(self, size: int, tokens: int) -> None:
        """Learn from the model's count: ``size`` UTF-8 bytes made ``tokens`` tokens.

        Observations of nothing (a size or count not above 0) are ignored.
        """
        if size <= 0 or tokens <= 0:
            return
        self._bytes += size
        self._tokens += tokens
        self.observations += 1
        if self._bytes > CALIBRATION_WINDOW_BYTES:
            self._bytes /= 2
            self._tokens /= 2

    def observe_prompt(self, contents: list[str], prompt_tokens: int) -> None:
        """Learn from a response's ``usage.prompt_tokens`` for a prompt of messages
        ``contents``: the count less :data:`MESSAGE_OVERHEAD_TOKENS` a message is what
        the contents made."""
        size = sum(len(c.encode("utf-8")) for c in contents)
        self.observe(size, prompt_tokens - MESSAGE_OVERHEAD_TOKENS * len(contents))


def estimate_tokens(text: str) -> int:
    """An uncalibrated estimate of the tokens in ``text``: one per
    :data:`DEFAULT_BYTES_PER_TOKEN` UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / DEFAULT_BYTES_PER_TOKEN)
