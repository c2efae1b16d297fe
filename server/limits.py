"""A per-socket rate limit: a token bucket, checked without waiting."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows ``burst`` actions at once and ``rate`` per second on average.

    Small and synchronous on purpose: one lives on every socket, and a refused action
    is answered at once instead of waiting (the rate limiters on PyPI either wait or
    keep shared state with expiry threads).

    Args:
        rate: tokens added per second.
        burst: the bucket's size; it starts full.
    """

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        """Take a token if one is there; False (nothing taken) if the bucket is empty."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
