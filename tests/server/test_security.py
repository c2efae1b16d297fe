"""Browsers protected: WebSocket origins, security headers, no source maps; and the
operations surface (API explorer, metrics) that can be turned off."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from server.security import client_address, client_subject, normalize_origin
from tests.browser.webclient import built_client
from tests.support.parley import Parley, running_parley


async def _open(parley: Parley, http: aiohttp.ClientSession, origin: str | None) -> int:
    """The HTTP status of a chat handshake from a page at ``origin`` (101: accepted)."""
    token = await parley.create_session(http)
    headers = {"Origin": origin} if origin is not None else {}
    try:
        async with http.ws_connect(parley.ws_url, params={"token": token}, headers=headers):
            return 101
    except aiohttp.WSServerHandshakeError as e:
        return e.status


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),  # not a browser page: the terminal client, Postman
        ("SELF", 101),
        ("http://127.0.0.1:5173", 101),  # the Vite dev server
        ("http://localhost:5173", 101),
        ("https://chat.example.org", 101),  # in ALLOWED_ORIGINS
        ("http://evil.example", 403),
        ("http://127.0.0.1:1", 403),  # same host, another port: another origin
        ("null", 403),  # a sandboxed frame or a file
        ("http://127.0.0.1:99999", 403),  # malformed: refused, never a 500
        ("http://x:abc", 403),
        ("http://[::1", 403),
    ],
)
async def test_websocket_origin_is_checked_at_the_handshake(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession, origin: str | None, status: int
) -> None:
    allowed = "http://127.0.0.1:5173,http://localhost:5173,https://chat.example.org/"
    async with running_parley(redis_url, redis, allowed_origins=allowed) as parley:
        if origin == "SELF":
            origin = parley.url
        assert await _open(parley, http, origin) == status


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:99999", 403),  # an allowed host, a port no origin can match
        ("127.0.0.1:abc", 400),  # no Host at all: refused before the origin is read
        ("[::1", 400),
    ],
)
async def test_a_malformed_host_is_refused_at_the_handshake(
    parley: Parley, http: aiohttp.ClientSession, host: str, status: int
) -> None:
    token = await parley.create_session(http)
    headers = {"Origin": parley.url, "Host": host}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(parley.ws_url, params={"token": token}, headers=headers):
            pass
    assert refused.value.status == status


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (None, 200),  # the URL's own: 127.0.0.1:<port>
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("LOCALHOST", 200),
        ("evil.example", 400),  # a DNS-rebinding page
        ("evil.example:{port}", 400),
        ("127.0.0.1.evil.example", 400),
        ("", 400),
    ],
)
async def test_only_allowed_hosts_are_answered(
    parley: Parley, http: aiohttp.ClientSession, host: str | None, status: int
) -> None:
    port = parley.url.rsplit(":", 1)[1]
    headers = {} if host is None else {"Host": host.format(port=port)}
    async with http.post(f"{parley.url}/token", params={"name": "ada"}, headers=headers) as r:
        assert r.status == status, await r.text()
    token = await parley.create_session(http)
    if status == 200:
        return
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(parley.ws_url, params={"token": token}, headers=headers):
            pass
    assert refused.value.status == 400


async def test_allowed_hosts_can_name_a_site(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    async with running_parley(redis_url, redis, allowed_hosts="chat.example.org") as parley:
        for host, status in (("chat.example.org", 200), ("127.0.0.1", 400)):
            async with http.get(f"{parley.url}/healthz", headers={"Host": host}) as r:
                assert r.status == status


@pytest.mark.parametrize(
    ("interface", "hosts"),
    [
        ("127.0.0.1", "127.0.0.1,localhost,[::1]"),
        ("0.0.0.0", "127.0.0.1,localhost,[::1]"),  # every interface: no name of its own
        ("::", "127.0.0.1,localhost,[::1]"),
        ("192.168.1.5", "127.0.0.1,localhost,[::1],192.168.1.5"),
        ("fe80::1", "127.0.0.1,localhost,[::1],[fe80::1]"),
        ("Chat.Example.org", "127.0.0.1,localhost,[::1],chat.example.org"),
    ],
)
def test_the_listening_address_is_an_allowed_host(interface: str, hosts: str) -> None:
    from server.security import SecuritySettings

    assert SecuritySettings().serving(interface).allowed_hosts == hosts
    assert SecuritySettings(allowed_hosts="*").serving(interface).hosts() == ["*"]


async def test_pages_and_tokens_carry_security_headers(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{parley.url}/") as r:
        assert r.status == 200
        csp = r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["object-src"] == "'none'"
    async with http.post(f"{parley.url}/token", params={"name": "ada"}) as r:
        token = (await r.json())["token"]
        assert r.headers["Cache-Control"] == "no-store"
    async with http.get(f"{parley.url}/refresh_token", params={"token": token}) as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def _holds_credentials(schema: object, components: dict[str, object]) -> bool:
    """Whether a JSON Schema (refs resolved in ``components``) has a ``token`` or
    ``owner`` property anywhere."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return _holds_credentials(components[ref.rsplit("/", 1)[1]], components)
        properties = schema.get("properties", {})
        if {"token", "owner"} & set(properties):
            return True
        return any(_holds_credentials(v, components) for v in schema.values())
    if isinstance(schema, list):
        return any(_holds_credentials(v, components) for v in schema)
    return False


