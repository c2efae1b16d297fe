"""The deployment's security settings, checked statically: nginx and docker-compose."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


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
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in _directives()
