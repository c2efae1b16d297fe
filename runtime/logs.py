"""Logging of every Parley process: one setup, session tokens and ID tokens never written.

A session token is a bearer credential: whoever reads it can read and write the
conversation. Logs travel further than Redis does (terminals, files, log shippers), so
no log line holds one. Code names a session by :func:`fingerprint` (the first 8 hex
digits of the token's SHA-256, which cannot be turned back into the token), and the
formatter installed by :func:`setup_logging` rewrites any token that reaches a log line
anyway (uvicorn's ``WebSocket /chat?token=...`` lines, a Redis error naming a session's
key, a library's message) into the same fingerprint.

``LOG_FORMAT=json`` writes one JSON object a line (python-json-logger) with the
process's role and pid, and the ``message_id``, ``session`` and ``seq`` a line names,
so one message can be followed across server, worker and model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from runtime.retry import setup_retries

LogFormat = Literal["text", "json"]

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

#: Where a session or owner token shows up in text: a ``token=`` or ``owner=`` query
#: string or log field, a ``"token": "..."`` or ``"owner": "..."`` JSON or dict field, a
#: key or channel (``parley:session:{7}:<token>``, ``parley:owner:{7}:<owner>``). A
#: message id is also a UUID, so bare UUIDs elsewhere are left alone.
_TOKEN = re.compile(
    rf"(?P<lead>(?:token|owner)(?:=|%3[dD])|[\"'](?:token|owner)[\"']\s*:\s*[\"']"
    rf"|:\{{[0-9a-fA-F]\}}:)(?P<token>{_UUID})"
)
#: An ID token (a JWT, from an identity provider): its header is base64url JSON, so it
#: starts ``eyJ`` (``{"``). Wherever it shows up (a URL's query, the chat socket's
#: ``parley.bearer.<JWT>`` subprotocol, a library's message), it is rewritten.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: ``name=value`` pairs a log line may carry, lifted into JSON fields.
_FIELDS = re.compile(r"\b(message_id|session|seq)=([^\s,;:]+)")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def fingerprint(token: str) -> str:
    """A session's name in logs and metrics: 8 hex digits of SHA-256 of its token.

    The same token always gives the same fingerprint (case-insensitive, as tokens are),
    so a session can be followed across processes; the token cannot be recovered from
    it (a UUID4 holds 122 random bits).
    """
    return hashlib.sha256(token.lower().encode()).hexdigest()[:8]


def redact(text: str) -> str:
    """``text`` with every session token in a recognised place replaced by its fingerprint,
    and every ID token (a JWT) by ``jwt-`` and its fingerprint.

    ``"GET /chat?token=6f1c...-..."`` becomes ``"GET /chat?token=fp-1a2b3c4d"``.
    """
    if "eyJ" in text:
        text = _JWT.sub(lambda m: f"jwt-{fingerprint(m[0])}", text)
    if "token" not in text and "owner" not in text and ":{" not in text:
        return text  # the common case, without running the expression
    return _TOKEN.sub(lambda m: f"{m['lead']}fp-{fingerprint(m['token'])}", text)


class RedactingFormatter(logging.Formatter):
    """A text formatter whose every line (traceback included) goes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, tokens replaced by fingerprints."""
        return redact(super().format(record))


class RedactingJsonFormatter(JsonFormatter):
    """One JSON object per line, tokens replaced by fingerprints.

    Fields: ``time``, ``level``, ``logger``, ``message``, ``process`` (the role:
    ``server``, ``worker``, ``stack``), ``pid``, and ``message_id``, ``session`` and
    ``seq`` when the message names them (``message_id=... session=... seq=...``).
    """

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Lift the ``name=value`` pairs of the message into fields of their own."""
        message = log_data.get("message")
        if isinstance(message, str):
            for name, value in _FIELDS.findall(message):
                log_data.setdefault(name, value)
        return log_data

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line, tokens replaced by fingerprints."""
        return redact(super().format(record))


def formatter(log_format: LogFormat, process: str) -> logging.Formatter:
    """The formatter of every line a process writes, for ``LOG_FORMAT``.

    Args:
        log_format: ``"text"`` (one readable line) or ``"json"`` (one JSON object).
        process: the process's role, written in every JSON line.
    """
    if log_format == "json":
        return RedactingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process, "pid": os.getpid()},
        )
    return RedactingFormatter(_TEXT_FORMAT)


def setup_logging(level: str, log_format: LogFormat, process: str) -> None:
    """Configure the root logger once, at a process's entry point.

    One handler on stderr with the redacting formatter; every logger (uvicorn's
    included, which the server runs with ``log_config=None``) propagates to it.

    Args:
        level: a logging level name (``"INFO"``).
        log_format: ``"text"`` or ``"json"``.
        process: the process's role (``"server"``, ``"worker"``, ``"stack"``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, process))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    setup_retries()  # stamina's own hooks would log a retried callable's arguments