def test_every_route_that_holds_a_credential_is_no_store() -> None:
    """Read from the OpenAPI schema, so a new route is checked without a word here: a
    route that takes a token or an owner, or answers with one, is never cached."""
    from server.app import create_app
    from server.config import ServerSettings
    from server.security import NO_STORE_PATHS

    schema = create_app(ServerSettings()).openapi()
    components = schema["components"]["schemas"]
    holding = set()
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            if (
                operation.get("security")
                or {"token", "owner"} & names
                or _holds_credentials(operation.get("responses", {}), components)
            ):
                holding.add(path)
    assert holding >= {"/token", "/owner", "/conversations", "/refresh_token"}
    assert holding <= NO_STORE_PATHS, holding - NO_STORE_PATHS


async def test_responses_with_credentials_are_never_stored(
    parley: Parley, http: aiohttp.ClientSession
) -> None:
    url = parley.url
    seen: list[tuple[str, int, str | None]] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        async with http.request(method, f"{url}{path}", **kwargs) as r:
            body = await r.read()
            seen.append((f"{method} {path}", r.status, r.headers.get("Cache-Control")))
            return json.loads(body) if body and r.content_type == "application/json" else None

    owner = (await call("POST", "/owner"))["owner"]
    token = (await call("POST", "/token", params={"name": "ada", "owner": owner}))["token"]
    await call("GET", "/conversations", params={"owner": owner})
    await call("GET", "/conversations", params={"owner": "not-an-owner"})
    await call("GET", "/refresh_token", params={"token": token})
    await call("PATCH", "/session", params={"token": token}, json={"title": "t"})
    await call("GET", "/session/export", params={"token": token})
    await call("GET", "/session/export", params={"token": token, "format": "markdown"})
    await call("DELETE", "/session", params={"token": token})
    await call("GET", "/refresh_token", params={"token": token})
    assert len(seen) == 10
    assert [call for call in seen if call[2] != "no-store"] == []


