"""docs/asyncapi.yaml: valid AsyncAPI, and in agreement with the wire models.

Two descriptions of the chat socket must say the same: the AsyncAPI document (for tools,
and for people: the documentation site's WebSocket reference and error codes are
generated from it) and the pydantic models of protocol/wire.py (what the processes build
and parse). Checked here: the commands and events each one names, their fields and which
are always there, the ``type`` literals, the error codes; and the document's examples and
the events as the server serializes them, against both the document's JSON Schemas and
the models. tests/test_docs.py checks that the site lists them all.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
import typing
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from protocol.frames import parse_frame
from protocol.wire import (
    SERVER_EVENT,
    ChatMessage,
    ClientCommand,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GapEvent,
    MessageVersion,
    QueuedEvent,
    RestartEvent,
    RevisedEvent,
    ServerEvent,
    TokenEvent,
)
from tests.browser.webclient import installed_client

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT_FILE = ROOT / "docs" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOCUMENT_FILE.read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
DOC_URI = "urn:parley:asyncapi"


def members(union: Any) -> list[type[BaseModel]]:
    """The models of a discriminated union (``Annotated[A | B, Field(...)]``)."""
    models: list[type[BaseModel]] = list(typing.get_args(typing.get_args(union)[0]))
    return models


def literal(model: type[BaseModel]) -> str:
    """A wire model's ``type`` literal."""
    value = model.model_fields["type"].default
    assert isinstance(value, str)
    return value


COMMANDS = {literal(m): m for m in members(ClientCommand)}
EVENTS = {literal(m): m for m in members(ServerEvent)}
#: Fields a model lets default but the server always sends: the scripts splice an
#: ``event_id`` into every reply event, ``queued`` carries the stored message, and
#: ``error`` its ``message_id`` (null when no stored message is concerned).
ALWAYS_SENT = {
    "queued": {"message"},
    "token": {"event_id"},
    "restart": {"event_id"},
    "done": {"event_id"},
    "revised": {"event_id"},
    "error": {"message_id"},
}


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The document's schema named like ``model``."""
    schema: dict[str, Any] = SCHEMAS[model.__name__]
    return schema


