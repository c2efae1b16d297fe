"""One attempt at a reply, as one object: what the steps of answering a message share,
from the entry handed over to the reply recorded (:mod:`worker.reply`,
:mod:`worker.generation`, :mod:`worker.publish`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import NamedTuple

from protocol.wire import MessageEntry
from storage.store import Begun
from worker.model.response import Usage


class Model(NamedTuple):
    """The model of one reply: its catalog id, and the name the API knows it by (None:
    the worker's own)."""

    id: str
    api_model: str | None


@dataclass(slots=True)
class Turn:
    """One attempt at the reply to one message, made once per attempt when its entry is
    handed over (:meth:`worker.reply.MessageAnswerer.answer`), and filled in as the
    attempt goes: begun, then generating. ``model``, ``started`` and ``usage`` have no
    value until ``generate`` sets them: reading one before raises AttributeError.

    Attributes:
        entry: the user message answered.
        attempt: the attempt's fencing token, ``"<seq>:<16 hex digits>"``.
        key: ``(stream, entry id)`` of ``entry``'s stream entry: the entry ``begin``
            records and the script that ends the reply acks.
        stop: set to stop the reply (a client's stop, or the session's ``stop_seq``).
        begun: what :meth:`storage.replies.Replies.begin` returned once it accepted the
            attempt (the session as the attempt began: its newest messages, or all of
            them); None until then.
        acked: whether the script that ended the reply also acked its entry.
        model: the reply's model; set by :meth:`worker.generation.ReplyGenerator.generate`
            once the session's choice is resolved, before anything reads it.
        started: ``time.perf_counter()`` when the model was first asked (once the prompt
            is planned); set by ``generate`` too. The reply's deadline and time to
            first token count from it (s).
        usage: the model tokens its requests used (:func:`worker.model.response.track_usage`),
            for the quotas and the traces; set by ``generate`` too.
    """

    entry: MessageEntry
    attempt: str
    key: tuple[str, str]
    stop: asyncio.Event
    begun: Begun | None = None
    acked: bool = False
    model: Model = field(init=False, repr=False)
    started: float = field(init=False, repr=False)
    usage: Usage = field(init=False, repr=False)
