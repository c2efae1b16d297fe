"""Log lines: tokens replaced by fingerprints, text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import pytest

from runtime.logs import fingerprint, formatter, redact
from storage import keys

TOKEN = "2b408a84-acfb-4409-8ed1-731e13276230"  # fixed: it names the parametrized cases
MESSAGE_ID = "7c1d7e8e-4b7a-4f43-9a43-5d1f6b3c2a10"


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("parley.test", logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    "text",
    [
        f'127.0.0.1:5000 - "WebSocket /chat?token={TOKEN}&after=1-0" [accepted]',
        f"GET /refresh_token?token={TOKEN.upper()} HTTP/1.1",
        f"stop notice {{'token': '{TOKEN}', 'seq': 2}}",
        f'{{"token": "{TOKEN}"}}',
        f"Redis error on {keys.session_key(TOKEN)} and {keys.events_key(TOKEN)}",
        f"/chat?token%3D{TOKEN}",
    ],
)
def test_tokens_become_fingerprints(text: str) -> None:
    redacted = redact(text)
    assert TOKEN not in redacted.lower()
    assert f"fp-{fingerprint(TOKEN)}" in redacted


#: An ID token's form (header, claims, signature); its contents do not matter here.
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /conversations?owner={JWT} HTTP/1.1",
        f"offered subprotocols ['parley', 'parley.bearer.{JWT}']",
        f"Authorization: Bearer {JWT}",
    ],
)
def test_id_tokens_become_fingerprints(text: str) -> None:
    redacted = redact(text)
    assert JWT.split(".")[1] not in redacted and JWT.split(".")[2] not in redacted
    assert f"jwt-{fingerprint(JWT)}" in redacted


def test_message_ids_and_other_text_stay() -> None:
    text = f"message_id={MESSAGE_ID} seq=3 done"
    assert redact(text) == text


def test_fingerprint_is_short_stable_and_case_blind() -> None:
    assert fingerprint(TOKEN) == fingerprint(TOKEN.upper())
    assert len(fingerprint(TOKEN)) == 8 and fingerprint(TOKEN) != fingerprint(str(uuid.uuid4()))


def test_text_lines_are_redacted_tracebacks_included() -> None:
    try:
        raise RuntimeError(f"failed on {keys.session_key(TOKEN)}")
    except RuntimeError:
        record = _record("session %s: /chat?token=%s", "x", TOKEN)
        record.exc_info = sys.exc_info()
    line = formatter("text", "server").format(record)
    assert TOKEN not in line and "RuntimeError" in line


def test_json_lines_carry_the_message_fields_and_the_process() -> None:
    record = _record(
        "message_id=%s session=%s seq=%d done /chat?token=%s",
        MESSAGE_ID,
        fingerprint(TOKEN),
        4,
        TOKEN,
    )
    data = json.loads(formatter("json", "worker").format(record))
    assert data["message_id"] == MESSAGE_ID
    assert data["session"] == fingerprint(TOKEN)
    assert data["seq"] == "4"
    assert data["process"] == "worker" and isinstance(data["pid"], int)
    assert data["level"] == "INFO" and data["logger"] == "parley.test"
    assert TOKEN not in json.dumps(data)
