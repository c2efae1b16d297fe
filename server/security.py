"""What protects browsers and the server's surface: response headers, WebSocket origins,
the client's address behind trusted proxies, and the settings of all three.

:class:`SecurityMiddleware` is a pure ASGI middleware (it wraps WebSockets too, which
Starlette's ``BaseHTTPMiddleware`` cannot):

- every HTTP response gets ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` and a strict ``Content-Security-Policy`` (scripts,
  styles and sockets from this origin only, no inline script, ``frame-ancestors
  'none'``); the API explorer (``/docs``, ``/redoc``), which loads its scripts from a CDN,
  gets ``frame-ancestors 'none'`` alone;
- responses that carry a session or owner token, or answer a request naming one
  (:data:`NO_STORE_PATHS`), get ``Cache-Control: no-store``;
- a request (HTTP or WebSocket) whose ``Host`` is not in ``ALLOWED_HOSTS`` is refused
  with 400 (:class:`AllowedHosts`, by Starlette's ``TrustedHostMiddleware``), so a page
  at a name that an attacker points at the server (DNS rebinding) gets nothing;
- a WebSocket whose ``Origin`` is neither the server's own (the request's ``Host``) nor
  in ``ALLOWED_ORIGINS`` is refused at the handshake (HTTP 403), so a page elsewhere
  cannot open a socket with a visitor's token. A request without ``Origin`` is not from
  a browser page (the terminal client, Postman, tests) and passes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field
from starlette._utils import parse_host_header
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.config import CommonSettings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The Vite dev server (``npm run dev``), which proxies the API to a running server.
DEV_ORIGINS = "http://127.0.0.1:5173,http://localhost:5173"
#: The names of the local machine: what ``make run``'s page is reached by.
LOCAL_HOSTS = "127.0.0.1,localhost,[::1]"

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
#: The API explorer's pages load Swagger UI / ReDoc from a CDN with an inline script.
EXPLORER_CSP = "frame-ancestors 'none'"
EXPLORER_PATHS = ("/docs", "/redoc")
#: Responses that hold a credential (a session or owner token), or answer a request
#: that names one: never stored by a browser or a proxy cache.
NO_STORE_PATHS = frozenset(
    {"/token", "/refresh_token", "/owner", "/conversations", "/session", "/session/export"}
)
NOT_FOUND = JSONResponse({"detail": "Not Found"}, status_code=404)


class SecuritySettings(CommonSettings):
    """The server's settings for origins, proxies, admission limits and its operations
    surface (environment variables, or a ``.env`` file)."""

    allowed_origins: str = Field(
        default=DEV_ORIGINS,
        description="Origins (comma-separated) of pages allowed to open chat sockets, besides "
        "the server's own (the request's `Host`); the default is the Vite dev "
        "server. Others are refused with 403. Requests without `Origin` (not from a "
        "page) pass.",
    )
    allowed_hosts: str = Field(
        default=LOCAL_HOSTS,
        description="Host names (comma-separated; `*.example.org` for its subdomains, `*` for "
        "any) the server answers to; a request with another `Host` gets 400, so a "
        "page at a name an attacker points at the server (DNS rebinding) gets "
        "nothing. The `--host` address of `python -m server` is added. Set your "
        "domain when serving one.",
    )
    trusted_proxies: str = Field(
        default="",
        description="IPs or CIDRs (comma-separated) of reverse proxies whose `X-Forwarded-For` "
        "is believed. Empty: none, the peer's address is the client's. Name the "
        "proxy alone, never a whole private range (see Security).",
    )
    docs_enabled: bool = Field(
        default=True, description="Serve the API explorer (`/docs`, `/redoc`, `/openapi.json`)."
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus metrics.")
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve them on this port (on the `--host` interface) instead of `/metrics` "
        "on the main port; 0: on the main port.",
    )
    client_ipv6_prefix: int = Field(
        default=64,
        ge=32,
        le=128,
        description="IPv6 clients are counted by network of this prefix length (bits): one "
        "host usually holds a whole /64, so rotating addresses inside it "
        "buys no new budget. 128: by address.",
    )
    rate_window_s: float = Field(
        default=60.0, gt=0, description="The window (s) of the five limits below."
    )
    rate_sessions_per_client: int = Field(
        default=10, gt=0, description="`POST /token` per client address per window; more: 429."
    )
    rate_owners_per_client: int = Field(
        default=5, gt=0, description="`POST /owner` per client address per window; more: 429."
    )
    rate_socket_opens_per_client: int = Field(
        default=60, gt=0, description="Chat sockets opened per client address per window."
    )
    rate_messages_per_session: int = Field(
        default=20, gt=0, description="Messages accepted per session per window."
    )
    max_sockets_per_client: int = Field(
        default=20, gt=0, description="Chat sockets open at once per client address."
    )

    def origins(self) -> frozenset[str]:
        """``ALLOWED_ORIGINS`` normalized (see :func:`normalize_origin`)."""
        return frozenset(normalize_origin(o) for o in self.allowed_origins.split(",") if o.strip())

    def hosts(self) -> list[str]:
        """``ALLOWED_HOSTS`` as a list, lower case (``["*"]``: any host)."""
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    def serving(self, interface: str) -> Self:
        """These settings with the address the server listens on (``--host``) among the
        allowed hosts, unless it is a wildcard address (``0.0.0.0``, ``::``) or any host
        is allowed."""
        hosts = self.hosts()
        try:
            ip = ipaddress.ip_address(interface)
        except ValueError:
            name = interface.lower()
        else:
            if ip.is_unspecified:
                return self
            name = f"[{ip}]" if ip.version == 6 else str(ip)
        if "*" in hosts or name in hosts:
            return self
        return self.model_copy(update={"allowed_hosts": ",".join([*hosts, name])})

    def proxies(self) -> tuple[Network, ...]:
        """``TRUSTED_PROXIES`` as networks.

        Raises:
            ValueError: an entry is not an IP address or CIDR.
        """
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False)
            for p in self.trusted_proxies.split(",")
            if p.strip()
        )


_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or a trailing slash.

    Raises:
        ValueError: ``origin`` is no URL (a port out of range or not a number, an
            unclosed ``[``).
    """
    parts = urlsplit(origin.strip().lower())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = str(parts.port) if parts.port is not None else ""
    if port and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def same_origin(origin: str, host_header: str | None) -> bool:
    """Whether ``origin`` names the host and port the request was sent to (its ``Host``).

    Raises:
        ValueError: ``origin`` or ``host_header`` is malformed (see :func:`normalize_origin`).
    """
    if not host_header:
        return False
    scheme = urlsplit(origin.strip().lower()).scheme
    return normalize_origin(origin) == normalize_origin(f"{scheme}://{host_header}")


