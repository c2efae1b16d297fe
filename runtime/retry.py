"""The one backoff of every Parley process: stamina's exponential backoff with jitter.

Every retry loop in Parley (reconnecting to Redis, restarting a loop after an error,
reconnecting a client, asking the model again) is a :func:`retrying` block:

.. code-block:: python

    async for attempt in retrying(on=TRANSIENT_ERRORS, wait_max_s=5.0):
        with attempt:
            await work()

stamina (https://stamina.hynek.me) waits ``wait_initial_s * 2**(n-1)`` plus up to
``wait_jitter_s`` of random jitter before the n-th retry, capped at ``wait_max_s``
(the "exponential backoff with jitter" of the AWS Architecture Blog, 2015), and gives up
after ``attempts`` tries or ``timeout_s`` seconds, re-raising the last error. ``None``
for both retries for ever, which is what a process's own loops want.

:func:`setup_retries` replaces stamina's default instrumentation (a log line with the
retried callable's arguments, and a Prometheus counter named after the callable) with
one log line that names the error type only: arguments may hold session tokens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

logger = logging.getLogger(__name__)

#: What ``on`` accepts: exception types, or a predicate that says whether to retry (True),
#: not (False), or after how many seconds (a float, for a server's ``Retry-After``).
RetryOn = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool | float]


def retrying(
    *,
    on: RetryOn,
    wait_initial_s: float = 0.1,
    wait_max_s: float = 5.0,
    wait_jitter_s: float = 0.1,
    attempts: int | None = None,
    timeout_s: float | None = None,
) -> AsyncIterator[stamina.Attempt]:
    """A stamina retry context: ``async for`` over it, each try inside ``with attempt:``.

    Args:
        on: the errors to retry (see :data:`RetryOn`); any other error propagates at once.
        wait_initial_s: the wait before the first retry (s).
        wait_max_s: the cap on any one wait (s).
        wait_jitter_s: the most random jitter added to a wait (s).
        attempts: the most tries in all, the first included; None for no limit.
        timeout_s: give up once this long has passed since the first try (s); None for none.

    Raises:
        The last error, once ``attempts`` or ``timeout_s`` is spent.
    """
    return stamina.retry_context(
        on=on,
        attempts=attempts,
        timeout=timeout_s,
        wait_initial=wait_initial_s,
        wait_max=wait_max_s,
        wait_jitter=wait_jitter_s,
    )


def _log_retry(details: RetryDetails) -> None:
    logger.warning(
        "retrying after %s (try %d, waiting %.2f s)",
        type(details.caused_by).__name__,
        details.retry_num,
        details.wait_for,
    )


def setup_retries() -> None:
    """Install Parley's retry hook in place of stamina's defaults; call once per process."""
    set_on_retry_hooks([_log_retry])