def validate(instance: Any, schema_name: str) -> list[str]:
    """What is wrong with ``instance`` under the document's schema ``schema_name``."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT7)
    )
    validator = jsonschema.Draft7Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/{schema_name}"}, registry=registry
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def test_the_parser_accepts_the_document() -> None:
    """@asyncapi/parser: the AsyncAPI 3.0 schema and its rules; no error, no warning."""
    client = installed_client()
    result = subprocess.run(
        ["node", "scripts/validate-asyncapi.js", str(DOCUMENT_FILE)],
        cwd=client,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    diagnostics = [json.loads(line) for line in result.stdout.splitlines()]
    serious = [d for d in diagnostics if d["severity"] in ("error", "warning")]
    assert result.returncode == 0 and not serious, serious or result.stderr


def test_the_document_describes_this_version_and_socket() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert DOC["asyncapi"].startswith("3.")
    assert DOC["info"]["version"] == pyproject["project"]["version"]
    assert DOC["channels"]["chat"]["address"] == "/chat"
    query = DOC["channels"]["chat"]["bindings"]["ws"]["query"]
    assert query["required"] == ["token"] and set(query["properties"]) == {"token", "after"}


def test_each_command_and_event_has_its_message_and_operation() -> None:
    messages = DOC["components"]["messages"]
    by_type = {
        SCHEMAS[m["payload"]["$ref"].split("/")[-1]]["properties"]["type"]["const"]: name
        for name, m in messages.items()
        if "$ref" in m["payload"]
    }
    assert set(by_type) == set(COMMANDS) | set(EVENTS)
    assert messages["plainText"]["payload"]["type"] == "string"
    actions: dict[str, set[str]] = {"receive": set(), "send": set()}
    for operation in DOC["operations"].values():
        actions[operation["action"]] |= {m["$ref"].split("/")[-1] for m in operation["messages"]}
    assert actions["receive"] == {by_type[t] for t in COMMANDS} | {"plainText"}
    assert actions["send"] == {by_type[t] for t in EVENTS}


@pytest.mark.parametrize(
    "model", [*COMMANDS.values(), *EVENTS.values(), ChatMessage], ids=lambda m: m.__name__
)
def test_the_schemas_have_the_fields_of_the_models(model: type[BaseModel]) -> None:
    schema = schema_of(model)
    assert set(schema["properties"]) == set(model.model_fields)
    required = {name for name, f in model.model_fields.items() if f.is_required()}
    kind = literal(model) if "type" in model.model_fields else None
    if kind is not None:
        assert schema["properties"]["type"] == {"const": kind}
        required |= {"type"} | ALWAYS_SENT.get(kind, set())
    assert set(schema["required"]) == required
    if kind in COMMANDS:
        # extra="forbid": the server refuses unknown fields, so the schema does too.
        assert schema["additionalProperties"] is False


def test_the_error_codes_are_the_models() -> None:
    codes = [option["const"] for option in SCHEMAS["ErrorCode"]["oneOf"]]
    assert sorted(codes) == sorted(code.value for code in ErrorCode)
    assert all(option.get("description") for option in SCHEMAS["ErrorCode"]["oneOf"])
    assert SCHEMAS["ErrorEvent"]["properties"]["code"] == {"$ref": "#/components/schemas/ErrorCode"}


def examples() -> list[tuple[str, Any]]:
    return [
        (f"{name}/{example['name']}", example["payload"])
        for name, message in DOC["components"]["messages"].items()
        for example in message["examples"]
    ]


@pytest.mark.parametrize(("name", "payload"), examples(), ids=[n for n, _ in examples()])
def test_each_example_is_valid_for_the_document_and_the_models(name: str, payload: Any) -> None:
    message = DOC["components"]["messages"][name.split("/")[0]]
    if isinstance(payload, str):  # plain text: the message content itself
        assert message["payload"]["type"] == "string"
        assert parse_frame(payload, max_message_chars=4000).model_dump() == {
            "type": "message",
            "content": payload,
        }
        return
    schema_name = message["payload"]["$ref"].split("/")[-1]
    assert not validate(payload, schema_name)
    if payload["type"] in COMMANDS:
        command = parse_frame(json.dumps(payload), max_message_chars=4000)
        assert command.model_dump() == payload
    else:
        event = SERVER_EVENT.validate_python(payload)
        assert type(event).__name__ == schema_name


def sent(event: BaseModel, event_id: str | None = None) -> dict[str, Any]:
    """``event`` as a socket receives it: without null fields, and with the ``event_id``
    the scripts splice in first (reply events)."""
    body: dict[str, Any] = json.loads(event.model_dump_json(exclude_none=True))
    return {"event_id": event_id, **body} if event_id is not None else body


MID = "3f2b8a9e-4c1d-4e5f-9a7b-2c3d4e5f6a7b"
REPLY = ChatMessage(
    id=MID, role="assistant", content="Hi", timestamp="2026-01-01T12:00:00.000Z", stopped=True
)
SERIALIZED = [
    (
        "QueuedEvent",
        sent(QueuedEvent(message_id=MID, message=REPLY.model_copy(update={"role": "user"}))),
    ),
    ("TokenEvent", sent(TokenEvent(message_id=MID, content="Hi"), "1767268800000-0")),
    ("RestartEvent", sent(RestartEvent(message_id=MID), "1767268800000-1")),
    ("DoneEvent", sent(DoneEvent(message_id=MID, reply=REPLY), "1767268800000-2")),
    (
        "DoneEvent",
        sent(
            DoneEvent(message_id=MID, reply=REPLY.model_copy(update={"truncated": "length"})), "1-0"
        ),
    ),
    # The server's own errors keep a null message_id; the worker's carry an event_id.
    (
        "ErrorEvent",
        json.loads(
            ErrorEvent(
                code=ErrorCode.TOO_MANY_REQUESTS, detail="wait", retry_after_s=1.5
            ).model_dump_json(exclude={"event_id"})
        ),
    ),
    (
        "ErrorEvent",
        sent(ErrorEvent(message_id=MID, code=ErrorCode.LLM_REJECTED, detail="no"), "2-0"),
    ),
    ("GapEvent", sent(GapEvent(oldest_event_id="1767268805000-0", detail="trimmed"))),
    # A revision carries the version it kept, or none (a regenerate after a failure).
    (
        "RevisedEvent",
        sent(
            RevisedEvent(
                message_id=MID,
                message=REPLY.model_copy(update={"role": "user", "stopped": False}),
                version=MessageVersion(content="Hi", timestamp=REPLY.timestamp, reply=REPLY),
                version_count=3,
            ),
            "3-0",
        ),
    ),
    (
        "RevisedEvent",
        sent(
            RevisedEvent(
                message_id=MID, message=REPLY.model_copy(update={"role": "user"}), version_count=0
            ),
            "4-0",
        ),
    ),
]


@pytest.mark.parametrize(("schema_name", "event"), SERIALIZED, ids=[n for n, _ in SERIALIZED])
def test_events_as_the_server_sends_them_are_valid(schema_name: str, event: dict[str, Any]) -> None:
    assert not validate(event, schema_name)
