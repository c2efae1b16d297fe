"""The server-sent events of an OpenAI-compatible chat completions stream, line by line.

Every OpenAI-compatible server (Hugging Face's router, TGI, vLLM, llama.cpp) sends one
JSON object per ``data:`` line (https://html.spec.whatwg.org/multipage/server-sent-events.html)::

    data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}
    : keep-alive comment
    data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data: [DONE]

so each line is parsed on its own. Errors come as ``{"error": ...}`` objects (OpenAI,
vLLM, TGI) or, from llama.cpp, as an ``error:`` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(frozen=True)
class Chunk:
    """One chunk's delta: its ``content`` (maybe empty) and whether it ends the reply."""

    content: str
    finished: bool


class Done:
    """The ``data: [DONE]`` line."""


@dataclass(frozen=True)
class UsageReport:
    """A chunk carrying ``usage`` (usually the last one, without choices)."""

    usage: dict[str, Any]
    chunk: Chunk | None


class Garbage:
    """A line that is neither SSE nor JSON; the reader logs it and skips it."""


@dataclass(frozen=True)
class StreamError:
    """An error reported inside the stream: its message and the HTTP status it carried."""

    message: str
    status: int | None


DONE = Done()
GARBAGE = Garbage()

#: Decodes a line's JSON (any JSON value, as :func:`json.loads` would).
_JSON = msgspec.json.Decoder()

#: What one line of the stream holds; None for a line to skip (a comment, a blank line).
Event = Chunk | Done | Garbage | UsageReport | StreamError | None


def parse_line(raw: bytes) -> Event:
    """One SSE line: a chunk, ``[DONE]``, garbage, an in-stream error, or None to skip.

    The line stays bytes: its JSON is decoded from them by msgspec, in C, with no copy
    into text first (a model sends one such line a token)."""
    line = raw.rstrip(b"\r\n")
    if not line or line.startswith(b":"):
        return None
    name, _, value = line.partition(b":")
    value = value.removeprefix(b" ")
    if name not in (b"data", b"error"):
        return None if name in (b"event", b"id", b"retry") else GARBAGE
    if name == b"data" and value.strip() == b"[DONE]":
        return DONE
    try:
        payload = _JSON.decode(value)
    except msgspec.DecodeError:
        return GARBAGE
    if not isinstance(payload, dict):
        return GARBAGE
    if name == b"error":
        return _stream_error({"error": payload})
    if payload.get("error") is not None:
        return _stream_error(payload)
    chunk = _chunk(payload.get("choices"))
    usage = payload.get("usage")
    return UsageReport(usage, chunk) if isinstance(usage, dict) else chunk


def _stream_error(payload: dict[str, Any]) -> StreamError:
    """An error event: OpenAI/vLLM ``{"error": {"message", "code"}}`` or TGI's strings."""
    err = payload.get("error")
    status: int | None = None
    if isinstance(err, dict):
        code = err.get("code")
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            status = int(code)
        message = str(err.get("message", err))
    else:
        message = str(err)
        if payload.get("error_type") == "validation":  # TGI's input validation error
            status = 400
    return StreamError(message, status)


def _chunk(choices: object) -> Chunk | None:
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # e.g. a trailing usage-only chunk
    choice = choices[0]
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return Chunk(
        content=content if isinstance(content, str) else "",
        finished=choice.get("finish_reason") is not None,
    )