def client_address(scope: Scope, trusted: Iterable[Network]) -> str:
    """The client's IP address: the peer's, or, when the peer is a trusted proxy, the
    right-most address of ``X-Forwarded-For`` that is not itself a trusted proxy.

    Proxies append the address they received from, so the right-most untrusted entry
    is the first one no trusted proxy vouches for; anything left of it is whatever the
    client wrote. An entry that is not an IP address (``random-7``, ``1.2.3.4:80``,
    ``unknown``) was written by no proxy of ours: the whole header is then disbelieved
    and the peer, the proxy itself, is the client, so such requests share the proxy's
    one budget instead of naming a budget of their own. Returns ``"unknown"`` when the
    server knows no peer (a test client).
    """
    trusted = tuple(trusted)
    peer = scope.get("client")
    address = peer[0] if peer else "unknown"
    if not trusted or not _is_trusted(address, trusted):
        return address
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
    found = address
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            logger.debug("disbelieved an X-Forwarded-For holding a non-address")
            return address
        if not any(ip in net for net in trusted):
            return str(ip)
        found = str(ip)
    return found


def client_subject(address: str, ipv6_prefix: int) -> str:
    """What the per-client limits count for ``address``: an IPv4 address as it is, an
    IPv6 address as its ``/ipv6_prefix`` network (one host usually holds a whole /64,
    and rotating addresses inside it must not buy new budgets). An IPv4-mapped IPv6
    address (``::ffff:1.2.3.4``) counts as its IPv4 address; anything that is not an
    address (``unknown``) as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def client_key(scope: Scope, trusted: Iterable[Network], ipv6_prefix: int) -> str:
    """The client a request counts against: :func:`client_subject` of
    :func:`client_address`."""
    return client_subject(client_address(scope, trusted), ipv6_prefix)


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


class SecurityMiddleware:
    """ASGI middleware: security headers on responses, origin check on WebSockets, and
    paths turned off (answered 404 whatever route holds them).

    Args:
        app: the application it wraps.
        allowed_origins: normalized origins allowed besides the request's own.
        hidden_paths: paths answered 404 (e.g. ``/metrics`` when served elsewhere).
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: frozenset[str],
        hidden_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.allowed_origins = allowed_origins
        self.hidden_paths = hidden_paths

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Handle one connection (HTTP or WebSocket). A socket it lets through is handed
        on as the app's own awaitable, not awaited here (see :class:`AllowedHosts`)."""
        if scope["type"] == "websocket":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.origin_allowed(origin, headers.get("host")):
                logger.warning("refused a socket from origin %.100s", origin)
                return _refuse_origin(receive, send)
        elif scope["type"] == "http":
            return self._http(scope, receive, send)
        return self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP request: its response with the security headers, or 404 when hidden."""
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response = MutableHeaders(scope=message)
                response.setdefault("X-Content-Type-Options", "nosniff")
                response.setdefault("Referrer-Policy", "no-referrer")
                explorer = path.startswith(EXPLORER_PATHS)
                response.setdefault("Content-Security-Policy", EXPLORER_CSP if explorer else CSP)
                if path in NO_STORE_PATHS:
                    response["Cache-Control"] = "no-store"
            await send(message)

        if path in self.hidden_paths:
            await NOT_FOUND(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Whether a page at ``origin`` may open a socket on the server at ``host_header``.

        An opaque origin (``null``: a sandboxed frame, a file) never may.
        """
        try:
            parts = urlsplit(origin.strip().lower())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return False
            if normalize_origin(origin) in self.allowed_origins:
                return True
            return same_origin(origin, host_header)
        except ValueError:
            # A port out of range or not a number, an unclosed IPv6 bracket, in the
            # Origin or the Host: no page's origin, and no server's own.
            return False