@pytest.mark.parametrize("enabled", [True, False])
async def test_api_explorer_and_metrics_can_be_turned_off(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession, enabled: bool
) -> None:
    async with running_parley(
        redis_url, redis, docs_enabled=enabled, metrics_enabled=enabled
    ) as parley:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            async with http.get(f"{parley.url}{path}") as r:
                assert r.status == (200 if enabled else 404), path
        async with http.get(f"{parley.url}/healthz") as r:
            assert r.status == 200


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.handlers += [n for n in names if n.startswith("on")]
        self._in_script = tag == "script" and "src" not in names
        if tag == "style":
            self.inline.append("<style>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:80])

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_built_client_has_no_source_maps_and_no_inline_script() -> None:
    dist: Path = built_client()
    files = [p for p in dist.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".map"]
    for path in files:
        if path.suffix in (".js", ".css", ".html"):
            assert "sourceMappingURL" not in path.read_text(errors="replace"), path
    parser = _Scripts()
    parser.feed((dist / "index.html").read_text())
    assert not parser.inline and not parser.handlers
    assert re.search(r'<script type="module"[^>]* src="/assets/', (dist / "index.html").read_text())


def test_origins_are_normalized() -> None:
    assert normalize_origin("HTTPS://Chat.Example.org:443/") == "https://chat.example.org"
    assert normalize_origin("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("10.0.0.2", "1.2.3.4", "", "10.0.0.2"),  # no trusted proxy: the header is ignored
        ("203.0.113.9", "1.2.3.4", "10.0.0.0/8", "203.0.113.9"),  # peer is not a proxy
        ("10.0.0.2", "1.2.3.4", "10.0.0.0/8", "1.2.3.4"),
        ("10.0.0.2", "6.6.6.6, 1.2.3.4", "10.0.0.0/8", "1.2.3.4"),  # a forged left part
        ("10.0.0.2", "1.2.3.4, 10.0.0.7", "10.0.0.0/8", "1.2.3.4"),  # two proxies
        ("10.0.0.2", "", "10.0.0.0/8", "10.0.0.2"),
        # Entries that are not addresses: the header is disbelieved, the proxy counts.
        ("172.18.0.1", "random-7, 172.18.0.1", "172.16.0.0/12", "172.18.0.1"),
        ("10.0.0.2", "random-7", "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", "1.2.3.4:80", "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", "1.2.3.4, unknown", "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", "2001:DB8::1", "10.0.0.0/8", "2001:db8::1"),
    ],
)
def test_client_address_behind_trusted_proxies(
    peer: str, forwarded: str, trusted: str, client: str
) -> None:
    from server.security import SecuritySettings

    scope = {
        "type": "http",
        "client": (peer, 5000),
        "headers": [(b"x-forwarded-for", forwarded.encode())] if forwarded else [],
    }
    proxies = SecuritySettings(trusted_proxies=trusted).proxies()
    assert client_address(scope, proxies) == client


@pytest.mark.parametrize(
    ("address", "prefix", "subject"),
    [
        ("203.0.113.9", 64, "203.0.113.9"),
        ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:fffe", 64, "2001:db8:1:2::/64"),  # same /64
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),  # the next /64: another client
        ("2001:db8:1:2::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2::1", 128, "2001:db8:1:2::1/128"),
        ("::ffff:203.0.113.9", 64, "203.0.113.9"),  # IPv4-mapped: the IPv4 client
        ("unknown", 64, "unknown"),
    ],
)
def test_ipv6_clients_count_by_prefix(address: str, prefix: int, subject: str) -> None:
    assert client_subject(address, prefix) == subject


async def test_addresses_of_one_ipv6_network_share_one_budget(
    redis_url: str, redis: Redis[str], http: aiohttp.ClientSession
) -> None:
    """Rotating addresses inside one /64 buys no new sessions (behind a trusted proxy
    that reports IPv6 clients; here the test client itself)."""
    async with running_parley(
        redis_url, redis, trusted_proxies="127.0.0.1", rate_sessions_per_client=2
    ) as parley:
        statuses = []
        for host in range(1, 5):
            forwarded = {"X-Forwarded-For": f"2001:db8:1:2::{host:x}"}
            async with http.post(
                f"{parley.url}/token", params={"name": "ada"}, headers=forwarded
            ) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429, 429]
        forwarded = {"X-Forwarded-For": "2001:db8:1:3::1"}  # another /64: its own budget
        async with http.post(f"{parley.url}/token", params={"name": "ada"}, headers=forwarded) as r:
            assert r.status == 200
