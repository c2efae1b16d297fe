"""The middleware in front of the chat route keeps nothing of its own while a socket
lives: a request it lets through is handed on as the app's own awaitable, not awaited
inside a frame of the middleware (which would live as long as the socket). And the
host check that does so passes and refuses exactly what Starlette's
``TrustedHostMiddleware`` does."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import Message, Receive, Scope, Send

from server.security import AllowedHosts, SecurityMiddleware

HOSTS = ["127.0.0.1", "localhost", "[::1]", "*.example.org"]


class _Handed:
    """What the app returns: an awaitable the test can recognize."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


class _App:
    """An ASGI app that returns a :class:`_Handed` and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.handed = _Handed()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> _Handed:
        self.calls += 1
        return self.handed


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    pass


def _scope(kind: str, headers: dict[str, str]) -> Scope:
    return {
        "type": kind,
        "path": "/chat",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


def test_an_allowed_socket_is_handed_on_as_the_apps_own_awaitable() -> None:
    app = _App()
    scope = _scope("websocket", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"})
    assert AllowedHosts(app, HOSTS)(scope, _receive, _send) is app.handed
    assert SecurityMiddleware(app, frozenset())(scope, _receive, _send) is app.handed
    no_origin = _scope("websocket", {"host": "127.0.0.1:8000"})
    assert SecurityMiddleware(app, frozenset())(no_origin, _receive, _send) is app.handed


async def _outcome(middleware: Any, scope: Scope) -> tuple[bool, int | None]:
    """Whether ``middleware`` passed ``scope`` on to its app, and the status it answered."""
    app = _App()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(app)(scope, _receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return app.calls == 1, status


@pytest.mark.parametrize("allowed", [HOSTS, ["*"]])
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8000",
        "LOCALHOST",
        "[::1]:8000",
        "chat.example.org",
        "a.b.example.org:443",
        "example.org",
        "evilexample.org",
        "127.0.0.1.evil.example",
        "[::1",
        "127.0.0.1:abc",
        "",
        None,
    ],
)
async def test_hosts_are_allowed_as_starlette_allows_them(
    allowed: list[str], host: str | None
) -> None:
    scope = _scope("http", {} if host is None else {"host": host})
    ours = await _outcome(lambda app: AllowedHosts(app, allowed), scope)
    starlettes = await _outcome(
        lambda app: TrustedHostMiddleware(app, allowed, www_redirect=False), scope
    )
    assert ours == starlettes