async def _refuse_origin(receive: Receive, send: Send) -> None:
    """Refuse a socket's handshake for its origin: a close (1008) before the accept."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1008, "reason": "origin"})


class AllowedHosts:
    """ASGI middleware: a request whose ``Host`` is not in ``allowed_hosts`` gets 400
    (Starlette's ``TrustedHostMiddleware``, which refuses it); any other passes on.

    A request it lets through is handed on as the app's own awaitable, not awaited
    here: a chat socket lives inside every middleware that awaits it, and Starlette's
    would hold its frame, a ``Headers`` and the parsed ``Host`` for the socket's life
    (about 0.9 KB an idle socket, bench ``connections``). The test is Starlette's own,
    on the same parsed ``Host``.

    Args:
        app: the application it wraps.
        allowed_hosts: host names, lower case; ``*.example.org`` for its subdomains,
            ``*`` for any.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._refuser = TrustedHostMiddleware(app, allowed_hosts, www_redirect=False)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Pass the request on, or refuse it with 400."""
        if self._allowed(scope):
            return self.app(scope, receive, send)
        return self._refuser(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        """Whether ``TrustedHostMiddleware`` would pass the request on to the app."""
        if self._refuser.allow_any or scope["type"] not in ("http", "websocket"):
            return True
        parsed = parse_host_header(Headers(scope=scope).get("host"))
        if parsed is None:
            return False
        host = parsed.host.lower()
        return any(
            host == pattern or (pattern.startswith("*") and host.endswith(pattern[1:]))
            for pattern in self._refuser.allowed_hosts
        )
