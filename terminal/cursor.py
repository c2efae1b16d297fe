"""Where a terminal client is in its session's event stream: which events it has seen,
which replies ended, and what a ``gap`` left partial (:class:`ResumeCursor`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.event_ids import stream_id_key
from protocol.wire import (
    DoneEvent,
    ErrorEvent,
    GapEvent,
    RevisedEvent,
    ServerEvent,
    SessionView,
    TokenEvent,
)


def _stream_order(event_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (:func:`stream_id_key`); malformed ids sort first."""
    try:
        return stream_id_key(event_id)
    except ValueError:
        return -1, -1


@dataclass
class ResumeCursor:
    """Where the client is in the session's event stream, and which replies it has seen.

    ``last_event_id`` is what a resume asks to continue after. ``finished`` holds the
    user-message ids whose reply ended (``done`` or ``error``); a resume from the start
    of the stream ("0") replays them, and they are dropped. ``versions`` counts the
    earlier versions known of each turn, so that a replayed ``revised`` event already
    reflected in the history loaded is dropped too, while a new one reopens its turn: a
    revision that kept a version is new if its ``version_count`` is more than the count
    known. One that kept none (a regenerate after a failed reply) leaves the count as it
    was; it is new only while the turn is known to have no reply (``replyless``: none in
    the history loaded, or an ``error`` since), as it can only follow such a turn.

    After a ``gap`` event, the replay starts at the oldest event kept, which may be in
    the middle of a reply (replies of a session come one at a time, so at most one):
    when the first event after the gap is a ``token``, that reply's tokens are dropped
    (``partial``) until its ``done``, ``error`` or ``restart``, which are whole.
    """

    last_event_id: str | None = None
    finished: set[str] = field(default_factory=set)
    versions: dict[str, int] = field(default_factory=dict)
    replyless: set[str] = field(default_factory=set)
    partial: str | None = None
    _after_gap: bool = False

    def after(self) -> str:
        """The ``after`` of the next resume: the last event seen, or the stream's start."""
        return self.last_event_id or "0-0"

    def accept(self, event: ServerEvent) -> bool:
        """Record ``event``; False if it was seen before and must be dropped (a ``gap``:
        if nothing was missed, as when a second replay of the same resume reports it)."""
        if isinstance(event, GapEvent):
            last = self.last_event_id
            if last is not None and _stream_order(last) >= _stream_order(event.oldest_event_id):
                return False
            self._after_gap = True
            return True
        event_id = getattr(event, "event_id", None)
        if event_id is None:
            return True  # not from the event stream (``queued``, refusals): never replayed
        last = self.last_event_id
        if last is not None and _stream_order(event_id) <= _stream_order(last):
            return False
        # Seen from here on, even if not shown: a resume continues after it.
        self.last_event_id = event_id
        if self._after_gap:
            self._after_gap = False
            if isinstance(event, TokenEvent):
                self.partial = event.message_id  # its first tokens were trimmed away
        if self.partial is not None and event.message_id == self.partial:
            if isinstance(event, TokenEvent):
                return False
            self.partial = None  # done, error, restart or revised: whole from here
        if isinstance(event, RevisedEvent):
            if not self._new_revision(event):
                return False  # a revision the history loaded already holds
            self.versions[event.message_id] = event.version_count
            self.finished.discard(event.message_id)  # its new reply follows
            self.replyless.discard(event.message_id)
        elif event.message_id in self.finished:
            return False
        if isinstance(event, DoneEvent | ErrorEvent) and event.message_id is not None:
            self.finished.add(event.message_id)
            if isinstance(event, ErrorEvent):
                self.replyless.add(event.message_id)
            else:
                self.replyless.discard(event.message_id)
        return True

    def _new_revision(self, event: RevisedEvent) -> bool:
        """Whether ``event`` is a revision not yet reflected in what the client knows."""
        known = self.versions.get(event.message_id, 0)
        if event.version is not None:
            return event.version_count > known
        return event.version_count >= known and event.message_id in self.replyless

    def seed(self, view: SessionView) -> None:
        """Mark the user messages answered in ``view``'s history as finished (and the
        others as without a reply), and note each turn's earlier versions."""
        messages = view.messages
        for n, message in enumerate(messages):
            if message.role != "user":
                continue
            self.versions[message.id] = len(message.versions or [])
            if n + 1 < len(messages) and messages[n + 1].role == "assistant":
                self.finished.add(message.id)
                self.replyless.discard(message.id)
            else:
                self.replyless.add(message.id)
