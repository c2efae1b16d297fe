"""What the store refuses to queue, each refusal with its wire code and what the client
is told, as :class:`worker.model.errors.LLMError` carries a model's: the caller sends
``error.code`` and ``error.detail`` and needs no table of its own.

A refusal changes nothing: the script that refused it wrote nothing, and spent nothing
of the session's admission (:class:`storage.admission.MessageLimits`). Its detail names
no token and no key: errors get logged.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.wire import ErrorCode


class Refusal(Exception):
    """A message, regenerate or edit the store did not queue; nothing changed.

    Attributes:
        code: the error code sent to the client (a class attribute).
        detail: what the client is told.
    """

    code: ClassVar[ErrorCode]

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TooManyPending(Refusal):
    """The session already has ``limit`` messages waiting for a reply."""

    code = ErrorCode.TOO_MANY_PENDING

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} messages already wait for a reply; wait for one before sending more"
        )


class SessionFull(Refusal):
    """The session holds ``max_messages`` user messages, or would hold more than
    ``max_bytes`` bytes with this message or revision: a new session must be started to
    go on.

    Attributes:
        held_bytes: the bytes the session holds (see ``session_size`` in
            ``library.lua``) when the bound of bytes refused it; None when the bound of
            messages did.
    """

    code = ErrorCode.SESSION_FULL

    def __init__(
        self, *, max_messages: int = 0, held_bytes: int | None = None, max_bytes: int = 0
    ) -> None:
        super().__init__(
            f"the session holds {max_messages} messages, its most; start a new session to go on"
            if held_bytes is None
            else f"the conversation holds {held_bytes} bytes, and {max_bytes} at most: this "
            "does not fit; start a new session to go on"
        )
        self.held_bytes = held_bytes


class Overloaded(Refusal):
    """The session's partition already has ``max_backlog`` messages that the workers
    have not finished: the message is refused rather than accepted and left waiting."""

    code = ErrorCode.OVERLOADED

    def __init__(self) -> None:
        super().__init__("too many messages wait for the workers; send it again in a while")


class PromptTooLong(Refusal):
    """The session's system prompt and the message cannot fit the model's context
    (``ModelOffer.context_tokens``), counted as admission counts them.

    Attributes:
        tokens: the prompt's tokens as counted.
        context: the model's context (tokens).
    """

    code = ErrorCode.MESSAGE_TOO_LONG

    def __init__(self, tokens: int, context: int) -> None:
        super().__init__(
            f"the message and the system prompt come to about {tokens} tokens, more than "
            f"the model's context of {context} tokens can hold; send a shorter message"
        )
        self.tokens = tokens
        self.context = context


class ReplyInProgress(Refusal):
    """A reply of the session is being generated, or messages wait for one: a turn can
    be regenerated or edited only once every message is answered."""

    code = ErrorCode.REPLY_IN_PROGRESS

    def __init__(self, command: str) -> None:
        super().__init__(f"a reply is still being generated; {command} once it is done")


class NotLastMessage(Refusal):
    """Only the session's last user message can be edited or have its reply regenerated
    (and a session without messages has none)."""

    code = ErrorCode.NOT_LAST_MESSAGE

    def __init__(self, command: str) -> None:
        super().__init__(
            "only the last message can be edited"
            if command == "edit"
            else "the session has no message to answer again"
        )


class TooManyVersions(Refusal):
    """The turn already keeps ``limit`` earlier versions."""

    code = ErrorCode.TOO_MANY_VERSIONS

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this turn already keeps {limit} earlier versions, its most; send a new "
            "message instead"
        )


class TooManyAttempts(Refusal):
    """The turn was regenerated or edited ``limit`` times already (failed replies
    included): every attempt asks the model, so their number is bounded."""

    code = ErrorCode.TOO_MANY_ATTEMPTS

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this turn was already asked again {limit} times, its most; send a new message instead"
        )
