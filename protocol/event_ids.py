"""Event ids: the stream entry id of each event in a session's event stream.

An event's ``event_id`` is the id Redis gave its entry in ``events:{token}``, spliced into
the event's JSON as its first member by the scripts that append it, so that a server can
read it back without parsing the event. Clients send the last one they saw to resume.
"""

from __future__ import annotations

import re


def with_event_id(payload: str, event_id: str) -> str:
    """Insert ``event_id`` as the first member of a JSON object ``payload`` (as the scripts do)."""
    return f'{{"event_id":"{event_id}",{payload[1:]}'


_EVENT_ID_PREFIX = '{"event_id":"'


def event_id_of(payload: str) -> str | None:
    """The ``event_id`` of a payload built by :func:`with_event_id`, else None."""
    if not payload.startswith(_EVENT_ID_PREFIX):
        return None
    end = payload.find('"', len(_EVENT_ID_PREFIX))
    return payload[len(_EVENT_ID_PREFIX) : end] if end > 0 else None


#: A stream entry id: two unsigned 64-bit integers in ASCII decimal, ``"<ms>-<n>"``.
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64_MAX = 2**64 - 1


def stream_id_key(event_id: str) -> tuple[int, int]:
    """A stream entry id ``"<ms>-<n>"`` as a sortable pair; the one parser of stream ids.

    Strict: both parts are ASCII digits and fit in 64 bits, as Redis requires.

    Raises:
        ValueError: ``event_id`` is not a complete stream id.
    """
    match = _STREAM_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"not a stream id: {event_id[:40]!r}")
    ms, n = int(match[1]), int(match[2])
    if ms > _U64_MAX or n > _U64_MAX:
        raise ValueError(f"stream id out of range: {event_id!r}")
    return ms, n


def valid_stream_id(value: str) -> bool:
    """Whether ``value`` is a complete stream entry id such as ``1700000000000-0``."""
    try:
        stream_id_key(value)
    except ValueError:
        return False
    return True
