"""The deployment's security settings: nginx and docker-compose checked statically, and
deploy/nginx.conf run by a real nginx (Debian's package; ``make test`` installs it) in
front of a server, to see which client address the server counts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml
from redis.asyncio import Redis

from storage.admission import limit_key
from testkit.ports import free_port
from tests.support.parley import Parley, running_parley

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = Path(os.environ.get("PARLEY_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx")
#: The loopback addresses of the run: nginx reaches the server from PROXY_ADDRESS (its
#: ``proxy_bind``); a client that skips it connects from NEIGHBOUR (another host of the
#: same private range, as another container of the compose network would).
PROXY_ADDRESS = "127.0.0.2"
NEIGHBOUR = "127.0.0.3"


def _directives() -> list[str]:
    """nginx.conf's lines without comments, whitespace collapsed, continuations joined."""
    text = "\n".join(
        line.split("#", 1)[0] if not line.strip().startswith("#") else ""
        for line in NGINX_CONF.read_text(encoding="utf-8").splitlines()
    )
    return [" ".join(d.split()) for d in re.split(r"(?<=[;{}])", text) if d.strip()]


def test_access_log_drops_query_strings() -> None:
    directives = _directives()
    formats = {
        m[1]: m[2] for d in directives if (m := re.match(r"log_format (\w+) (.*);$", d, re.S))
    }
    access = [d for d in directives if d.startswith("access_log ")]
    assert access, "the default access log format ($request) holds query strings"
    for line in access:
        parts = line.rstrip(";").split()
        assert parts[1] == "off" or (len(parts) >= 3 and parts[2] in formats), line
    for name, fmt in formats.items():
        for leaky in (
            "$request ",
            '$request"',
            "$request_uri",
            "$args",
            "$query_string",
            "$arg_",
            "$http_referer",
        ):
            assert leaky not in fmt, f"log_format {name} logs {leaky.strip()}"
    # Error lines quote the request line, query string included.
    (error_log,) = [d for d in directives if d.startswith("error_log ")]
    assert error_log.rstrip(";").split()[-1] in ("crit", "alert", "emerg")


def test_metrics_and_api_explorer_are_not_public() -> None:
    text = " ".join(_directives())
    assert re.search(r"location = /metrics \{ return 404; \}", text)
    blocked = re.search(r"location ~ \^/\(([^)]*)\)\(/\|\$\) \{ return 404; \}", text)
    assert blocked is not None
    assert set(blocked[1].replace("\\", "").split("|")) >= {"docs", "redoc", "openapi.json"}


def test_the_proxy_is_a_trusted_proxy_of_the_servers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    env = compose["services"]["server"]["environment"]
    assert env.get("TRUSTED_PROXIES"), "servers would rate-limit the proxy, not its clients"
    # nginx is the edge: it replaces the client's header, never appends to it.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in _directives()
    assert not [d for d in _directives() if "$proxy_add_x_forwarded_for" in d]


def _local_conf(tmp: Path, port: int, backend: int) -> str:
    """deploy/nginx.conf for a loopback run: listening on ``port``, passing to the server
    on ``backend`` from :data:`PROXY_ADDRESS`, logging under ``tmp``. Only the lines that
    name Docker's network change, each checked to be there, so the rules under test are
    the deployment's own."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    swaps = [
        (r"worker_processes auto;", "worker_processes 1;"),
        (r"resolver 127\.0\.0\.11 [^;]*;", ""),
        (r"listen 8080;", f"listen 127.0.0.1:{port};"),
        (
            r"set \$parley http://server:8000;",
            f"set $parley http://127.0.0.1:{backend}; proxy_bind {PROXY_ADDRESS};",
        ),
        (r"/var/log/nginx/", f"{tmp}/"),
    ]
    for pattern, replacement in swaps:
        text, n = re.subn(pattern, replacement, text)
        assert n >= 1, f"deploy/nginx.conf no longer has {pattern}"
    return text


def _nginx_argv(tmp: Path, port: int, backend: int) -> list[str]:
    """The command line of an nginx running :func:`_local_conf`, written under ``tmp``."""
    if not NGINX.is_file():
        pytest.fail(
            f"no nginx at {NGINX}: `make test` installs Debian's nginx-light package "
            "(or set PARLEY_NGINX to an nginx binary)"
        )
    conf = tmp / "nginx.conf"
    conf.write_text(_local_conf(tmp, port, backend), encoding="utf-8")
    argv = [str(NGINX), "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    return [*argv, "-g", f"daemon off; pid {tmp}/nginx.pid;"]


@asynccontextmanager
async def _nginx(tmp: Path, backend: int) -> AsyncIterator[str]:
    """A real nginx running deploy/nginx.conf in front of the server on ``backend``;
    yields its URL."""
    port = free_port()
    argv = _nginx_argv(tmp, port, backend)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(10):
            while True:
                assert process.returncode is None, await process.stderr.read()  # type: ignore[union-attr]
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)  # nginx offers no readiness signal
                    continue
                writer.close()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


@pytest.fixture
async def behind_nginx(
    redis_url: str, redis: Redis[str], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Parley, str]]:
    """nginx in front of a server trusting ``request.param`` (default: the proxy's
    address alone, as docker-compose's servers trust nginx's): (the stack, nginx's URL)."""
    trusted = getattr(request, "param", PROXY_ADDRESS)
    async with (
        running_parley(redis_url, redis, trusted_proxies=trusted) as parley,
        _nginx(tmp_path, int(parley.url.rsplit(":", 1)[1])) as url,
    ):
        yield parley, url


async def _counted_as(redis: Redis[str], *candidates: str) -> list[str]:
    """Which of ``candidates`` the server counted a new session against."""
    return [a for a in candidates if await redis.exists(limit_key("sessions", a))]


@pytest.mark.parametrize(
    "behind_nginx",
    # The proxy alone; and a whole range that holds the client's own address too, as
    # the private ranges docker-compose's servers once trusted held the address of
    # Docker's gateway, from which published ports reach nginx.
    [PROXY_ADDRESS, "127.0.0.0/8"],
    indirect=True,
)
@pytest.mark.parametrize(
    "forwarded",
    ["6.6.6.6", "random-7", "6.6.6.6, 127.0.0.2", "random-7, 172.18.0.1", "2001:db8::7"],
)
async def test_a_client_cannot_choose_its_address_through_the_proxy(
    behind_nginx: tuple[Parley, str], redis: Redis[str], forwarded: str
) -> None:
    _, url = behind_nginx
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/token", params={"name": "ada"}, headers={"X-Forwarded-For": forwarded}
        ) as response,
    ):
        assert response.status == 200, await response.text()
    spoofed = [h.strip() for h in forwarded.split(",")]
    assert await _counted_as(redis, "127.0.0.1", PROXY_ADDRESS, *spoofed) == ["127.0.0.1"]


async def test_a_neighbour_of_the_proxy_cannot_choose_its_address(
    behind_nginx: tuple[Parley, str], redis: Redis[str]
) -> None:
    """Another host of the proxy's private range, talking to the server directly with a
    header of its own, is counted as itself: only the proxy's address is trusted."""
    parley, _ = behind_nginx
    connector = aiohttp.TCPConnector(local_addr=(NEIGHBOUR, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{parley.url}/token", params={"name": "ada"}, headers={"X-Forwarded-For": "6.6.6.6"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
    assert await _counted_as(redis, NEIGHBOUR, "6.6.6.6", "127.0.0.1") == [NEIGHBOUR]
