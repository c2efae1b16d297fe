"""The model client's errors: what failed, what clients may be told, whether to retry."""

from __future__ import annotations

from typing import ClassVar

from protocol.wire import ErrorCode


class LLMError(Exception):
    """The model could not give a reply.

    ``code`` is the error code shown to clients; ``status`` the HTTP status (or the
    status an in-stream error carried), if any; ``retry_after_s`` the server's
    ``Retry-After`` in seconds, if it sent one; ``retryable`` whether asking again may
    help (a 429, 500, 502, 503 or 504, a timeout, a broken connection or stream).
    """

    code: ClassVar[ErrorCode] = ErrorCode.LLM_UNAVAILABLE
    #: What clients are told, before the status (see :attr:`public_detail`).
    summary: ClassVar[str] = "the model could not answer"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    @property
    def public_detail(self) -> str:
        """What a client may be told: the kind of failure, the HTTP status, the wait.

        Never the model server's own words, its URL or its address: an error body can
        echo a key, an internal host or a stack trace, and ``str(error)`` (for the
        worker's log) holds them. E.g. ``"the model API is unavailable (HTTP 503)"``.
        """
        detail = self.summary
        if self.status is not None:
            detail += f" (HTTP {self.status})"
        if self.retry_after_s is not None:
            detail += f"; it asked to wait {self.retry_after_s:.0f} s"
        return detail


class LLMRateLimited(LLMError):
    """429, still after every retry (or with a ``Retry-After`` beyond ``backoff_max_s``)."""

    code = ErrorCode.RATE_LIMITED
    summary = "the model API is refusing requests for now (rate limit)"


class LLMUnavailable(LLMError):
    """5xx, timeout, connection failure or broken stream, still after every retry."""

    code = ErrorCode.LLM_UNAVAILABLE
    summary = "the model API is unavailable"


class LLMRejected(LLMError):
    """The server refused the request itself (4xx other than 429): never retried."""

    code = ErrorCode.LLM_REJECTED
    summary = "the model API refused the request"


class ModelNotServed(LLMError):
    """The session's model is not one this worker serves (not in its catalog)."""

    code = ErrorCode.MODEL_UNAVAILABLE
    summary = "the conversation's model is not offered any more; choose another"


class LLMStreamInterrupted(LLMUnavailable):
    """The stream broke after at least one delta was yielded; nothing was retried."""

    summary = "the model's reply stream broke"


def error_for_status(
    status: int | None, message: str, retry_after: float | None, *, retryable: bool
) -> LLMError:
    """The error for an HTTP status or an in-stream error's code; a 4xx other than 429
    is an :class:`LLMRejected`, never retryable."""
    if status == 429:
        return LLMRateLimited(
            message, status=status, retry_after_s=retry_after, retryable=retryable
        )
    if status is not None and 400 <= status < 500:
        return LLMRejected(message, status=status, retry_after_s=retry_after)
    return LLMUnavailable(message, status=status, retry_after_s=retry_after, retryable=retryable)
